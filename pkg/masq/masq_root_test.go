package masq

import (
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/circuit-cni/circuit/pkg/testutil"
)

// Root tier: a "node" namespace between a "container" (10.246.0.2, in a
// cluster range) and an "outside" one (10.245.0.2) that has no route back
// to the range: only masquerade brings answers back.
func TestMasqueradeLeavesRangesOnly(t *testing.T) {
	testutil.RequireRoot(t)
	if testutil.InVM() {
		t.Skip("needs no kernel the host lacks")
	}
	node, ctr, out := namespaces(t)
	run := func(args ...string) string { t.Helper(); return testutil.Run(t, "ip", args...) }
	run("-n", node, "link", "add", "c0", "type", "veth", "peer", "name", "eth0", "netns", ctr)
	run("-n", node, "link", "add", "u0", "type", "veth", "peer", "name", "eth0", "netns", out)
	run("-n", node, "addr", "add", "10.246.0.1/24", "dev", "c0")
	run("-n", node, "addr", "add", "10.245.0.1/24", "dev", "u0")
	run("-n", ctr, "addr", "add", "10.246.0.2/24", "dev", "eth0")
	run("-n", out, "addr", "add", "10.245.0.2/24", "dev", "eth0")
	for _, x := range [][2]string{{node, "c0"}, {node, "u0"}, {ctr, "eth0"}, {out, "eth0"}} {
		run("-n", x[0], "link", "set", x[1], "up")
	}
	run("-n", ctr, "route", "add", "default", "via", "10.246.0.1")
	testutil.Run(t, "ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	// Someone else's table in the same namespace stays as it is.
	testutil.Run(t, "ip", "netns", "exec", node, "nft", "add", "table", "inet", "other-table")

	h, err := Open("/run/netns/" + node)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ping := func() error {
		return exec.Command("ip", "netns", "exec", ctr, "ping", "-c", "1", "-W", "1", "10.245.0.2").Run()
	}
	if ping() == nil {
		t.Fatal("the outside answers without masquerade: the test proves nothing")
	}
	r := Rules{Ranges: []netip.Prefix{netip.MustParsePrefix("10.246.0.0/16"), netip.MustParsePrefix("fd00:246::/112")}, Overlays: []string{"cvx4096"}}
	if changed, err := h.Sync(r); err != nil || !changed {
		t.Fatalf("sync: %v %v", changed, err)
	}
	if err := ping(); err != nil {
		t.Errorf("the container does not reach the outside through masquerade: %v", err)
	}
	list := testutil.Run(t, "ip", "netns", "exec", node, "nft", "list", "table", "inet", Table)
	for _, want := range []string{`oifname "cvx4096" ip saddr 10.246.0.0/16 return`, `oifname "cvx4096" masquerade`, "ip daddr 10.246.0.0/16 return", "ip6 daddr fd00:246::/112 return",
		"ip saddr 10.246.0.0/16 masquerade", "ip6 saddr fd00:246::/112 masquerade", "type nat hook postrouting priority srcnat"} {
		if !strings.Contains(list, want) {
			t.Errorf("table lacks %q:\n%s", want, list)
		}
	}
	// The same rules again, in another order: nothing written.
	r2 := Rules{Ranges: []netip.Prefix{r.Ranges[1], r.Ranges[0], r.Ranges[0]}, Overlays: r.Overlays}
	if changed, err := h.Sync(r2); err != nil || changed {
		t.Errorf("a second sync: changed %v, %v", changed, err)
	}
	// The range changes: the table follows.
	if changed, err := h.Sync(Rules{Ranges: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}}); err != nil || !changed {
		t.Errorf("sync to another range: %v %v", changed, err)
	}
	if ping() == nil {
		t.Error("traffic of a range no longer listed is still masqueraded")
	}
	// No range: the table goes, the other one stays.
	if changed, err := h.Sync(Rules{}); err != nil || !changed {
		t.Errorf("sync to nothing: %v %v", changed, err)
	}
	tables := testutil.Run(t, "ip", "netns", "exec", node, "nft", "list", "tables")
	if strings.Contains(tables, Table) || !strings.Contains(tables, "other-table") {
		t.Errorf("tables after removal:\n%s", tables)
	}
	if err := h.Remove(); err != nil {
		t.Errorf("removing an absent table: %v", err)
	}
}

// Root tier: traffic from outside the ranges into an overlay is
// masqueraded to the overlay device's address, so the answer comes back
// through the node: an "outside" client (10.245.0.2) reaches a "remote
// container" (10.246.1.2) behind the node's overlay device only so,
// because the container has no route to the client.
func TestMasqueradeIntoOverlay(t *testing.T) {
	testutil.RequireRoot(t)
	if testutil.InVM() {
		t.Skip("needs no kernel the host lacks")
	}
	node, remote, out := namespaces(t)
	run := func(args ...string) string { t.Helper(); return testutil.Run(t, "ip", args...) }
	// cvxmasq stands for the overlay device: it holds the node's address
	// in the range, and the remote side knows only the range.
	run("-n", node, "link", "add", "cvxmasq", "type", "veth", "peer", "name", "eth0", "netns", remote)
	run("-n", node, "link", "add", "u0", "type", "veth", "peer", "name", "eth0", "netns", out)
	run("-n", node, "addr", "add", "10.246.0.1/16", "dev", "cvxmasq")
	run("-n", node, "addr", "add", "10.245.0.1/24", "dev", "u0")
	run("-n", remote, "addr", "add", "10.246.1.2/16", "dev", "eth0")
	run("-n", out, "addr", "add", "10.245.0.2/24", "dev", "eth0")
	for _, x := range [][2]string{{node, "cvxmasq"}, {node, "u0"}, {remote, "eth0"}, {out, "eth0"}} {
		run("-n", x[0], "link", "set", x[1], "up")
	}
	run("-n", out, "route", "add", "10.246.0.0/16", "via", "10.245.0.1")
	testutil.Run(t, "ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	h, err := Open("/run/netns/" + node)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ping := func() error {
		return exec.Command("ip", "netns", "exec", out, "ping", "-c", "1", "-W", "1", "10.246.1.2").Run()
	}
	if ping() == nil {
		t.Fatal("the remote container answers the outside without masquerade: the test proves nothing")
	}
	r := Rules{Ranges: []netip.Prefix{netip.MustParsePrefix("10.246.0.0/16")}, Overlays: []string{"cvxmasq"}}
	if _, err := h.Sync(r); err != nil {
		t.Fatal(err)
	}
	if err := ping(); err != nil {
		t.Errorf("the outside does not reach the remote container through masquerade: %v", err)
	}
}

// namespaces makes three network namespaces (lo up), removed after t.
func namespaces(t *testing.T) (string, string, string) {
	var ns [3]string
	for i := range ns {
		ns[i] = testutil.RandName("msq-")
		testutil.Run(t, "ip", "netns", "add", ns[i])
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns[i]).Run() })
		testutil.Run(t, "ip", "-n", ns[i], "link", "set", "lo", "up")
	}
	return ns[0], ns[1], ns[2]
}

// Root tier: a container balanced to itself (here by a DNAT of another
// table's, as a service's) gets an answer only through the masquerade of
// traffic to the ranges from its own destination: its own address as the
// source would be dropped as a martian. The node's own traffic to itself
// is not touched.
func TestMasqueradeSelf(t *testing.T) {
	testutil.RequireRoot(t)
	if testutil.InVM() {
		t.Skip("needs no kernel the host lacks")
	}
	node, ctr, _ := namespaces(t)
	run := func(args ...string) string { t.Helper(); return testutil.Run(t, "ip", args...) }
	run("-n", node, "link", "add", "c0", "type", "veth", "peer", "name", "eth0", "netns", ctr)
	run("-n", node, "addr", "add", "10.246.0.1/24", "dev", "c0")
	run("-n", ctr, "addr", "add", "10.246.0.2/24", "dev", "eth0")
	run("-n", node, "link", "set", "c0", "up")
	run("-n", ctr, "link", "set", "eth0", "up")
	run("-n", ctr, "route", "add", "default", "via", "10.246.0.1")
	testutil.Run(t, "ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	// The service: 10.99.0.1 is DNATed to the container itself.
	testutil.Run(t, "ip", "netns", "exec", node, "nft", "add table ip svc; add chain ip svc pre { type nat hook prerouting priority dstnat; }; add rule ip svc pre ip daddr 10.99.0.1 dnat to 10.246.0.2")
	ping := func() error {
		return exec.Command("ip", "netns", "exec", ctr, "ping", "-c", "1", "-W", "1", "10.99.0.1").Run()
	}
	if ping() == nil {
		t.Fatal("the container reaches itself through the DNAT without masquerade: the test proves nothing")
	}
	h, err := Open("/run/netns/" + node)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if _, err := h.Sync(Rules{Ranges: []netip.Prefix{netip.MustParsePrefix("10.246.0.0/16")}}); err != nil {
		t.Fatal(err)
	}
	if err := ping(); err != nil {
		t.Errorf("the container does not reach itself through the DNAT: %v", err)
	}
	if err := exec.Command("ip", "netns", "exec", node, "ping", "-c", "1", "-W", "1", "10.246.0.1").Run(); err != nil {
		t.Errorf("the node no longer reaches its own address: %v", err)
	}
}
