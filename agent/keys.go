package agent

import (
	"net/netip"
	"strings"
)

// keys are the agent's etcd key names under one prefix (see doc.go).
// Directories end in "/", so a scan of one never reaches a sibling that
// shares its prefix: every name in a key is judged by package api first
// and none holds a "/".
type keys struct {
	root    string // prefix + "/": everything the agent watches
	cluster string // the ds/etcd store of cluster networks and services
	// ds/etcd's layout inside cluster (ds/etcd/doc.go): the agent commits
	// with the same guard, so a ds/etcd Store on cluster stays consistent.
	meta, schema, commit, lock string
	networks, services         string
	blocks, nodes, alive       string
	peers                      string
	vni                        string
}

func newKeys(prefix string) keys {
	p := strings.TrimRight(prefix, "/")
	c := p + "/cluster"
	return keys{
		root:     p + "/",
		cluster:  c,
		meta:     c + "/meta/",
		schema:   c + "/meta/schema",
		commit:   c + "/meta/commit",
		lock:     c + "/meta/lock",
		networks: c + "/networks/",
		services: c + "/services/",
		blocks:   p + "/blocks/",
		nodes:    p + "/nodes/",
		alive:    p + "/alive/",
		peers:    p + "/peers/",
		vni:      p + "/vni",
	}
}

func (k keys) network(name string) string      { return k.networks + name }
func (k keys) service(name string) string      { return k.services + name }
func (k keys) netBlocks(network string) string { return k.blocks + network + "/" }
func (k keys) block(network string, b netip.Prefix) string {
	return k.netBlocks(network) + blockName(b)
}
func (k keys) node(name string) string      { return k.nodes + name }
func (k keys) aliveKey(name string) string  { return k.alive + name }
func (k keys) nodePeers(node string) string { return k.peers + node + "/" }
func (k keys) netPeers(node, network string) string {
	return k.nodePeers(node) + network + "/"
}
func (k keys) peer(node, network, containerID, ifname string) string {
	return k.netPeers(node, network) + containerID + "/" + ifname
}

// blockName is a block as a key's last element: its CIDR with the '/'
// that would split the key replaced by '_'.
func blockName(b netip.Prefix) string { return strings.Replace(b.String(), "/", "_", 1) }

func parseBlockName(s string) (netip.Prefix, bool) {
	p, err := netip.ParsePrefix(strings.Replace(s, "_", "/", 1))
	return p, err == nil && p == p.Masked()
}

// split cuts a key under dir into its elements; nil if it is not under dir.
func split(key, dir string) []string {
	rest, ok := strings.CutPrefix(key, dir)
	if !ok || rest == "" {
		return nil
	}
	return strings.Split(rest, "/")
}
