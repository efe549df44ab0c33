package nftables

import (
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/circuit-cni/circuit/api"
)

// protocols the table has rules for; nft needs one rule per transport
// protocol to print a conntrack port.
var protocols = []uint8{api.Protocols["tcp"], api.Protocols["udp"], api.Protocols["sctp"]}

func baseChain(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio int32) *nftables.Chain {
	return &nftables.Chain{Name: name, Table: table(), Type: typ, Hooknum: hook,
		Priority: nftables.ChainPriorityRef(nftables.ChainPriority(prio))}
}

// Base chains. Counting runs before DNAT (-150) for client->VIP packets and
// after the reply is un-NATed (150) for VIP->client packets, so both
// directions are seen with the VIP in them. Tracking runs after DNAT (50),
// where conntrack knows both the VIP and the target.
func natChains() (pre, out, post *nftables.Chain) {
	nat := nftables.ChainTypeNAT
	return baseChain(chainPrerouting, nat, nftables.ChainHookPrerouting, -100),
		baseChain(chainOutput, nat, nftables.ChainHookOutput, -100),
		baseChain(chainPostrouting, nat, nftables.ChainHookPostrouting, 100)
}

func countChains() []*nftables.Chain {
	f := nftables.ChainTypeFilter
	return []*nftables.Chain{
		baseChain(chainCountPre, f, nftables.ChainHookPrerouting, -150),
		baseChain(chainCountOut, f, nftables.ChainHookOutput, -150),
		baseChain(chainCountPost, f, nftables.ChainHookPostrouting, 150),
		baseChain(chainCountIn, f, nftables.ChainHookInput, 150),
	}
}

func trackChains() []*nftables.Chain {
	f := nftables.ChainTypeFilter
	return []*nftables.Chain{
		baseChain(chainTrackPost, f, nftables.ChainHookPostrouting, 50),
		baseChain(chainTrackIn, f, nftables.ChainHookInput, 50),
	}
}

// createTable queues the table with its shared sets, base chains and their
// rules. CreateTable is exclusive: if another process won the race, the
// whole batch fails with EEXIST and nothing is duplicated.
func (b *batch) createTable() {
	b.c.CreateTable(table())
	b.take()
	for _, v6 := range []bool{false, true} {
		for _, s := range append(tableSets(v6), slotMaps(v6)...) {
			b.addSet(s, nil)
		}
	}
	b.addSet(hairpinSetDef(), nil)
	pre, out, post := natChains()
	for _, ch := range []*nftables.Chain{pre, out} {
		b.addChain(ch)
		for _, f := range fams {
			b.addRule(&nftables.Rule{Table: table(), Chain: ch, Exprs: exprs(dispatchRule(f))})
		}
	}
	for i, ch := range countChains() {
		b.addChain(ch)
		for _, f := range fams {
			b.addRule(&nftables.Rule{Table: table(), Chain: ch, Exprs: exprs(countRule(f, i < 2))})
		}
	}
	b.addChain(post)
	b.addHairpinRules()
	b.addTrack()
}

// upgradeTable queues what the current layout adds to a table of the
// first layout: its maps, the tracking chains and the hairpin rule that
// needs no per-target chains (with every VIP in the table, migrated or
// not, in @vipsN for it). The v1 "recent" sets stay until no v1 service
// uses them.
func (b *batch) upgradeTable(vips [2][][]byte) {
	for _, v6 := range []bool{false, true} {
		for _, s := range append(tableSets(v6)[2:], slotMaps(v6)...) { // services and flows exist
			b.addSet(s, nil)
		}
	}
	for i, v6 := range []bool{false, true} {
		var elems []nftables.SetElement
		for _, k := range vips[i] {
			elems = append(elems, nftables.SetElement{Key: k})
		}
		b.addElems(ref(vipsSet(v6)), elems)
	}
	_, _, post := natChains()
	b.flushChain(post)
	b.addHairpinRules()
	b.addTrack()
}

func (b *batch) addTrack() {
	for _, ch := range trackChains() {
		b.addChain(ch)
		for _, f := range fams {
			for _, p := range protocols {
				for _, r := range trackRules(f, p) {
					b.raw(rawRule(ch.Name, r))
				}
			}
		}
	}
}

func (b *batch) addHairpinRules() {
	for _, f := range fams {
		for _, p := range protocols {
			b.raw(rawRule(chainPostrouting, hairpinRule(f, p)))
		}
	}
}

// dispatchRule: <family> daddr . l4proto . th dport vmap @servicesN
func dispatchRule(f fam) []any {
	return cat(match(expr.MetaKeyNFPROTO, f.nfproto), loadVIP(f, false),
		[]any{lookupMap(servicesMap(f.v6), regKey, 0)})
}

// countRule counts a packet on its service's flows element.
func countRule(f fam, toVIP bool) []any {
	return cat(match(expr.MetaKeyNFPROTO, f.nfproto), loadVIP(f, !toVIP),
		[]any{lookup(flowsSet(f.v6), regKey)})
}

// trackRules count every packet of a connection to a VIP on its target's
// tbytes element, its first packet on tconns, and send the first packet of
// a persistent service's connection to the service's stick chain:
//
//	ct original ip daddr . meta l4proto . ct original proto-dst . ct reply ip saddr . ct reply proto-src @tbytes4
//	ct status ! confirmed ... @tconns4
//	ct status ! confirmed ct original ip daddr . meta l4proto . ct original proto-dst vmap @sticky4
func trackRules(f fam, proto uint8) [][]any {
	first := ctStatus(ipsConfirmed, false)
	pair := cat(matchFam(f, proto), ctPair(f))
	return [][]any{
		cat(pair, []any{lookup(tbytesSet(f.v6), regKey)}),
		cat(first, pair, []any{lookup(tconnsSet(f.v6), regKey)}),
		cat(first, matchFam(f, proto), ctVIP(f), []any{lookupMap(stickyMap(f.v6), regKey, 0)}),
	}
}

// hairpinRule masquerades a connection DNATed to a VIP of ours when it
// leaves by the interface it came in on: client and target share a link,
// and the target would otherwise answer the client directly.
//
// "Same interface": nftables cannot compare two registers, so the rule
// adds {oif . oif} to @hairpin-if and then looks up {iif . oif}: a hit
// means iif == oif. Local clients have no iif and are never masqueraded;
// neither is anything else, so targets see real client addresses.
func hairpinRule(f fam, proto uint8) []any {
	return cat(ctStatus(ipsDstNAT, true), matchFam(f, proto), ctVIP(f), []any{
		// Not flows: a lookup counts on flows' elements.
		lookup(vipsSet(f.v6), regKey),
		&expr.Meta{Key: expr.MetaKeyOIF, Register: regKey},
		&expr.Meta{Key: expr.MetaKeyOIF, Register: regKey + 1},
		&expr.Dynset{SrcRegKey: regKey, SetName: setHairpinIf, Operation: unix.NFT_DYNSET_OP_UPDATE},
		&expr.Meta{Key: expr.MetaKeyIIF, Register: regKey},
		&expr.Meta{Key: expr.MetaKeyOIF, Register: regKey + 1},
		lookup(setHairpinIf, regKey),
		&expr.Masq{},
	})
}
