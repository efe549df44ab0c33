package local

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/pkg/cni"
)

// What a connect asks the plugins for beyond an interface goes to them as
// CNI capability arguments. libcni passes one only to the plugins that
// declare it and silently drops the rest; circuit refuses instead, before
// anything runs, and refuses what it can tell will fail or collide.

// capabilityOf names the capability each setting needs.
var capabilityOf = []struct{ setting, capability string }{
	{"--publish", "portMappings"},
	{"--ip", "ips"},
	{"--mac", "mac"},
	{"--alias", "aliases"},
}

// checkSettings judges a connect's settings against the network (its
// plugins' capabilities, its ranges, host-local's reservations) and returns
// them normalized, with the container's name filled in.
func (c *Controller) checkSettings(n *api.Network, cfg *cni.Config, s api.Settings) (api.Settings, error) {
	caps := cfg.Capabilities()
	asked := map[string]bool{"--publish": len(s.Publish) > 0, "--ip": len(s.RequestedIPs) > 0, "--mac": s.RequestedMAC != "", "--alias": len(s.Aliases) > 0}
	for _, c := range capabilityOf {
		if asked[c.setting] && !caps[c.capability] {
			return s, api.Errorf(api.ErrInvalid, "%s needs a plugin with the %s capability, and network %s has none (declare it: \"capabilities\": {\"%s\": true})",
				c.setting, c.capability, n.Name, c.capability)
		}
	}
	if s.Name != "" { // else the plugins get the container's ID as its name
		if err := api.ValidPodName(s.Name); err != nil {
			return s, err
		}
	}
	for _, m := range s.Publish {
		if m.HostPort == 0 || m.ContainerPort == 0 || api.ValidProtocol(m.Protocol) != nil {
			return s, api.Errorf(api.ErrInvalid, "publish %s: ports 1-65535 and tcp, udp or sctp", m)
		}
	}
	if s.RequestedMAC != "" {
		mac, err := api.ValidMAC(s.RequestedMAC)
		if err != nil {
			return s, err
		}
		s.RequestedMAC = mac
	}
	for _, a := range s.Aliases {
		if err := api.ValidAlias(a); err != nil {
			return s, err
		}
	}
	if len(s.RequestedIPs) > 0 {
		ranges, err := networkRanges(n, cfg)
		if err != nil {
			return s, err
		}
		dir := hostLocalDir(&api.Network{Name: n.Name, Config: cfg.Raw})
		for i, ip := range s.RequestedIPs {
			a, err := api.ValidRequestedIP(ip)
			if err != nil {
				return s, err
			}
			if !slices.ContainsFunc(ranges, func(p netip.Prefix) bool { return p.Contains(a) }) {
				return s, api.Errorf(api.ErrInvalid, "address %s is outside network %s's ranges %v", a, n.Name, ranges)
			}
			if dir != "" {
				if _, err := os.Stat(filepath.Join(dir, a.String())); err == nil {
					return s, api.Errorf(api.ErrExists, "address %s is held on network %s (host-local has it reserved)", a, n.Name)
				}
			}
			s.RequestedIPs[i] = a.String()
		}
	}
	return s, nil
}

// networkRanges are the prefixes a network gives addresses from: for a
// cluster network, this node's blocks.
func networkRanges(n *api.Network, cfg *cni.Config) ([]netip.Prefix, error) {
	var raw []string
	if n.Cluster != nil {
		raw = n.Cluster.Blocks
	} else {
		var err error
		if raw, err = cni.IPAMRanges(cfg.Raw); err != nil {
			return nil, err
		}
	}
	var out []netip.Prefix
	for _, r := range raw {
		if p, err := netip.ParsePrefix(r); err == nil {
			out = append(out, p.Masked())
		}
	}
	if len(out) == 0 {
		return nil, api.Errorf(api.ErrInvalid, "network %s has no host-local range to ask an address of", n.Name)
	}
	return out, nil
}

// settingsFree refuses, inside the intent's transaction, settings another
// peer already holds: a host port published on this host (every network's
// records), or an address on the same network.
func settingsFree(tx ds.Tx, p *api.Peer) error {
	if len(p.Publish) == 0 && len(p.RequestedIPs) == 0 {
		return nil
	}
	peers, err := tx.ListPeers("")
	if err != nil {
		return err
	}
	for _, q := range peers {
		for _, m := range p.Publish {
			for _, o := range q.Publish {
				if m.Conflicts(o) {
					return api.Errorf(api.ErrExists, "host port %d/%s is already published by container %s on network %s (%s)", m.HostPort, m.Protocol, q.ContainerID, q.Network, o)
				}
			}
		}
		if q.Network != p.Network {
			continue
		}
		for _, ip := range p.RequestedIPs {
			for _, held := range append(slices.Clone(q.RequestedIPs), addrsOf(q.IPs)...) {
				if held == ip {
					return api.Errorf(api.ErrExists, "address %s is held by container %s on network %s", ip, q.ContainerID, p.Network)
				}
			}
		}
	}
	return nil
}

// addrsOf strips the prefix lengths of CIDR addresses.
func addrsOf(cidrs []string) []string {
	out := make([]string, 0, len(cidrs))
	for _, c := range cidrs {
		if p, err := netip.ParsePrefix(c); err == nil {
			out = append(out, p.Addr().String())
		}
	}
	return out
}
