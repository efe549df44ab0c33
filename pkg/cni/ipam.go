package cni

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
)

// IPAMRanges lists the subnets of a configuration's host-local IPAM (its
// "subnet", or every "ranges" entry), in order; nil if it has none.
func IPAMRanges(raw []byte) ([]string, error) {
	_, ipam, err := ipamOf(raw)
	if err != nil || ipam == nil {
		return nil, err
	}
	var out []string
	if s, ok := ipam["subnet"].(string); ok && s != "" {
		out = append(out, s)
	}
	if sets, ok := ipam["ranges"].([]any); ok {
		for _, set := range sets {
			rs, _ := set.([]any)
			for _, r := range rs {
				m, _ := r.(map[string]any)
				if s, ok := m["subnet"].(string); ok && s != "" {
					out = append(out, s)
				}
			}
		}
	}
	return out, nil
}

// Cluster is what a connect to a cluster network changes in its
// configuration.
type Cluster struct {
	// Blocks are this node's: host-local allocates from them only.
	Blocks []string
	// Ranges are the whole network's: containers get a route to each via
	// their gateway, so they reach other nodes' blocks whatever the
	// configuration's own routes are.
	Ranges []string
	// DataDir keeps host-local's reservations.
	DataDir string
	// MTU is the overlay's: the plugin holding the IPAM gets it (a smaller
	// one the configuration asks for stays). 0 leaves it as written.
	MTU int
}

// mtuPlugins are the reference plugins that take an "mtu".
var mtuPlugins = []string{"bridge", "ptp", "macvlan", "ipvlan", "vlan"}

// masqPlugins are the reference plugins that take an "ipMasq".
var masqPlugins = []string{"bridge", "ptp"}

// ForCluster rewrites a configuration for a connect to a cluster network:
// host-local allocates from c.Blocks only (one range set per family,
// ranges in the order given), keeps its reservations in c.DataDir and
// adds a route to each of c.Ranges; the plugin that holds the IPAM runs
// with the overlay's MTU and without its own masquerade (ipMasq false:
// circuit-agent masquerades what leaves the ranges, so containers see
// each other's own addresses across nodes); a bridge gets hairpinMode
// unless the configuration says otherwise, so that a target of a cluster
// service reaches the service when it is balanced to itself. Everything
// else stays as written.
func ForCluster(raw []byte, c Cluster) ([]byte, error) {
	top, plugin, err := ipamSection(raw)
	if err != nil {
		return nil, err
	}
	if plugin == nil {
		return nil, fmt.Errorf("no host-local IPAM to give blocks to")
	}
	ipam := plugin["ipam"].(map[string]any)
	typ, _ := plugin["type"].(string)
	if _, ok := plugin["ipMasq"]; ok || slices.Contains(masqPlugins, typ) {
		plugin["ipMasq"] = false
	}
	// Every node balances the cluster's services, whose targets may call
	// them: a bridge must let a frame back out the port it came in by.
	if _, ok := plugin["hairpinMode"]; !ok && typ == "bridge" {
		plugin["hairpinMode"] = true
	}
	if c.MTU > 0 && slices.Contains(mtuPlugins, typ) {
		if cur, ok := plugin["mtu"].(float64); !ok || cur <= 0 || int(cur) > c.MTU {
			plugin["mtu"] = c.MTU
		}
	}
	if err := addRoutes(ipam, c.Ranges); err != nil {
		return nil, err
	}
	var v4, v6 []any
	for _, b := range c.Blocks {
		p, err := netip.ParsePrefix(b)
		if err != nil {
			return nil, fmt.Errorf("block %q: %w", b, err)
		}
		r := map[string]any{"subnet": p.String()}
		if p.Addr().Is4() {
			v4 = append(v4, r)
		} else {
			v6 = append(v6, r)
		}
	}
	var sets []any
	for _, s := range [][]any{v4, v6} {
		if len(s) > 0 {
			sets = append(sets, s)
		}
	}
	for _, k := range []string{"subnet", "rangeStart", "rangeEnd", "gateway"} {
		delete(ipam, k)
	}
	ipam["ranges"] = sets
	ipam["dataDir"] = c.DataDir
	return json.Marshal(top)
}

// addRoutes appends to an IPAM section's routes one to each range (no
// gateway: the plugin uses the container's), unless one is there already.
func addRoutes(ipam map[string]any, ranges []string) error {
	routes, _ := ipam["routes"].([]any)
	have := map[netip.Prefix]bool{}
	for _, r := range routes {
		m, _ := r.(map[string]any)
		if dst, ok := m["dst"].(string); ok {
			if p, err := netip.ParsePrefix(dst); err == nil {
				have[p.Masked()] = true
			}
		}
	}
	for _, r := range ranges {
		p, err := netip.ParsePrefix(r)
		if err != nil {
			return fmt.Errorf("range %q: %w", r, err)
		}
		if !have[p.Masked()] {
			routes = append(routes, map[string]any{"dst": p.Masked().String()})
			have[p.Masked()] = true
		}
	}
	if len(routes) > 0 {
		ipam["routes"] = routes
	}
	return nil
}

// ipamOf decodes a configuration and finds its host-local IPAM section:
// the conf's own, or the first plugin's of a conflist that has one.
func ipamOf(raw []byte) (map[string]any, map[string]any, error) {
	top, plugin, err := ipamSection(raw)
	if err != nil || plugin == nil {
		return top, nil, err
	}
	return top, plugin["ipam"].(map[string]any), nil
}

// ipamSection decodes a configuration and finds the plugin section whose
// IPAM is host-local (the conf itself for a single conf); nil if none.
func ipamSection(raw []byte) (map[string]any, map[string]any, error) {
	var top map[string]any
	if err := json.Unmarshal(raw, &top); err != nil {
		return nil, nil, fmt.Errorf("configuration: %w", err)
	}
	sections := []map[string]any{top}
	if plugins, ok := top["plugins"].([]any); ok {
		sections = sections[:0]
		for _, p := range plugins {
			if m, ok := p.(map[string]any); ok {
				sections = append(sections, m)
			}
		}
	}
	i := slices.IndexFunc(sections, func(m map[string]any) bool {
		ipam, _ := m["ipam"].(map[string]any)
		return ipam != nil && ipam["type"] == "host-local"
	})
	if i < 0 {
		return top, nil, nil
	}
	return top, sections[i], nil
}
