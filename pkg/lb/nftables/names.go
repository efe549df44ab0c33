package nftables

import (
	"hash/fnv"
	"net/netip"
	"strconv"
	"strings"

	"github.com/google/nftables"
)

// Kernel object names. Everything circuit programs lives in one table.
// Target changes touch only elements of the table-wide maps below, never
// a per-service set: nf_tables finds a set by walking the table's list of
// sets, so a set per service would make every change cost a walk over
// all of them.
const (
	tableName = "circuit"

	chainPrerouting  = "prerouting"  // nat: VIP -> its pick chain
	chainOutput      = "output"      // nat: same, for local clients
	chainPostrouting = "postrouting" // nat: hairpin masquerade
	chainCountPre    = "count-pre"   // filter: client->VIP packets
	chainCountOut    = "count-out"   // filter: same, local clients
	chainCountPost   = "count-post"  // filter: VIP->client packets
	chainCountIn     = "count-in"    // filter: same, local clients
	chainTrackPost   = "track-post"  // filter: per-target counters, persistence
	chainTrackIn     = "track-in"    // filter: same, local targets

	setHairpinIf = "hairpin-if" // {oif . oif}: lets a rule test iif == oif
)

func table() *nftables.Table {
	return &nftables.Table{Name: tableName, Family: nftables.TableFamilyINet}
}

// Table-wide maps and sets, one of each per IP family. All but services
// and flows are keyed by the service's VIP tuple first.
func servicesMap(v6 bool) string { return "services" + famSuffix(v6) } // VIP -> goto pick-G
func flowsSet(v6 bool) string    { return "flows" + famSuffix(v6) }    // VIP, counted
func vipsSet(v6 bool) string     { return "vips" + famSuffix(v6) }     // VIP (hairpin check)
func slotsMap(v6 bool, shard uint32) string { // VIP . slot -> target
	return "slots" + famSuffix(v6) + "-" + strconv.Itoa(int(shard))
}
func targetsMap(v6 bool) string { return "targets" + famSuffix(v6) } // VIP . index -> target . weight
func tbytesSet(v6 bool) string  { return "tbytes" + famSuffix(v6) }  // VIP . target, counted
func tconnsSet(v6 bool) string  { return "tconns" + famSuffix(v6) }  // VIP . target, new conns counted
func stickyMap(v6 bool) string  { return "sticky" + famSuffix(v6) }  // VIP -> jump stick-NAME

// serviceGroups is how many chains the services share. nf_tables visits
// every chain of the namespace on every commit, whatever changed, so a
// chain per service would make each target change cost a visit to every
// service's chain; in a shared chain, each service's rules start by
// matching its VIP. Fewer chains cost the first packet of a connection
// more rules to check (about 40 at 10,000 services with 256).
const serviceGroups = 256

func groupOf(name string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(name))
	return h.Sum32() % serviceGroups
}

// pickChain holds the rules that count a service's new connections and
// pick a target (nat, reached by goto from the services map).
func pickChain(name string) string { return "pick-" + strconv.Itoa(int(groupOf(name))) }

// stickChain holds the rules that record persistent services' clients
// (filter, after DNAT).
func stickChain(name string) string { return "stick-" + strconv.Itoa(int(groupOf(name))) }

// serviceChain is the first layout's chain of a service.
func serviceChain(name string) string { return "svc-" + name }

// affinityMap maps a persistent service's clients to their targets.
func affinityMap(name string) string { return "aff-" + name }

// counterName is the named counter of a service's new connections (the
// same in both layouts).
func counterName(name string) string { return "svc-" + name }

// slotShards splits the slots map. A rule that looks a map up makes the
// kernel check every element of the map when the rule is added, and every
// rule bound to the map when an element is added: one map would make each
// new service cost a walk over all services' slots, and each slot change
// a walk over all services' rules. 256 shards keep both small at 10,000
// services, and the shards are still near the head of the table's list
// of sets (which the kernel searches by name).
const slotShards = 256

// shardOf is the slots map a service's slots live in.
func shardOf(name string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(name))
	return h.Sum32() % slotShards
}

func famSuffix(v6 bool) string {
	if v6 {
		return "6"
	}
	return "4"
}

// Names of the first layout (v1), which Ensure migrates and Delete and
// Stats still understand.
const (
	v1RecentPrefix = "recent" // recent4/6: targets picked lately (hairpin)
)

func v1TargetSet(name string) string { return "tg-" + name }

// v1TargetChain DNATs to one target; its counter has the same name.
func v1TargetChain(name string, t netip.AddrPort) string {
	return serviceChain(name) + "/" + targetID(t)
}

func v1AffinitySet(name string, t netip.AddrPort) string {
	return "aff-" + name + "/" + targetID(t)
}

// targetID spells a target with the characters nft accepts in names
// (IPv6 colons become dots).
func targetID(t netip.AddrPort) string {
	return strings.ReplaceAll(t.Addr().String(), ":", ".") + "/" + strconv.Itoa(int(t.Port()))
}
