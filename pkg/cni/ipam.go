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

// WithBlocks rewrites a configuration's host-local IPAM to allocate from
// blocks only (one range set per family, ranges in the order given) and to
// keep its reservations in dataDir. Everything else stays as written.
func WithBlocks(raw []byte, blocks []string, dataDir string) ([]byte, error) {
	top, ipam, err := ipamOf(raw)
	if err != nil {
		return nil, err
	}
	if ipam == nil {
		return nil, fmt.Errorf("no host-local IPAM to give blocks to")
	}
	var v4, v6 []any
	for _, b := range blocks {
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
	ipam["dataDir"] = dataDir
	return json.Marshal(top)
}

// ipamOf decodes a configuration and finds its host-local IPAM section:
// the conf's own, or the first plugin's of a conflist that has one.
func ipamOf(raw []byte) (map[string]any, map[string]any, error) {
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
	return top, sections[i]["ipam"].(map[string]any), nil
}
