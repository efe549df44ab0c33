package agent

import (
	"iter"
	"maps"
	"net/netip"
	"slices"
	"time"
)

// blockValue is P/blocks/<network>/<block>: who holds a block. Never on a
// lease: a node cut off from etcd keeps its blocks, and its containers
// their addresses (flannel's expiring subnet leases taught that).
type blockValue struct {
	Node      string    `json:"node"`
	ClaimedAt time.Time `json:"claimedAt"`
}

// nodeValue is P/nodes/<node>: a node as it last said it was. Not leased,
// so a lost node stays listed (with its address and when it was last
// seen) until gc --cluster forgets it.
type nodeValue struct {
	Name      string    `json:"name"`
	Address   string    `json:"address"`
	LastSeen  time.Time `json:"lastSeen"`
	Conflicts []string  `json:"conflicts,omitempty"`
	// VTEPs are the node's overlay endpoints, by network: the other nodes
	// send frames for its blocks to this MAC at Address. Absent in the
	// records of agents before the overlay, which read past it.
	VTEPs map[string]vtepValue `json:"vteps,omitempty"`
}

// vtepValue is one of a node's VXLAN tunnel endpoints.
type vtepValue struct {
	MAC string `json:"mac"`
}

// comparePrefix orders blocks by address, IPv4 first, then by length.
func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// sortedCIDRs is blocks as sorted CIDR strings.
func sortedCIDRs(blocks []netip.Prefix) []string {
	if len(blocks) == 0 {
		return nil
	}
	s := slices.Clone(blocks)
	slices.SortFunc(s, comparePrefix)
	s = slices.Compact(s)
	out := make([]string, len(s))
	for i, b := range s {
		out[i] = b.String()
	}
	return out
}

func mapKeys[K comparable, V any](m map[K]V) iter.Seq[K] { return maps.Keys(m) }
