package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/circuit-cni/circuit/pkg/testutil"
)

// The overlay, end to end: real runc containers on nodes (namespaces on
// the underlay bridge), each node's circuit-agent programming its VXLAN
// device, routes, neighbour and FDB entries and masquerade; traffic between
// containers of different nodes, by their own addresses.

// overlayProto is circuit's route protocol (pkg/overlay.RouteProtocol).
const overlayProto = "199"

// ctr is a runc container connected to a cluster network on a node.
type ctr struct {
	*testutil.Container
	node *cnode
	page string // what its httpd serves, if it runs one
	v4   string
	v6   string
}

// startCtr starts a busybox container and connects it to network on n.
// web makes it serve a page on port 80 with httpd.
func startCtr(t *testing.T, n *cnode, network string, web bool) *ctr {
	t.Helper()
	args := []string{"sleep", "3600"}
	if web {
		args = []string{"httpd", "-f", "-p", "80", "-h", "/www"}
	}
	b := testutil.NewBundle(t, args...)
	id := testutil.RandName("ov-" + n.name + "-")
	c := &ctr{node: n, page: "served by " + id}
	if err := os.WriteFile(filepath.Join(b.Dir, "rootfs", "www", "index.html"), []byte(c.page+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c.Container = b.MustStart(t, id)
	n.must("--runc-root", b.Root, "network", "connect", id, network)
	c.v4, c.v6 = ctrAddrs(t, c.Container, "eth0")
	return c
}

// ctrAddrs are the global addresses of ifname in a container.
func ctrAddrs(t *testing.T, c *testutil.Container, ifname string) (v4, v6 string) {
	t.Helper()
	out, err := c.Exec("ip", "-o", "addr", "show", ifname)
	if err != nil {
		t.Fatalf("ip addr in %s: %v\n%s", c.ID, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		for i := 0; i+1 < len(f); i++ {
			p, err := netip.ParsePrefix(f[i+1])
			switch {
			case err != nil || p.Addr().IsLinkLocalUnicast():
			case f[i] == "inet":
				v4 = p.Addr().String()
			case f[i] == "inet6":
				v6 = p.Addr().String()
			}
		}
	}
	return v4, v6
}

// pingOK pings addr from c once, with a short wait: IPv6 addresses may be
// fresh, so a caller polls it.
func pingOK(c *ctr, addr string) bool {
	args := []string{"ping", "-c", "1", "-W", "1", addr}
	if strings.Contains(addr, ":") {
		args = []string{"ping6", "-c", "1", "-W", "1", addr}
	}
	_, err := c.Exec(args...)
	return err == nil
}

// ipn runs ip in the node's namespace.
func (n *cnode) ipn(args ...string) string {
	n.t.Helper()
	return testutil.Run(n.t, "ip", append([]string{"-n", n.netns}, args...)...)
}

// entries is what the node's kernel holds of circuit's overlays: routes
// with circuit's protocol, permanent neighbours and FDB entries of its
// devices, one sorted line each.
func (n *cnode) entries() []string {
	n.t.Helper()
	var out []string
	add := func(kind, text string) {
		for _, l := range strings.Split(strings.TrimSpace(text), "\n") {
			if l = strings.TrimSpace(l); l != "" {
				out = append(out, kind+" "+l)
			}
		}
	}
	add("route", n.ipn("-4", "route", "show", "proto", overlayProto))
	add("route", n.ipn("-6", "route", "show", "proto", overlayProto))
	for _, dev := range n.devices() {
		add("neigh", n.ipn("-4", "neigh", "show", "dev", dev, "nud", "permanent"))
		add("neigh", n.ipn("-6", "neigh", "show", "dev", dev, "nud", "permanent"))
		add("fdb", testutil.Run(n.t, "bridge", "-n", n.netns, "fdb", "show", "dev", dev))
	}
	slices.Sort(out)
	return out
}

// devices are the node's VXLAN devices.
func (n *cnode) devices() []string {
	var out []string
	for _, l := range strings.Split(n.ipn("-br", "link", "show", "type", "vxlan"), "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			out = append(out, strings.SplitN(f[0], "@", 2)[0])
		}
	}
	return out
}

// routesTo reports whether the node routes every block through its
// overlay (or, with want false, none of them).
func (n *cnode) routesTo(blocks []netip.Prefix, want bool) bool {
	routes := n.ipn("route", "show", "proto", overlayProto) + n.ipn("-6", "route", "show", "proto", overlayProto)
	for _, b := range blocks {
		if strings.Contains(routes, b.String()+" via "+b.Addr().String()) != want {
			return false
		}
	}
	return true
}

// fdbHas reports whether the node's overlay devices send frames to addr.
func (n *cnode) fdbHas(addr string) bool {
	for _, dev := range n.devices() {
		if strings.Contains(testutil.Run(n.t, "bridge", "-n", n.netns, "fdb", "show", "dev", dev), "dst "+addr+" ") {
			return true
		}
	}
	return false
}

// metrics is the node's agent's /metrics, from the host over the underlay.
func (n *cnode) metrics() string {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + n.addr + ":" + metricsPort + "/metrics")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// timed polls cond every 10ms, fails the test after the backstop, and
// returns how long it took to hold: a convergence delay.
func timed(t *testing.T, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > 20*time.Second {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
	d := time.Since(start)
	t.Logf("converged in %s: %s", d.Round(time.Millisecond), what)
	return d
}

// dualConf is a dual-stack cluster network on a bridge of its own, with
// default routes (to the world, through masquerade) if asked.
func dualConf(t *testing.T, name, bridge, v4, v6 string, defaults bool) string {
	t.Helper()
	routes := ""
	if defaults {
		routes = `, "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]`
	}
	body := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %q, "plugins": [
  {"type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": %q}], [{"subnet": %q}]]%s}}]}`, name, bridge, v4, v6, routes)
	path := filepath.Join(t.TempDir(), name+".conflist")
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// Two nodes, one dual-stack cluster network: a container on a pings one on
// b over IPv4 and IPv6 and fetches its page; b sees a's container's own
// address; a container reaches the underlay's host through masquerade (the
// host sees the node's address). Then a's agent is killed and started
// again: every node's entries end exactly as they were (one removed by
// hand meanwhile comes back). Then etcd drops b's connection and is
// compacted past b's watch meanwhile: b's resumed watch is told so, b
// lists again and catches up. The network's configuration asks for the
// plugin's masquerade: circuit turns it off (else b would see node a).
func TestOverlayTraffic(t *testing.T) {
	needCluster(t)
	e := packageEtcd(t)
	// b's connection to etcd is cut below for a moment: a lease longer
	// than the 3s of the other tests keeps it ready for sure (nothing
	// waits for it to run out).
	a, b := newNode(t, "a"), newNode(t, "b")
	prefix := testPrefix(t)
	a.startAgent(e.URL(), prefix)
	b.startAgent(e.URL(), prefix, "--lease-ttl", "10s")
	nodes := []*cnode{a, b}
	eventually(t, "both nodes ready", func() bool {
		l := a.nodes()
		return l["a"].State == "ready" && l["b"].State == "ready"
	})
	a.must("network", "create", "--overlay", "vxlan", dualConf(t, "ovl", "cbr-ovl", "10.242.0.0/16", "fd00:242::/112", true))
	for _, n := range nodes {
		eventually(t, n.name+" holds IPv4 and IPv6 blocks", func() bool { return len(blocksOf(n, "ovl")) == 2 })
	}
	ba, bb := blocksOf(a, "ovl"), blocksOf(b, "ovl")
	timed(t, "a routes b's blocks and b a's", func() bool { return a.routesTo(bb, true) && b.routesTo(ba, true) })

	client := startCtr(t, a, "ovl", false)
	web := startCtr(t, b, "ovl", true)
	if client.v4 == "" || client.v6 == "" || web.v4 == "" || web.v6 == "" {
		t.Fatalf("addresses: client %q %q, web %q %q", client.v4, client.v6, web.v4, web.v6)
	}
	if !inBlocks(client.v4+"/32", ba) || !inBlocks(web.v6+"/128", bb) {
		t.Errorf("addresses outside the nodes' blocks: %s in %v, %s in %v", client.v4, ba, web.v6, bb)
	}
	if out, _ := client.Exec("cat", "/sys/class/net/eth0/mtu"); strings.TrimSpace(string(out)) != "1450" {
		t.Errorf("the container's MTU is %q, want the overlay's 1450", out)
	}
	if out, _ := client.Exec("ip", "route"); !strings.Contains(string(out), "10.242.0.0/16 via") {
		t.Errorf("the container has no route to the network's range:\n%s", out)
	}
	eventually(t, "a's container pings b's over IPv4", func() bool { return pingOK(client, web.v4) })
	eventually(t, "a's container pings b's over IPv6", func() bool { return pingOK(client, web.v6) })
	if body, err := ncRequest(client.Container, web.v4+":80", "/"); err != nil || body != web.page {
		t.Errorf("HTTP from a's container to b's: %q, %v", body, err)
	}

	// b's container sees a's container's own address: a connection held
	// open shows in its netstat.
	hold := exec.Command("runc", "--root", client.Bundle.Root, "exec", client.ID, "sh", "-c", "sleep 5 | nc "+web.v4+" 80")
	var holdOut strings.Builder
	hold.Stdout, hold.Stderr = &holdOut, &holdOut
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hold.Process.Kill(); hold.Wait() })
	var netstat []byte
	defer func() {
		if t.Failed() {
			t.Logf("b's container's netstat -tn:\n%s\nthe held connection: %s", netstat, holdOut.String())
		}
	}()
	eventually(t, "b's container sees a's container's address", func() bool {
		netstat, _ = web.Exec("netstat", "-tn")
		// httpd's socket is dual-stack: ::ffff:<IPv4> is the IPv4 peer.
		return strings.Contains(string(netstat), " "+client.v4+":") || strings.Contains(string(netstat), ":"+client.v4+":")
	})

	// Leaving the ranges, traffic is masqueraded: the host sees node a.
	ln, err := net.Listen("tcp", underlayHost+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	got := make(chan string, 1)
	go func() {
		ln.(*net.TCPListener).SetDeadline(time.Now().Add(10 * time.Second))
		c, err := ln.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		defer c.Close()
		got <- c.RemoteAddr().(*net.TCPAddr).IP.String()
	}()
	if out, err := client.Exec("sh", "-c", fmt.Sprintf("echo hi | nc -w 2 %s %d", underlayHost, port)); err != nil {
		t.Errorf("a's container to the underlay's host: %v\n%s", err, out)
	}
	if from := <-got; from != a.addr {
		t.Errorf("the underlay's host saw %s, want node a's %s", from, a.addr)
	}
	if out := testutil.Run(t, "ip", "netns", "exec", a.netns, "nft", "list", "tables"); !strings.Contains(out, "table inet circuit-cluster") {
		t.Errorf("node a's nft tables:\n%s", out)
	}
	m := a.metrics()
	for _, want := range []string{`circuit_agent_overlay_routes{network="ovl"} 2`, `circuit_agent_overlay_fdb_entries{network="ovl"} 1`,
		`circuit_agent_peers{network="ovl"} 1`, `circuit_agent_nodes{state="ready"} 2`, `circuit_agent_blocks_held{network="ovl"} 2`} {
		if !strings.Contains(m, want) {
			t.Errorf("a's metrics lack %s:\n%s", want, m)
		}
	}

	// Killed and started again: exactly the same entries everywhere; one
	// removed meanwhile is back.
	beforeA, beforeB := a.entries(), b.entries()
	if len(beforeA) != 5 || len(beforeB) != 5 {
		t.Errorf("entries: a %q, b %q; want 2 routes, 2 neighbours, 1 FDB entry each", beforeA, beforeB)
	}
	a.killAgent()
	a.ipn("route", "del", bb[0].String())
	a.startAgent(a.store, a.prefix)
	start := time.Now()
	timed(t, "a's restarted agent restores the route removed meanwhile", func() bool { return a.routesTo(bb, true) })
	eventually(t, "a's agent is in the cluster again", func() bool { return strings.Contains(a.agentLog(), "in the cluster") })
	// A pass after the listing would have changed anything by now.
	for time.Since(start) < time.Second {
		time.Sleep(50 * time.Millisecond)
	}
	if got := a.entries(); !slices.Equal(got, beforeA) {
		t.Errorf("a's entries after a restart:\n%q\nbefore:\n%q", got, beforeA)
	}
	if got := b.entries(); !slices.Equal(got, beforeB) {
		t.Errorf("b's entries after a's restart:\n%q\nbefore:\n%q", got, beforeB)
	}
	if !pingOK(client, web.v4) {
		t.Error("no traffic after a's agent restarted")
	}

	// etcd's side of b's connection is reset (b's packets from etcd are
	// refused with a reset, and the reset b's kernel would get back is
	// dropped); meanwhile a network is made and etcd compacted past b's
	// watch. The filter gone, b's connection breaks, its client resumes
	// the watch where it was, and etcd answers that it was compacted: b
	// lists again, and its overlay catches up.
	cl, err := clientv3.New(clientv3.Config{Endpoints: []string{strings.Replace(e.URL(), "etcd://", "http://", 1)}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	nft := func(script string) {
		t.Helper()
		cmd := exec.Command("ip", "netns", "exec", b.netns, "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(script)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nft in b: %v\n%s", err, out)
		}
	}
	nft(fmt.Sprintf("table inet cut {\n chain in {\n  type filter hook input priority 0\n  ip saddr %s tcp sport %d reject with tcp reset\n }\n}\n", underlayHost, e.clientPort))
	a.must("network", "create", "--overlay", "vxlan", clusterConf(t, "ovl2", "cbr-ov2", "10.243.0.0/16"))
	resp, err := cl.Get(context.Background(), "/", clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Compact(context.Background(), resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	go b.run("", "node", "list") // b talks to etcd: its answer meets the filter
	eventually(t, "etcd dropped b's connection", func() bool {
		out := testutil.Run(t, "ss", "-Htn", "state", "established", "dst", b.addr, "sport", fmt.Sprintf("= :%d", e.clientPort))
		return strings.TrimSpace(out) == ""
	})
	nft("delete table inet cut")
	defer func() {
		if t.Failed() {
			t.Logf("b's agent:\n%s", b.agentLog())
		}
	}()
	eventually(t, "b's agent lists again after the compaction", func() bool {
		return strings.Contains(b.agentLog(), "fell behind etcd's compaction")
	})
	eventually(t, "b holds a block of ovl2", func() bool { return len(blocksOf(b, "ovl2")) > 0 })
	timed(t, "a routes b's block of ovl2", func() bool { return a.routesTo(blocksOf(b, "ovl2"), true) })
	if m := b.metrics(); !strings.Contains(m, `circuit_agent_watch_restarts_total{reason="compacted"}`) {
		t.Errorf("b's metrics count no compacted watch:\n%s", m)
	}
}

// A third node joins: the others reach its containers with no command run
// on them, within moments. It stops (lost at once): its routes and FDB
// entries leave the others. Each delay is measured.
func TestOverlayJoinLeave(t *testing.T) {
	needCluster(t)
	e := packageEtcd(t)
	nodes := startCluster(t, e, "a", "b")
	a, b := nodes[0], nodes[1]
	created := time.Now()
	a.must("network", "create", "--overlay", "vxlan", clusterConf(t, "jl", "cbr-jl", "10.244.0.0/16"))
	t.Logf("network create took %s", time.Since(created).Round(time.Millisecond))
	// b claims its block when its watch sees the network; a routes it.
	timed(t, "block claim: a routes the block b claimed after the create", func() bool {
		bb := blocksOf(b, "jl")
		return len(bb) > 0 && a.routesTo(bb, true)
	})
	client := startCtr(t, a, "jl", false)

	c := newNode(t, "c")
	joined := time.Now()
	c.startAgent(e.URL(), a.prefix)
	eventually(t, "c holds a block", func() bool { return len(blocksOf(c, "jl")) > 0 })
	bc := blocksOf(c, "jl")
	for _, n := range []*cnode{a, b} {
		eventually(t, n.name+" routes c's block", func() bool { return n.routesTo(bc, true) })
	}
	t.Logf("converged in %s: join: a and b route c's block after c's agent started", time.Since(joined).Round(time.Millisecond))
	web := startCtr(t, c, "jl", true)
	eventually(t, "a's container pings c's", func() bool { return pingOK(client, web.v4) })
	if body, err := ncRequest(client.Container, web.v4+":80", "/"); err != nil || body != web.page {
		t.Errorf("HTTP from a's container to c's: %q, %v", body, err)
	}

	left := time.Now()
	c.stopAgent()
	for _, n := range []*cnode{a, b} {
		eventually(t, n.name+" drops c's routes and FDB entries", func() bool { return n.routesTo(bc, false) && !n.fdbHas(c.addr) })
		if strings.Contains(strings.Join(n.entries(), "\n"), bc[0].Addr().String()) {
			t.Errorf("%s keeps an entry of c's block:\n%s", n.name, strings.Join(n.entries(), "\n"))
		}
	}
	t.Logf("converged in %s: leave: a and b dropped c's entries after its agent stopped", time.Since(left).Round(time.Millisecond))
	// c's own kernel keeps what it had: its containers keep their routes.
	if !c.routesTo(blocksOf(a, "jl"), true) {
		t.Error("the stopped node's overlay was torn down")
	}

	// The network deleted: its device, with every entry on it, and its
	// masquerade leave the nodes whose agents run.
	deleted := time.Now()
	a.must("network", "delete", "--force", "jl")
	for _, n := range []*cnode{a, b} {
		eventually(t, n.name+" drops the overlay", func() bool {
			return len(n.devices()) == 0 && !strings.Contains(testutil.Run(t, "ip", "netns", "exec", n.netns, "nft", "list", "tables"), "circuit-cluster")
		})
	}
	t.Logf("converged in %s: delete: a and b removed the network's device and masquerade", time.Since(deleted).Round(time.Millisecond))
}

// etcd stops for longer than the lease TTL: containers on two nodes keep
// talking. It comes back: the agents reconnect, and a network created then
// appears on both nodes and carries traffic.
func TestOverlayEtcdOutage(t *testing.T) {
	needCluster(t)
	e := ownEtcd(t, 23793, 23803)
	nodes := startCluster(t, e, "a", "b")
	a, b := nodes[0], nodes[1]
	a.must("network", "create", "--overlay", "vxlan", clusterConf(t, "eo", "cbr-eo", "10.245.0.0/16"))
	eventually(t, "a routes b's block", func() bool { bb := blocksOf(b, "eo"); return len(bb) > 0 && a.routesTo(bb, true) })
	ca, cb := startCtr(t, a, "eo", false), startCtr(t, b, "eo", true)
	eventually(t, "a's container pings b's", func() bool { return pingOK(ca, cb.v4) })
	beforeA, beforeB := a.entries(), b.entries()

	e.stop()
	down := time.Now()
	for time.Since(down) < 3500*time.Millisecond { // past the 3s lease TTL
		if !pingOK(ca, cb.v4) {
			t.Errorf("a's container lost b's after %s of etcd down", time.Since(down).Round(time.Millisecond))
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if got := a.entries(); !slices.Equal(got, beforeA) {
		t.Errorf("a's entries changed while etcd was down:\n%q\nbefore:\n%q", got, beforeA)
	}
	if err := e.start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "both nodes ready again", func() bool {
		l := a.nodes()
		return l["a"].State == "ready" && l["b"].State == "ready"
	})
	eventually(t, "b's entries as before the outage", func() bool { return slices.Equal(b.entries(), beforeB) })
	b.must("network", "create", "--overlay", "vxlan", clusterConf(t, "late", "cbr-la", "10.246.0.0/16"))
	eventually(t, "both hold a block of the new network and route the other's", func() bool {
		la, lb := blocksOf(a, "late"), blocksOf(b, "late")
		return len(la) > 0 && len(lb) > 0 && a.routesTo(lb, true) && b.routesTo(la, true)
	})
	a.must("--runc-root", ca.Bundle.Root, "network", "connect", ca.ID, "late")
	b.must("--runc-root", cb.Bundle.Root, "network", "connect", cb.ID, "late")
	lateB, _ := ctrAddrs(t, cb.Container, "eth1")
	eventually(t, "a's container pings b's on the new network", func() bool { return pingOK(ca, lateB) })
	if !pingOK(ca, cb.v4) {
		t.Error("the first network no longer carries traffic")
	}
}
