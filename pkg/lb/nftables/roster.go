package nftables

import (
	"net/netip"
	"slices"

	"github.com/google/nftables"

	"github.com/circuit-cni/circuit/pkg/lb/internal/spec"
)

// A service's roster is its targets in the targets map: its header at
// index headerIndex, its targets (with their weights) at 0..N-1. Keyed by
// index, so that one request reads it back; a target that leaves gives its
// index to the last one, so a change rewrites at most two indexes.

// nextRoster is the roster holding want, changed as little as possible
// from old: order kept, leavers replaced by the last entry, weights
// updated, newcomers appended.
func nextRoster(old []entry, want []spec.ParsedTarget) []entry {
	weight := make(map[netip.AddrPort]int, len(want))
	for _, t := range want {
		weight[t.Addr] = t.Weight
	}
	out := slices.Clone(old)
	for i := 0; i < len(out); {
		if _, ok := weight[out[i].addr]; !ok {
			out[i] = out[len(out)-1]
			out = out[:len(out)-1]
			continue
		}
		out[i].weight = weight[out[i].addr]
		delete(weight, out[i].addr)
		i++
	}
	for _, t := range want {
		if _, ok := weight[t.Addr]; ok {
			out = append(out, entry{t.Addr, t.Weight})
			delete(weight, t.Addr)
		}
	}
	return out
}

// live is the roster's targets that get slots, sorted by address, with
// their scheduling weights (rr: 1 each).
func live(roster []entry, byWeight bool) []weighted {
	var out []weighted
	for _, e := range roster {
		if e.weight > 0 {
			w := e.weight
			if !byWeight {
				w = 1
			}
			out = append(out, weighted{e.addr, w})
		}
	}
	slices.SortFunc(out, func(a, b weighted) int { return a.addr.Compare(b.addr) })
	return out
}

// slotTargets is the target of each slot (none when no target is live).
func slotTargets(roster []entry, h header, seed uint32) []netip.AddrPort {
	l := live(roster, h.weighted)
	out := make([]netip.AddrPort, 0, h.slots)
	for _, i := range assign(l, h.slots, h.hash, seed) {
		out = append(out, l[i].addr)
	}
	return out
}

// applyRoster queues the element changes from a service's old roster and
// header (hadHdr false: none in the kernel) to p's: header, indexes,
// per-target counters and slots. Elements only: no rule, chain or verdict
// changes, so the kernel does not re-validate the table.
func (b *batch) applyRoster(p *plan, oldHdr header, hadHdr bool, old, next []entry) {
	vip, proto, v6 := p.s.VIP, p.s.Proto, p.f.v6
	tm := ref(targetsMap(v6))
	if !hadHdr || oldHdr != p.hdr {
		hdr := []nftables.SetElement{{Key: indexKey(vip, proto, headerIndex), Val: headerData(p.hdr, v6)}}
		if hadHdr {
			b.delElems(tm, keysOnly(hdr))
		}
		b.addElems(tm, hdr)
	}
	if !hadHdr {
		old = nil
	}

	var del, add []nftables.SetElement
	for i := range max(len(old), len(next)) {
		if i < len(old) && i < len(next) && old[i] == next[i] {
			continue
		}
		k := indexKey(vip, proto, uint32(i))
		if i < len(old) {
			del = append(del, nftables.SetElement{Key: k})
		}
		if i < len(next) {
			add = append(add, nftables.SetElement{Key: k, Val: rosterData(next[i].addr, next[i].weight)})
		}
	}
	b.delElems(tm, del)
	b.addElems(tm, add)

	was, is := addrSet(old), addrSet(next)
	var gone, come []nftables.SetElement
	for _, e := range old {
		if !is[e.addr] {
			gone = append(gone, nftables.SetElement{Key: pairKey(vip, proto, e.addr)})
		}
	}
	for _, e := range next {
		if !was[e.addr] {
			come = append(come, nftables.SetElement{Key: pairKey(vip, proto, e.addr)})
		}
	}
	for _, set := range []string{tbytesSet(v6), tconnsSet(v6)} {
		b.delElems(ref(set), gone)
		b.addElems(ref(set), come)
	}

	var before []netip.AddrPort
	if hadHdr {
		before = slotTargets(old, oldHdr, p.seed)
	}
	after := slotTargets(next, p.hdr, p.seed)
	del, add = nil, nil
	for k := range max(len(before), len(after)) {
		if k < len(before) && k < len(after) && before[k] == after[k] {
			continue
		}
		key := slotKey(vip, proto, uint32(k))
		if k < len(before) {
			del = append(del, nftables.SetElement{Key: key})
		}
		if k < len(after) {
			add = append(add, nftables.SetElement{Key: key, Val: targetKey(after[k])})
		}
	}
	b.delElems(ref(p.slots), del)
	b.addElems(ref(p.slots), add)

	// Clients stuck to a target that no longer takes connections pick
	// again: the map cannot be searched by target, so all of this
	// service's clients do (their connections go on).
	if p.hdr.persistence > 0 && hadHdr && oldHdr.persistence == p.hdr.persistence && lostLive(old, next) {
		b.flushSet(ref(affinityMap(p.s.Name)))
	}
}

func addrSet(r []entry) map[netip.AddrPort]bool {
	m := make(map[netip.AddrPort]bool, len(r))
	for _, e := range r {
		m[e.addr] = true
	}
	return m
}

// lostLive reports whether a target live in old is gone or draining in next.
func lostLive(old, next []entry) bool {
	w := make(map[netip.AddrPort]int, len(next))
	for _, e := range next {
		w[e.addr] = e.weight
	}
	for _, e := range old {
		if e.weight > 0 && w[e.addr] == 0 {
			return true
		}
	}
	return false
}

// group is elements of one set.
type group struct {
	set   string
	elems []nftables.SetElement
}

// rosterElems lists every element keyed by cur's VIP in the targets,
// counters and slots maps.
func rosterElems(name string, cur *current) []group {
	vip, proto, v6 := cur.rec.vip, cur.rec.proto, cur.v6()
	keys := []nftables.SetElement{{Key: indexKey(vip, proto, headerIndex)}}
	var pairs, slots []nftables.SetElement
	for i, e := range cur.roster {
		keys = append(keys, nftables.SetElement{Key: indexKey(vip, proto, uint32(i))})
		pairs = append(pairs, nftables.SetElement{Key: pairKey(vip, proto, e.addr)})
	}
	for k := range slotTargets(cur.roster, cur.hdr, hashSeed(name)) {
		slots = append(slots, nftables.SetElement{Key: slotKey(vip, proto, uint32(k))})
	}
	return []group{{targetsMap(v6), keys}, {tbytesSet(v6), pairs}, {tconnsSet(v6), pairs},
		{slotsMap(v6, shardOf(name)), slots}}
}

// purgeRoster queues the deletion of rosterElems.
func (b *batch) purgeRoster(name string, cur *current) {
	for _, g := range rosterElems(name, cur) {
		b.delElems(ref(g.set), g.elems)
	}
}
