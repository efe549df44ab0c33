package nftables

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
)

// A service's rule picks one of its S slots (numgen inc mod S for rr and
// wrr, jhash of the client address mod S for sh) and looks the slot up in
// the slots map; a target change rewrites slot elements, never the rule.
//
// S is baseSlots for up to baseSlots live targets: 60 = 2^2*3*5 divides
// evenly among 1-6, 10, 12, 15, 20 or 30 targets, so rr is exact for
// those counts and otherwise off by at most one slot in 60 per target.
// Above 60 live targets S doubles as often as needed (120, 240, ...):
// crossing such a step rewrites the service's rule (one transaction the
// kernel re-validates). Draining targets get no slot.
const (
	baseSlots = 60
	maxSlots  = baseSlots << 11 // 122880 live targets
)

// slotCount is S for n live targets.
func slotCount(n int) (uint32, error) {
	s := uint32(baseSlots)
	for uint32(n) > s {
		if s >= maxSlots {
			return 0, fmt.Errorf("%d live targets: the nftables backend balances at most %d", n, maxSlots)
		}
		s *= 2
	}
	return s, nil
}

// weighted is a live target and its scheduling weight.
type weighted struct {
	addr   netip.AddrPort
	weight int
}

// Bounds on the work of an assignment (targets x slots); beyond them a
// cheaper assignment is used (see assign).
const (
	maxInterleave = 1 << 22
	maxRendezvous = 1 << 18
)

// assign gives each of the s slots a live target (an index into live,
// which is sorted by address). Each target gets a share of the slots
// proportional to its weight, at least one. rr and wrr interleave the
// targets (a, b, a, c, ...) so that numgen's sequence alternates; sh keeps
// each slot on the target it prefers (a hash of seed, slot and target)
// when quotas allow, so that a change moves few clients.
func assign(live []weighted, s uint32, hash bool, seed uint32) []int {
	if len(live) == 0 {
		return nil
	}
	q := quotas(live, int(s))
	work := len(live) * int(s)
	switch {
	case hash && work <= maxRendezvous:
		return rendezvous(live, q, seed)
	case work <= maxInterleave:
		return interleave(q, int(s))
	}
	return ranges(q)
}

// quotas splits s slots by weight (largest remainder), each at least 1.
func quotas(live []weighted, s int) []int {
	total := 0
	for _, t := range live {
		total += t.weight
	}
	q := make([]int, len(live))
	rem := make([]int, len(live))
	sum := 0
	for i, t := range live {
		q[i] = s * t.weight / total
		rem[i] = s * t.weight % total
		q[i] = max(q[i], 1)
		sum += q[i]
	}
	for sum > s { // the minimum of 1 overshot: take from the largest
		j := 0
		for i := range q {
			if q[i] > q[j] {
				j = i
			}
		}
		q[j]--
		sum--
	}
	order := make([]int, len(live))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(rem[b], rem[a]) })
	for k := 0; sum < s; k++ {
		q[order[k%len(order)]]++
		sum++
	}
	return q
}

// interleave is smooth weighted round robin over s picks.
func interleave(q []int, s int) []int {
	out := make([]int, s)
	cur := make([]int, len(q))
	for k := range out {
		best := 0
		for i := range q {
			cur[i] += q[i]
			if cur[i] > cur[best] {
				best = i
			}
		}
		cur[best] -= s
		out[k] = best
	}
	return out
}

// ranges gives each target a run of consecutive slots.
func ranges(q []int) []int {
	var out []int
	for i, n := range q {
		for range n {
			out = append(out, i)
		}
	}
	return out
}

// rendezvous gives every slot to the target that scores highest for it,
// among those with quota left, taking (slot, target) pairs best first.
// A target that leaves frees only its slots (and the few others the new
// quotas move); the rest stay where they were.
func rendezvous(live []weighted, q []int, seed uint32) []int {
	type pair struct {
		score     uint64
		slot, tgt int
	}
	s := 0
	for _, n := range q {
		s += n
	}
	pairs := make([]pair, 0, s*len(live))
	for k := range s {
		for i, t := range live {
			pairs = append(pairs, pair{score(seed, k, t.addr), k, i})
		}
	}
	slices.SortFunc(pairs, func(a, b pair) int {
		return cmp.Or(cmp.Compare(b.score, a.score), cmp.Compare(a.slot, b.slot), cmp.Compare(a.tgt, b.tgt))
	})
	out := make([]int, s)
	for k := range out {
		out[k] = -1
	}
	left := slices.Clone(q)
	for _, p := range pairs {
		if out[p.slot] < 0 && left[p.tgt] > 0 {
			out[p.slot] = p.tgt
			left[p.tgt]--
		}
	}
	return out
}

func score(seed uint32, slot int, t netip.AddrPort) uint64 {
	h := fnv.New64a()
	var b [8]byte
	binary.BigEndian.PutUint32(b[:4], seed)
	binary.BigEndian.PutUint32(b[4:], uint32(slot))
	h.Write(b[:])
	h.Write(targetKey(t))
	return h.Sum64()
}

// hashSeed is fixed per service so that rewriting its rule (e.g. on
// restore) does not move clients when the targets did not change.
func hashSeed(name string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(name))
	return h.Sum32() | 1 // 0 would ask the kernel for a random seed
}
