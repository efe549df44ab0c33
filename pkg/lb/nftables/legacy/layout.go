package legacy

import (
	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
)

const ipsDstNAT = 1 << 5 // IPS_DST_NAT: the connection was DNATed

func baseChain(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio int32) *nftables.Chain {
	return &nftables.Chain{Name: name, Table: table(), Type: typ, Hooknum: hook,
		Priority: nftables.ChainPriorityRef(nftables.ChainPriority(prio))}
}

// createTable queues the table with its shared sets, base chains and their
// rules. CreateTable is exclusive: if another process won the race, the
// whole batch fails with EEXIST and nothing is duplicated.
func (b *batch) createTable() {
	b.c.CreateTable(table())
	b.msgs++
	var services, flows [2]*nftables.Set
	for i, v6 := range []bool{false, true} {
		services[i], flows[i] = servicesSetDef(v6), flowsSetDef(v6)
		b.addSet(services[i], nil)
		b.addSet(flows[i], nil)
	}
	hairpin := hairpinSetDef()
	b.addSet(hairpin, nil)
	var recent [2]*nftables.Set
	for i, v6 := range []bool{false, true} {
		recent[i] = recentSetDef(v6)
		b.addSet(recent[i], nil)
	}

	nat, filter := nftables.ChainTypeNAT, nftables.ChainTypeFilter
	chains := []struct {
		c     *nftables.Chain
		rules func(f fam, services, flows *nftables.Set) []expr.Any
	}{
		{baseChain(chainPrerouting, nat, nftables.ChainHookPrerouting, -100), dispatchRule},
		{baseChain(chainOutput, nat, nftables.ChainHookOutput, -100), dispatchRule},
		{baseChain(chainPostrouting, nat, nftables.ChainHookPostrouting, 100), hairpinRule(hairpin, recent)},
		// Counting runs before DNAT (-150) for client->VIP packets and after
		// the reply is un-NATed (150) for VIP->client packets, so both
		// directions are seen with the VIP in them.
		{baseChain(chainCountPre, filter, nftables.ChainHookPrerouting, -150), countRule(true)},
		{baseChain(chainCountOut, filter, nftables.ChainHookOutput, -150), countRule(true)},
		{baseChain(chainCountPost, filter, nftables.ChainHookPostrouting, 150), countRule(false)},
		{baseChain(chainCountIn, filter, nftables.ChainHookInput, 150), countRule(false)},
	}
	for _, ch := range chains {
		b.addChain(ch.c)
		for i, f := range []fam{fam4, fam6} {
			b.addRule(&nftables.Rule{Table: table(), Chain: ch.c, Exprs: ch.rules(f, services[i], flows[i])})
		}
	}
}

// dispatchRule: <family> daddr . l4proto . th dport vmap @servicesN
func dispatchRule(f fam, services, _ *nftables.Set) []expr.Any {
	e := append(matchNfproto(f), loadTuple(f, true)...)
	return append(e, &expr.Lookup{SourceRegister: regKey, IsDestRegSet: true, DestRegister: 0,
		SetName: services.Name, SetID: services.ID})
}

// countRule counts a packet on its service's flows element.
func countRule(toVIP bool) func(f fam, _, flows *nftables.Set) []expr.Any {
	return func(f fam, _, flows *nftables.Set) []expr.Any {
		e := append(matchNfproto(f), loadTuple(f, toVIP)...)
		return append(e, lookup(flows.Name, flows.ID, regKey))
	}
}

// hairpinRule masquerades a connection DNATed to one of our targets when
// it leaves by the interface it came in on: client and target share a
// link, and the target would otherwise answer the client directly.
//
// "One of our targets": service chains add every target they pick to
// @recentN (a short timeout suffices: the first packet reaches this chain
// right after). A static set of all targets would need reference counts
// across services sharing a target.
//
// "Same interface": nftables cannot compare two registers, so the rule
// adds {oif . oif} to @hairpin-if and then looks up {iif . oif}: a hit
// means iif == oif. Local clients have no iif and are never masqueraded;
// neither is anything else, so targets see real client addresses.
func hairpinRule(hairpin *nftables.Set, recent [2]*nftables.Set) func(f fam, _, _ *nftables.Set) []expr.Any {
	return func(f fam, _, _ *nftables.Set) []expr.Any {
		r := recent[0]
		if f.v6 {
			r = recent[1]
		}
		e := []expr.Any{
			&expr.Ct{Key: expr.CtKeySTATUS, Register: regKey},
			&expr.Bitwise{SourceRegister: regKey, DestRegister: regKey, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(ipsDstNAT), Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: regKey, Data: make([]byte, 4)},
		}
		e = append(e, matchNfproto(f)...)
		return append(e,
			&expr.Payload{DestRegister: regKey, Base: expr.PayloadBaseNetworkHeader, Offset: f.daddrAt, Len: f.addrLen},
			&expr.Payload{DestRegister: f.reg(0), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			lookup(r.Name, r.ID, regKey),
			&expr.Meta{Key: expr.MetaKeyOIF, Register: regKey},
			&expr.Meta{Key: expr.MetaKeyOIF, Register: regKey + 1},
			&expr.Dynset{SrcRegKey: regKey, SetName: hairpin.Name, SetID: hairpin.ID, Operation: dynsetUpdate},
			&expr.Meta{Key: expr.MetaKeyIIF, Register: regKey},
			&expr.Meta{Key: expr.MetaKeyOIF, Register: regKey + 1},
			lookup(hairpin.Name, hairpin.ID, regKey),
			&expr.Masq{},
		)
	}
}
