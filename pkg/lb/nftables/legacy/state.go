package legacy

import (
	"fmt"
	"net/netip"

	"github.com/circuit-cni/circuit/pkg/lb/internal/spec"
)

// current is what the kernel holds for one service.
type current struct {
	v6      bool
	targets []netip.AddrPort // elements of tg-NAME
	rec     recorded         // from the service chain's comment
	hasRec  bool
}

func (c *current) key() []byte { return tupleKey(c.rec.vip, c.rec.proto) }

// hadAffinity reports whether target t has an affinity set.
func (c *current) hadAffinity(b *Backend, name string, t netip.AddrPort) bool {
	if c.hasRec {
		return c.rec.persistence > 0
	}
	_, err := b.conn.GetSetByName(table(), affinitySet(name, t))
	return err == nil
}

// readService reads a service's record; nil means it is not programmed.
// The target set is created and deleted with the rest of the service in
// one transaction, so it stands for the whole.
func (b *Backend) readService(name string) (*current, error) {
	tg, err := b.conn.GetSetByName(table(), targetSet(name))
	if isNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get set %s: %w", targetSet(name), err)
	}
	cur := &current{v6: tg.KeyType.Bytes == 20}
	elems, err := b.conn.GetSetElements(tg)
	if err != nil {
		return nil, fmt.Errorf("list set %s: %w", targetSet(name), err)
	}
	for _, e := range elems {
		if ap, ok := parseTargetKey(e.Key); ok {
			cur.targets = append(cur.targets, ap)
		}
	}
	rules, err := b.conn.GetRules(table(), svcChainDef(name))
	if err != nil && !isNotExist(err) {
		return nil, fmt.Errorf("list chain %s: %w", serviceChain(name), err)
	}
	if len(rules) > 0 {
		if c, ok := commentOf(rules[0].UserData); ok {
			cur.rec, cur.hasRec = parseComment(c)
		}
	}
	return cur, nil
}

// fallbackRecord fills the record from the caller's service when the
// chain's comment is unreadable.
func (c *current) fallbackRecord(s *spec.Spec) {
	if !c.hasRec && s != nil {
		c.rec = recorded{vip: s.VIP, proto: s.Proto, persistence: s.Persistence}
	}
}
