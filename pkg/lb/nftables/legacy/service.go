package legacy

import (
	"fmt"
	"hash/fnv"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/pkg/lb/internal/spec"
)

const dynsetUpdate = unix.NFT_DYNSET_OP_UPDATE

// commentPrefix starts the comment on a service chain's first rule, which
// records what the chain was made for, so that Ensure can clean up after a
// change of address or persistence without scanning other services.
const commentPrefix = "circuit service"

func svcChainDef(name string) *nftables.Chain {
	return &nftables.Chain{Name: serviceChain(name), Table: table()}
}

func targetChainDef(name string, t netip.AddrPort) *nftables.Chain {
	return &nftables.Chain{Name: targetChain(name, t), Table: table()}
}

func counterDef(name string) *nftables.CounterObj {
	return &nftables.CounterObj{Table: table(), Name: counterName(name)}
}

func targetCounterDef(name string, t netip.AddrPort) *nftables.CounterObj {
	return &nftables.CounterObj{Table: table(), Name: targetChain(name, t)}
}

// recorded is what a service chain's comment says about it.
type recorded struct {
	vip         netip.AddrPort
	proto       uint8
	persistence time.Duration
}

func serviceComment(s *spec.Spec) string {
	return fmt.Sprintf("%s %s %s %s %s %d", commentPrefix, s.Name, s.VIP, s.Protocol, s.Scheduler,
		int64(s.Persistence/time.Second))
}

func parseComment(c string) (recorded, bool) {
	rest, ok := strings.CutPrefix(c, commentPrefix+" ")
	f := strings.Fields(rest)
	if !ok || len(f) < 5 {
		return recorded{}, false
	}
	vip, err := api.ParseAddrPort(f[1])
	secs, err2 := strconv.ParseInt(f[4], 10, 64)
	if err != nil || err2 != nil {
		return recorded{}, false
	}
	return recorded{vip: vip, proto: api.Protocols[f[2]], persistence: time.Duration(secs) * time.Second}, true
}

func commentOf(ud []byte) (string, bool) {
	return userdata.GetString(ud, userdata.TypeComment)
}

// serviceElem is the services-map element sending the VIP to the chain.
func serviceElem(s *spec.Spec) nftables.SetElement {
	return nftables.SetElement{Key: tupleKey(s.VIP, s.Proto),
		VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: serviceChain(s.Name)}}
}

func targetElems(ts []netip.AddrPort) []nftables.SetElement {
	e := make([]nftables.SetElement, len(ts))
	for i, t := range ts {
		e[i] = nftables.SetElement{Key: targetKey(t)}
	}
	return e
}

func addrs(ts []spec.ParsedTarget) []netip.AddrPort {
	a := make([]netip.AddrPort, len(ts))
	for i, t := range ts {
		a[i] = t.Addr
	}
	return a
}

// hashSeed is fixed per service so that rewriting the chain (e.g. on
// restore) does not move clients when the targets did not change.
func hashSeed(name string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(name))
	return h.Sum32() | 1 // 0 would ask the kernel for a random seed
}

func gotoTarget(name string, t netip.AddrPort) *expr.Verdict {
	return &expr.Verdict{Kind: expr.VerdictGoto, Chain: targetChain(name, t)}
}

// addServiceRules queues the service chain's rules into an empty (new or
// flushed) chain. Target chains (and affinity sets) must exist or be
// queued before.
//
//	counter name "svc-NAME" comment "circuit service ..."  # new connections
//	ip saddr @aff-NAME/T goto svc-NAME/T                    # per target, if persistent
//	numgen inc mod 4 vmap { 0-2 : goto svc-NAME/A, 3 : goto svc-NAME/B }
//	drop                                                    # no target
func (b *batch) addServiceRules(s *spec.Spec) error {
	f := famOf(s.IPv6())
	ch := svcChainDef(s.Name)
	rule := func(e ...expr.Any) *nftables.Rule {
		return &nftables.Rule{Table: table(), Chain: ch, Exprs: e}
	}
	first := rule(&expr.Objref{Type: unix.NFT_OBJECT_COUNTER, Name: counterName(s.Name)})
	first.UserData = userdata.AppendString(nil, userdata.TypeComment, serviceComment(s))
	b.addRule(first)

	if len(s.Targets) > 0 {
		if s.Persistence > 0 {
			for _, t := range s.Targets {
				e := append(matchNfproto(f), loadSaddr(f),
					lookup(affinitySet(s.Name, t.Addr), 0, regSaddr), gotoTarget(s.Name, t.Addr))
				b.addRule(rule(e...))
			}
		}
		mod, ranges, err := slots(weights(s))
		if err != nil {
			return err
		}
		m := slotMapDef()
		elems := make([]nftables.SetElement, 0, len(ranges)+1)
		for _, r := range ranges {
			elems = append(elems, nftables.SetElement{Key: be32(r.First), VerdictData: gotoTarget(s.Name, s.Targets[r.Target].Addr)})
		}
		elems = append(elems, nftables.SetElement{Key: be32(mod), IntervalEnd: true})
		b.addSet(m, elems)

		var e []expr.Any
		if s.Scheduler == "sh" {
			e = append(matchNfproto(f), loadSaddr(f),
				&expr.Hash{SourceRegister: regSaddr, DestRegister: regKey, Length: f.addrLen,
					Modulus: mod, Seed: hashSeed(s.Name), Type: expr.HashTypeJenkins})
		} else {
			e = append(e, &expr.Numgen{Register: regKey, Modulus: mod, Type: unix.NFT_NG_INCREMENTAL})
		}
		e = append(e,
			&expr.Byteorder{SourceRegister: regKey, DestRegister: regKey, Op: expr.ByteorderHton, Len: 4, Size: 4},
			&expr.Lookup{SourceRegister: regKey, IsDestRegSet: true, DestRegister: 0, SetName: m.Name, SetID: m.ID})
		b.addRule(rule(e...))
	}
	// Not reached with targets; without, drop rather than let the packet
	// go on to the VIP un-NATed.
	b.addRule(rule(&expr.Verdict{Kind: expr.VerdictDrop}))
	return nil
}

// addTargetRules queues the rules of a target chain (new or flushed):
//
//	counter name "svc-NAME/T"
//	update @aff-NAME/T { ip saddr timeout P }   # if persistent
//	update @recentN { T }
//	meta l4proto tcp dnat ip to T
//
// A set update fails when the set is full and ends its rule, so each
// update has its own rule: a full set costs stickiness, never the DNAT.
func (b *batch) addTargetRules(s *spec.Spec, t netip.AddrPort) {
	f := famOf(t.Addr().Is6())
	ch := targetChainDef(s.Name, t)
	rule := func(e ...expr.Any) {
		b.addRule(&nftables.Rule{Table: table(), Chain: ch, Exprs: e})
	}
	rule(&expr.Objref{Type: unix.NFT_OBJECT_COUNTER, Name: targetChain(s.Name, t)})
	if s.Persistence > 0 {
		// Refreshes the client's timeout on each new connection.
		rule(append(matchNfproto(f), loadSaddr(f),
			&expr.Dynset{SrcRegKey: regSaddr, SetName: affinitySet(s.Name, t), Operation: dynsetUpdate, Timeout: s.Persistence})...)
	}
	target := []expr.Any{
		&expr.Immediate{Register: regKey, Data: t.Addr().AsSlice()},
		&expr.Immediate{Register: f.reg(0), Data: be16(t.Port())},
	}
	rule(append(target, &expr.Dynset{SrcRegKey: regKey, SetName: recentSet(f.v6), Operation: dynsetUpdate})...)
	// The protocol match is redundant (the services map keys on it) but
	// lets nft print a port mapping it can read back.
	rule(append([]expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: regKey},
		&expr.Cmp{Op: expr.CmpOpEq, Register: regKey, Data: []byte{s.Proto}},
	}, append(target, dnat(f))...)...)
}

// addTarget queues a target's chain, counter and affinity set (adds are
// idempotent) and rewrites its chain.
func (b *batch) addTarget(s *spec.Spec, t netip.AddrPort) {
	b.addObj(targetCounterDef(s.Name, t))
	if s.Persistence > 0 {
		b.addSet(affinitySetDef(s.Name, t), nil)
	}
	ch := targetChainDef(s.Name, t)
	b.addChain(ch)
	b.flushChain(ch)
	b.addTargetRules(s, t)
}

// delTarget queues the removal of a target's objects. The service chain
// must be flushed before in the same batch (it references them).
func (b *batch) delTarget(name string, t netip.AddrPort, hadAffinity bool) {
	ch := targetChainDef(name, t)
	b.flushChain(ch)
	b.delChain(ch)
	b.delObj(targetCounterDef(name, t))
	if hadAffinity {
		b.delSet(&nftables.Set{Table: table(), Name: affinitySet(name, t)})
	}
}
