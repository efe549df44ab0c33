package legacy

import (
	"github.com/google/nftables"
)

// batch queues changes on one connection; Backend.commit sends them as a
// single nftables transaction, which the kernel applies atomically.
type batch struct {
	c    *nftables.Conn
	msgs int // messages queued, for tests of "one small transaction"
	err  error
}

func (b *batch) fail(err error) {
	if b.err == nil {
		b.err = err
	}
}

func (b *batch) addSet(s *nftables.Set, elems []nftables.SetElement) {
	b.fail(b.c.AddSet(s, elems))
	b.msgs++
	if len(elems) > 0 {
		b.msgs++
	}
}

func (b *batch) addElems(s *nftables.Set, elems []nftables.SetElement) {
	if len(elems) > 0 {
		b.fail(b.c.SetAddElements(s, elems))
		b.msgs++
	}
}

func (b *batch) delElems(s *nftables.Set, elems []nftables.SetElement) {
	if len(elems) > 0 {
		b.fail(b.c.SetDeleteElements(s, elems))
		b.msgs++
	}
}

func (b *batch) delSet(s *nftables.Set)       { b.c.DelSet(s); b.msgs++ }
func (b *batch) addChain(c *nftables.Chain)   { b.c.AddChain(c); b.msgs++ }
func (b *batch) flushChain(c *nftables.Chain) { b.c.FlushChain(c); b.msgs++ }
func (b *batch) delChain(c *nftables.Chain)   { b.c.DelChain(c); b.msgs++ }
func (b *batch) addRule(r *nftables.Rule)     { b.c.AddRule(r); b.msgs++ }
func (b *batch) addObj(o nftables.Obj)        { b.c.AddObj(o); b.msgs++ }
func (b *batch) delObj(o nftables.Obj)        { b.c.DeleteObject(o); b.msgs++ }
