package nftables

import (
	"net/netip"

	"github.com/google/nftables"
)

// The first layout (v1) had, per service, a chain per target (counter,
// affinity update, DNAT), a counter and an affinity set per target, a
// target set tg-NAME, and an anonymous vmap in the service chain choosing
// the target chain; table-wide, "recent" sets the target chains updated
// for the hairpin rule. Every target change added rules with jumps and
// NAT, so the kernel re-validated the whole table on each one.
//
// migrate moves one such service to the current layout in one
// transaction: the current layout's elements and rules are queued first,
// then the services map's element is pointed at the new rules, and only
// then do the service's chain and target chains go. The kernel applies
// the transaction at once, so the service answers throughout. Connections
// keep their DNAT (conntrack holds it, not the rules); clients of a
// persistent service keep their targets (the affinity sets are copied);
// per-target connection counts start again from 0.
func (b *batch) migrate(be *Backend, p *plan, cur *current) {
	cur.fallbackRecord(p.s)
	b.writeRules(p, cur)
	if p.hdr.persistence > 0 {
		b.copyAffinity(be, p, cur)
	}
	b.applyRoster(p, header{}, false, nil, p.entries())
	b.delVIP(cur, true) // its element sends the VIP to the old chain
	b.addVIP(p)
	old := &nftables.Chain{Name: serviceChain(p.s.Name), Table: table()}
	b.flushChain(old) // first: it references the target chains
	b.delChain(old)
	for _, t := range cur.v1Target {
		b.delV1Target(p.s.Name, t, be.hadV1Affinity(p.s.Name, cur, t))
	}
	b.delSet(ref(v1TargetSet(p.s.Name)))
}

// copyAffinity copies the clients of each v1 affinity set, with the time
// they have left, into the service's affinity map.
func (b *batch) copyAffinity(be *Backend, p *plan, cur *current) {
	want := map[netip.AddrPort]bool{}
	for _, t := range p.s.Targets {
		want[t.Addr] = !t.Draining()
	}
	aff := affinityMapDef(p.s.Name, p.f.v6, p.s.Persistence)
	for _, t := range cur.v1Target {
		if !want[t] || t.Addr().Is6() != p.f.v6 || !be.hadV1Affinity(p.s.Name, cur, t) {
			continue
		}
		elems, err := be.conn.GetSetElements(ref(v1AffinitySet(p.s.Name, t)))
		if err != nil {
			continue // best effort: those clients pick again
		}
		var add []nftables.SetElement
		for _, e := range elems {
			if e.Expires > 0 && len(e.Key) == int(p.f.addrLen) {
				add = append(add, nftables.SetElement{Key: e.Key, Val: targetKey(t), Timeout: e.Expires})
			}
		}
		b.addElems(aff, add)
	}
}

// delV1Target queues the removal of a v1 target's objects. The service
// chain must be flushed before in the same batch (it references them).
func (b *batch) delV1Target(name string, t netip.AddrPort, hadAffinity bool) {
	ch := &nftables.Chain{Name: v1TargetChain(name, t), Table: table()}
	b.flushChain(ch)
	b.delChain(ch)
	b.delObj(&nftables.CounterObj{Table: table(), Name: v1TargetChain(name, t)})
	if hadAffinity {
		b.delSet(ref(v1AffinitySet(name, t)))
	}
}

// hadV1Affinity reports whether a v1 target has an affinity set.
func (be *Backend) hadV1Affinity(name string, cur *current, t netip.AddrPort) bool {
	if cur.hasRec {
		return cur.rec.persistence > 0
	}
	_, err := be.conn.GetSetByName(table(), v1AffinitySet(name, t))
	return err == nil
}

// dropV1Sets deletes the v1 "recent" sets once no v1 target chain uses
// them; the kernel refuses while one does, and that is fine.
func (be *Backend) dropV1Sets() {
	bt := newBatch()
	for _, v6 := range []bool{false, true} {
		bt.delSet(ref(v1RecentPrefix + famSuffix(v6)))
	}
	_ = be.commit(bt)
}
