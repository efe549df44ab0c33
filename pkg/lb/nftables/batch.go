package nftables

import (
	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// batch collects the messages of one transaction, in order. Most are
// encoded by google/nftables, whose Conn here talks to capture instead of
// a socket; rules with conntrack keys are encoded by rawRule. The error is
// sticky: a batch that failed to encode is never sent.
type batch struct {
	c    *nftables.Conn
	msgs []netlink.Message
	err  error
}

func newBatch() *batch {
	b := &batch{}
	// Lasting: one capture connection per batch (each new one seeds a
	// random sequence number, which shows in profiles).
	b.c, b.err = nftables.New(nftables.WithTestDial(b.capture), nftables.AsLasting())
	return b
}

// capture stands in for the kernel: it keeps what google/nftables sends
// (without the batch begin and end, which commit adds) and acks it.
func (b *batch) capture(req []netlink.Message) ([]netlink.Message, error) {
	for _, m := range req {
		switch m.Header.Type {
		case netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN), netlink.HeaderType(unix.NFNL_MSG_BATCH_END):
		default:
			b.msgs = append(b.msgs, m)
		}
	}
	return []netlink.Message{{Header: netlink.Header{Type: netlink.Error}, Data: make([]byte, 4+unix.NLMSG_HDRLEN)}}, nil
}

func (b *batch) fail(err error) {
	if b.err == nil {
		b.err = err
	}
}

// take moves what google/nftables queued into the batch, keeping order.
func (b *batch) take() {
	if b.err == nil {
		b.fail(b.c.Flush())
	}
}

func (b *batch) raw(m netlink.Message, err error) {
	b.fail(err)
	b.msgs = append(b.msgs, m)
}

func (b *batch) addSet(s *nftables.Set, elems []nftables.SetElement) {
	if s.ID == 0 {
		s.ID = newSetID()
	}
	b.fail(b.c.AddSet(s, elems))
	b.take()
}

func (b *batch) addElems(s *nftables.Set, elems []nftables.SetElement) {
	if len(elems) > 0 {
		b.fail(b.c.SetAddElements(s, elems))
		b.take()
	}
}

func (b *batch) delElems(s *nftables.Set, elems []nftables.SetElement) {
	if len(elems) > 0 {
		b.fail(b.c.SetDeleteElements(s, elems))
		b.take()
	}
}

// setElems replaces elements: a key already in the set with other data
// must be deleted first, in the same transaction.
func (b *batch) setElems(s *nftables.Set, elems []nftables.SetElement) {
	b.delElems(s, keysOnly(elems))
	b.addElems(s, elems)
}

func keysOnly(elems []nftables.SetElement) []nftables.SetElement {
	out := make([]nftables.SetElement, len(elems))
	for i, e := range elems {
		out[i] = nftables.SetElement{Key: e.Key}
	}
	return out
}

func (b *batch) delTable()                    { b.c.DelTable(table()); b.take() }
func (b *batch) flushSet(s *nftables.Set)     { b.c.FlushSet(s); b.take() }
func (b *batch) delSet(s *nftables.Set)       { b.c.DelSet(s); b.take() }
func (b *batch) addChain(c *nftables.Chain)   { b.c.AddChain(c); b.take() }
func (b *batch) flushChain(c *nftables.Chain) { b.c.FlushChain(c); b.take() }
func (b *batch) delChain(c *nftables.Chain)   { b.c.DelChain(c); b.take() }
func (b *batch) addRule(r *nftables.Rule)     { b.c.AddRule(r); b.take() }
func (b *batch) addObj(o nftables.Obj)        { b.c.AddObj(o); b.take() }
func (b *batch) delObj(o nftables.Obj)        { b.c.DeleteObject(o); b.take() }

// delRules deletes rules read back from the kernel, by handle.
func (b *batch) delRules(rules []rule) {
	for _, r := range rules {
		b.fail(b.c.DelRule(r.ref()))
		b.take()
	}
}
