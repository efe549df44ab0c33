package nftables

import (
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/circuit-cni/circuit/pkg/lb/internal/spec"
)

// plan is a service as the current layout programs it.
type plan struct {
	s     *spec.Spec
	f     fam
	hdr   header
	seed  uint32
	slots string // its shard of the slots map
}

func newPlan(s *spec.Spec) (*plan, error) {
	live := 0
	for _, t := range s.Targets {
		if !t.Draining() {
			live++
		}
	}
	n, err := slotCount(live)
	if err != nil {
		return nil, err
	}
	return &plan{s: s, f: famOf(s.IPv6()), seed: hashSeed(s.Name), slots: slotsMap(s.IPv6(), shardOf(s.Name)), hdr: header{
		slots:       n,
		hash:        s.Scheduler == "sh",
		weighted:    s.Scheduler != "rr",
		persistence: uint32(s.Persistence / time.Second),
	}}, nil
}

func (p *plan) pickChain() *nftables.Chain {
	return &nftables.Chain{Name: pickChain(p.s.Name), Table: table()}
}

func (p *plan) stickChain() *nftables.Chain {
	return &nftables.Chain{Name: stickChain(p.s.Name), Table: table()}
}

func counterDef(name string) *nftables.CounterObj {
	return &nftables.CounterObj{Table: table(), Name: counterName(name)}
}

// entries is the caller's target list as a roster.
func (p *plan) entries() []entry {
	out := make([]entry, len(p.s.Targets))
	for i, t := range p.s.Targets {
		out[i] = entry{t.Addr, t.Weight}
	}
	return out
}

// matchVIP matches a packet to the service's VIP tuple (before DNAT):
// every rule of a service in a shared chain starts with it.
func (p *plan) matchVIP() []any {
	f := p.f
	return cat(matchFam(f, p.s.Proto), []any{
		&expr.Payload{DestRegister: regKey, Base: expr.PayloadBaseNetworkHeader, Offset: f.daddrAt, Len: f.addrLen},
		&expr.Cmp{Op: expr.CmpOpEq, Register: regKey, Data: p.s.VIP.Addr().AsSlice()},
		&expr.Payload{DestRegister: regKey, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: regKey, Data: be16(p.s.VIP.Port())},
	})
}

// svcRules are the service's rules in its pick chain (nat, reached by goto
// from the services map), each behind matchVIP:
//
//	ip daddr VIP tcp dport P counter name "svc-NAME" comment "circuit service v2 ..."   # new connections
//	ip daddr VIP tcp dport P dnat ip to ip saddr map @aff-NAME                          # if persistent: a known client
//	ip daddr VIP tcp dport P dnat ip to ip daddr . meta l4proto . th dport . numgen inc mod S map @slots4-K
//	ip daddr VIP tcp dport P drop                                                        # no live target
//
// (sh: jhash ip saddr mod S seed H instead of numgen.) None of them names
// a target: target changes rewrite elements of the slots map only.
func (p *plan) svcRules() [][]any {
	f := p.f
	rules := [][]any{{&expr.Objref{Type: unix.NFT_OBJECT_COUNTER, Name: counterName(p.s.Name)}}}
	if p.hdr.persistence > 0 {
		rules = append(rules, []any{
			&expr.Payload{DestRegister: regKey, Base: expr.PayloadBaseNetworkHeader, Offset: f.saddrAt, Len: f.addrLen},
			lookupMap(affinityMap(p.s.Name), regKey, regKey),
			dnat(f),
		})
	}
	pick := []any{&expr.Numgen{Register: f.reg(2), Modulus: p.hdr.slots, Type: unix.NFT_NG_INCREMENTAL}}
	if p.hdr.hash {
		pick = []any{loadSaddr(f), &expr.Hash{SourceRegister: regSaddr, DestRegister: f.reg(2), Length: f.addrLen,
			Modulus: p.hdr.slots, Seed: p.seed, Type: expr.HashTypeJenkins}}
	}
	rules = append(rules, cat(loadVIP(f, false), pick, []any{lookupMap(p.slots, regKey, regKey), dnat(f)}))
	rules = append(rules, []any{&expr.Verdict{Kind: expr.VerdictDrop}})
	for i := range rules {
		rules[i] = cat(p.matchVIP(), rules[i])
	}
	return rules
}

// stickRule remembers a persistent service's client (after DNAT, so the
// target is in the packet), refreshing the entry on each new connection:
//
//	ct original ip daddr VIP ct original proto-dst P update @aff-NAME { ip saddr timeout T : ip daddr . th dport }
func (p *plan) stickRule() []any {
	f := p.f
	return cat(matchFam(f, p.s.Proto), []any{
		ctLoad{key: f.ctDst, dir: ctDirOrig, reg: regKey},
		&expr.Cmp{Op: expr.CmpOpEq, Register: regKey, Data: p.s.VIP.Addr().AsSlice()},
		ctLoad{key: unix.NFT_CT_PROTO_DST, dir: ctDirOrig, reg: regKey},
		&expr.Cmp{Op: expr.CmpOpEq, Register: regKey, Data: be16(p.s.VIP.Port())},
		loadSaddr(f),
		&expr.Payload{DestRegister: regKey, Base: expr.PayloadBaseNetworkHeader, Offset: f.daddrAt, Len: f.addrLen},
		&expr.Payload{DestRegister: f.reg(0), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Dynset{SrcRegKey: regSaddr, SrcRegData: regKey, SetName: affinityMap(p.s.Name),
			Operation: unix.NFT_DYNSET_OP_UPDATE, Timeout: p.s.Persistence},
	})
}

// addSvcRules appends the service's rules to its pick chain; each carries
// a comment naming the service (the first one its whole record), so that
// they can be found and deleted by handle.
func (b *batch) addSvcRules(p *plan) {
	for i, r := range p.svcRules() {
		c := ownerComment(p.s.Name)
		if i == 0 {
			c = serviceComment(p.s)
		}
		b.addRule(&nftables.Rule{Table: table(), Chain: p.pickChain(), Exprs: exprs(r),
			UserData: userdata.AppendString(nil, userdata.TypeComment, c)})
	}
}

// writeRules queues the service's rules, counter and affinity map as p
// wants them, replacing what cur (nil: nothing) had. Rules are replaced
// only when what they depend on changed, and the affinity map is kept
// (with its clients) unless the persistence or the address changed.
func (b *batch) writeRules(p *plan, cur *current) {
	name, v6 := p.s.Name, p.f.v6
	v2 := cur != nil && !cur.v1 && cur.hasHdr
	sameKey := v2 && cur.rec.vip == p.s.VIP && cur.rec.proto == p.s.Proto
	// rr and wrr share their rules: only the slots differ.
	sameRules := func(a, b header) bool { a.weighted, b.weighted = false, false; return a == b }
	same := sameKey && sameRules(cur.hdr, p.hdr) && len(cur.rules) > 0
	had := v2 && cur.hdr.persistence > 0
	keep := had && sameKey && cur.hdr.persistence == p.hdr.persistence && len(cur.stickRules) > 0
	b.addObj(counterDef(name))
	if same {
		return
	}
	b.addChain(p.pickChain())
	if cur != nil {
		b.delRules(cur.rules) // first: they reference the rest
	}
	if had && !keep {
		b.delRules(cur.stickRules)
		b.delElems(ref(stickyMap(cur.v6())), []nftables.SetElement{{Key: tupleKey(cur.rec.vip, cur.rec.proto)}})
		b.delSet(ref(affinityMap(name)))
	}
	if p.hdr.persistence > 0 && !keep {
		b.addSet(affinityMapDef(name, v6, p.s.Persistence), nil)
		b.addChain(p.stickChain())
		b.raw(rawRule(stickChain(name), p.stickRule(), ownerComment(name)))
		b.addElems(ref(stickyMap(v6)), []nftables.SetElement{{Key: tupleKey(p.s.VIP, p.s.Proto),
			VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: stickChain(name)}}})
	}
	b.addSvcRules(p)
}

// addVIP sends the service address to its pick chain and counts it.
func (b *batch) addVIP(p *plan) {
	k := tupleKey(p.s.VIP, p.s.Proto)
	b.addElems(ref(servicesMap(p.f.v6)), []nftables.SetElement{{Key: k,
		VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: pickChain(p.s.Name)}}})
	b.addElems(ref(flowsSet(p.f.v6)), []nftables.SetElement{{Key: k}})
	b.addElems(ref(vipsSet(p.f.v6)), []nftables.SetElement{{Key: k}})
}
