package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/circuit-cni/circuit/pkg/testutil"
)

// Load balancing across nodes, end to end: a cluster service programmed by
// every node's agent (nftables on this host's kernel, IPVS in the VM tier)
// answers from containers on both nodes and from both nodes' host side,
// spread over targets on both nodes; a --container target's container
// disconnected gets no new connection (every node drains it), is dropped
// after the drain period and comes back when the container does.
//
// Network 10.243.0.0/16 (v4 only, default route through the bridge),
// service address 10.223.0.1.

const clbVIP = "10.223.0.1"

func TestClusterLB(t *testing.T) {
	needClusterLB(t)
	e := packageEtcd(t)
	a, b := newNode(t, "a"), newNode(t, "b")
	prefix := testPrefix(t)
	nodes := []*cnode{a, b}
	for _, n := range nodes {
		// A host's default route: the VIP is no local address with
		// nftables, and the host side's connections need a route to it.
		testutil.Run(t, "ip", "-n", n.netns, "route", "add", "default", "via", underlayHost)
		// Strict reverse-path filtering, as on hosts whose underlay is
		// routed: an answer must come back the way its request went, so
		// the host side reaches another node's target only if its node
		// masquerades the request into the overlay.
		testutil.Run(t, "ip", "netns", "exec", n.netns, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1", "net.ipv4.conf.eth0.rp_filter=1")
		if testutil.InVM() {
			// Under emulation etcd and the agents crawl: a longer lease
			// and request bound keep the nodes ready (nothing waits on
			// either running out).
			n.startAgent(e.URL(), prefix, "--lease-ttl", "10s", "--request-timeout", "4s")
		} else {
			n.startAgent(e.URL(), prefix)
		}
	}
	eventually(t, "both nodes ready", func() bool {
		l := a.nodes()
		return l["a"].State == "ready" && l["b"].State == "ready"
	})
	a.create("network", "create", "--overlay", "vxlan", lbClusterConf(t, "clb", "cbr-clb", "10.243.0.0/16"))
	for _, n := range nodes {
		eventually(t, n.name+" holds a block", func() bool { return len(blocksOf(n, "clb")) == 1 })
	}
	eventually(t, "a routes b's block and b a's", func() bool {
		return a.routesTo(blocksOf(b, "clb"), true) && b.routesTo(blocksOf(a, "clb"), true)
	})
	wa, wb := startCtr(t, a, "clb", true), startCtr(t, b, "clb", true)
	var ca, cb *ctr
	if !testutil.InVM() { // under emulation wa, a target, is the container client
		ca, cb = startCtr(t, a, "clb", false), startCtr(t, b, "clb", false)
	}

	backend := "nftables"
	if testutil.InVM() {
		backend = "ipvs"
	}
	a.create("lb", "create", "--cluster", "--backend", backend, "--drain", "2s", "web", clbVIP+":80")
	// wb was connected on b a moment ago: a learns of it through etcd.
	eventually(t, "a knows where "+wb.ID+" is", func() bool {
		_, _, err := a.run("", "lb", "add", "web", "--container", wa.ID+":80", "--container", wb.ID+":80")
		return err == nil
	})

	// Every client reaches both nodes' targets.
	type client struct {
		name string
		get  func() (string, error)
	}
	var clients []client
	// wa is a target too: balanced to itself, it is answered as the
	// service (the bridge's hairpinMode, which circuit gives cluster
	// networks, and the hairpin masquerade).
	for _, c := range []*ctr{ca, cb, wa} {
		if c != nil {
			clients = append(clients, client{"container " + c.ID + " on " + c.node.name, func() (string, error) { return ncRequest(c.Container, clbVIP+":80", "/") }})
		}
	}
	for _, n := range nodes {
		clients = append(clients, client{"node " + n.name + "'s host side", func() (string, error) { return n.curl(clbVIP + ":80") }})
	}
	for _, n := range nodes {
		eventually(t, n.name+" balances web to both containers", func() bool {
			out, _, _ := n.run("", "lb", "show", "web")
			return strings.Contains(out, wa.v4+":80") && strings.Contains(out, wb.v4+":80")
		})
	}
	for _, c := range clients {
		seen := map[string]int{}
		for range 8 {
			page, err := c.get()
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
				break
			}
			seen[page]++
		}
		if seen[wa.page] == 0 || seen[wb.page] == 0 {
			t.Errorf("%s: answers %v, want both nodes' targets", c.name, seen)
		}
	}
	if t.Failed() {
		t.Logf("a's agent:\n%s\nb's agent:\n%s", a.agentLog(), b.agentLog())
		t.FailNow()
	}
	if m := a.metrics(); !strings.Contains(m, `circuit_agent_target_connections_total{service="web",target="`+wb.v4+`:80"}`) {
		t.Errorf("a's metrics lack web's per-target counters:\n%s", grepLines(m, "circuit_agent_target"))
	}

	deleted := func() {
		// Deleted, the service leaves every node's kernel.
		a.must("lb", "delete", "web")
		for _, n := range nodes {
			eventually(t, n.name+" no longer balances "+clbVIP, func() bool { return !n.balances(clbVIP) })
		}
	}
	if testutil.InVM() {
		// Drains are the agent's, the same on either backend, and
		// IPVS's weight 0 is proven in pkg/lb: under emulation the rest
		// would cost minutes.
		deleted()
		return
	}

	// wb's container leaves the network: no node sends it a new connection.
	b.must("network", "disconnect", wb.ID, "clb")
	for _, n := range nodes {
		eventually(t, n.name+" drains "+wb.ID, func() bool {
			out, _, _ := n.run("", "lb", "show", "web")
			return strings.Contains(out, "draining")
		})
	}
	for _, c := range clients {
		for range 4 {
			if page, err := c.get(); err != nil || page != wa.page {
				t.Errorf("%s with %s draining: %q, %v", c.name, wb.ID, page, err)
				break
			}
		}
	}
	for _, n := range nodes {
		eventually(t, n.name+" drops "+wb.ID+" after the drain", func() bool {
			out, _, _ := n.run("", "lb", "show", "web")
			return !strings.Contains(out, wb.v4+":80")
		})
	}
	// It comes back with its container.
	b.must("--runc-root", wb.Bundle.Root, "network", "connect", wb.ID, "clb")
	wb.v4, _ = ctrAddrs(t, wb.Container, "eth0")
	eventually(t, "a's host side reaches "+wb.ID+" again", func() bool {
		page, err := a.curl(clbVIP + ":80")
		return err == nil && page == wb.page
	})
	deleted()
}

// create runs a cluster create until it is made: one that timed out on
// circuit's side (a loaded or emulated machine) may have been made, and
// then it exists.
func (n *cnode) create(args ...string) {
	n.t.Helper()
	eventually(n.t, strings.Join(args, " "), func() bool {
		_, stderr, err := n.run("", args...)
		return err == nil || strings.Contains(stderr, "exists")
	})
}

// needClusterLB is needCluster, but for the VM tier too, where the kernel
// has IPVS and the same nodes and etcd run.
func needClusterLB(t *testing.T) {
	t.Helper()
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("etcd"); err != nil {
		if testutil.InVM() {
			t.Skip("no etcd in this VM image")
		}
		t.Fatal("no etcd binary: make deps installs Debian's etcd-server")
	}
	if testutil.InVM() && !kernelHasIPVS() {
		t.Skip("the VM kernel has no IPVS")
	}
}

// curl fetches a page from the node's host side.
func (n *cnode) curl(addr string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", n.netns, "curl", "-sf", "-m", "2", "http://"+addr+"/").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("curl %s on %s: %v\n%s", addr, n.name, err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// balances reports whether the node's kernel balances vip: an IPVS
// service or an element of circuit's nftables table.
func (n *cnode) balances(vip string) bool {
	if out, err := exec.Command("ip", "netns", "exec", n.netns, "nft", "list", "table", "inet", "circuit").CombinedOutput(); err == nil && strings.Contains(string(out), vip) {
		return true
	}
	out, _ := exec.Command("ip", "netns", "exec", n.netns, "cat", "/proc/net/ip_vs").CombinedOutput()
	return strings.Contains(string(out), ipvsHex(vip))
}

// ipvsHex is an IPv4 address as /proc/net/ip_vs prints it.
func ipvsHex(ip string) string {
	var b [4]int
	fmt.Sscanf(ip, "%d.%d.%d.%d", &b[0], &b[1], &b[2], &b[3])
	return fmt.Sprintf("%02X%02X%02X%02X:", b[0], b[1], b[2], b[3])
}

// grepLines are the lines of s that contain sub.
func grepLines(s, sub string) string {
	lines := strings.Split(s, "\n")
	return strings.Join(slices.DeleteFunc(lines, func(l string) bool { return !strings.Contains(l, sub) }), "\n")
}

// lbClusterConf is a v4 bridge network whose containers route everything
// through the bridge (a VIP is outside the ranges).
func lbClusterConf(t *testing.T, name, bridge, subnet string) string {
	t.Helper()
	body := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %q, "plugins": [
  {"type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": %q}]], "routes": [{"dst": "0.0.0.0/0"}]}}]}`, name, bridge, subnet)
	path := filepath.Join(t.TempDir(), name+".conflist")
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
