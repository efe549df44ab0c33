package legacy

import (
	"net/netip"
	"strconv"
	"strings"

	"github.com/google/nftables"
)

// Kernel object names. Everything circuit programs lives in one table; each
// service owns exactly the objects named after it, so changing a service
// never touches another's.
const (
	tableName = "circuit"

	chainPrerouting  = "prerouting"  // nat: VIP -> service chain
	chainOutput      = "output"      // nat: same, for local clients
	chainPostrouting = "postrouting" // nat: hairpin masquerade
	chainCountPre    = "count-pre"   // filter: client->VIP packets
	chainCountOut    = "count-out"   // filter: same, local clients
	chainCountPost   = "count-post"  // filter: VIP->client packets
	chainCountIn     = "count-in"    // filter: same, local clients

	setHairpinIf = "hairpin-if" // {oif . oif}: lets a rule test iif == oif
)

func table() *nftables.Table {
	return &nftables.Table{Name: tableName, Family: nftables.TableFamilyINet}
}

// servicesMap maps (VIP, protocol, port) to "goto svc-NAME".
func servicesMap(v6 bool) string { return "services" + famSuffix(v6) }

// flowsSet holds the same keys with per-element counters of all packets.
func flowsSet(v6 bool) string { return "flows" + famSuffix(v6) }

// recentSet holds targets DNATed to in the last minute (hairpin check).
func recentSet(v6 bool) string { return "recent" + famSuffix(v6) }

// serviceChain counts a service's new connections and picks a target.
func serviceChain(name string) string { return "svc-" + name }

// targetChain DNATs to one target; its name is also the name of the
// target's connection counter. Service names cannot contain "/", so the
// names of different services never collide.
func targetChain(name string, t netip.AddrPort) string {
	return serviceChain(name) + "/" + targetID(t)
}

// targetID spells a target with the characters nft accepts in names
// (IPv6 colons become dots), so `nft list ruleset` output reloads.
func targetID(t netip.AddrPort) string {
	return strings.ReplaceAll(t.Addr().String(), ":", ".") + "/" + strconv.Itoa(int(t.Port()))
}

// targetSet records a service's targets (addr . port).
func targetSet(name string) string { return "tg-" + name }

// affinitySet holds the clients stuck to one target (persistence).
func affinitySet(name string, t netip.AddrPort) string { return "aff-" + name + "/" + targetID(t) }

// counterName is the named counter of a service's new connections; it
// survives rewrites of the service chain.
func counterName(name string) string { return serviceChain(name) }

func famSuffix(v6 bool) string {
	if v6 {
		return "6"
	}
	return "4"
}
