package overlay

import (
	"errors"
	"net"
	"net/netip"

	"os/exec"
	"strings"
	"testing"

	"github.com/circuit-cni/circuit/pkg/testutil"
)

// Root tier: two throwaway namespaces joined by a veth pair (the
// underlay), each with an overlay from this package; traffic between the
// overlay addresses crosses VXLAN.

type testNode struct {
	t     *testing.T
	ns    string
	local netip.Addr
	h     *Handle
}

func newPair(t *testing.T, v6 bool) (*testNode, *testNode) {
	t.Helper()
	testutil.RequireRoot(t)
	if testutil.InVM() {
		t.Skip("needs no kernel the host lacks")
	}
	a := &testNode{t: t, ns: testutil.RandName("ovl-")}
	b := &testNode{t: t, ns: testutil.RandName("ovl-")}
	a.local, b.local = netip.MustParseAddr("10.249.0.1"), netip.MustParseAddr("10.249.0.2")
	plen := "/24"
	if v6 {
		a.local, b.local, plen = netip.MustParseAddr("fd00:249::1"), netip.MustParseAddr("fd00:249::2"), "/64"
	}
	for _, n := range []*testNode{a, b} {
		testutil.Run(t, "ip", "netns", "add", n.ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", n.ns).Run() })
	}
	testutil.Run(t, "ip", "-n", a.ns, "link", "add", "u0", "type", "veth", "peer", "name", "u0", "netns", b.ns)
	for _, n := range []*testNode{a, b} {
		testutil.Run(t, "ip", "-n", n.ns, "addr", "add", n.local.String()+plen, "dev", "u0", "nodad")
		testutil.Run(t, "ip", "-n", n.ns, "link", "set", "u0", "up")
		testutil.Run(t, "ip", "-n", n.ns, "link", "set", "lo", "up")
		h, err := Open("/run/netns/" + n.ns)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(h.Close)
		n.h = h
	}
	return a, b
}

func (n *testNode) ip(args ...string) string {
	n.t.Helper()
	return testutil.Run(n.t, "ip", append([]string{"-n", n.ns}, args...)...)
}

// network is the overlay of VNI 4242 on n, holding block mine, with the
// others' blocks as remotes.
func (n *testNode) network(t *testing.T, mine netip.Prefix, mac string, remotes ...Remote) Network {
	u, err := n.h.Underlay(n.local)
	if err != nil {
		t.Fatal(err)
	}
	hw, _ := net.ParseMAC(mac)
	return Network{Device: DeviceName(4242), Label: "blue", VNI: 4242, Local: n.local, Parent: u.Index,
		MTU: MTU(u.MTU, n.local), MAC: hw, Addrs: []netip.Addr{mine.Addr()}, Remotes: remotes}
}

func mustMAC(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }

func TestSyncCarriesTraffic(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		name := "ipv4 underlay"
		if v6 {
			name = "ipv6 underlay"
		}
		t.Run(name, func(t *testing.T) {
			a, b := newPair(t, v6)
			blockA, blockB := netip.MustParsePrefix("10.248.0.0/24"), netip.MustParsePrefix("10.248.1.0/24")
			blockA6, blockB6 := netip.MustParsePrefix("fd00:248::/120"), netip.MustParsePrefix("fd00:248::100/120")
			macA, macB := "0a:00:00:00:00:0a", "0a:00:00:00:00:0b"
			na := a.network(t, blockA, macA, Remote{Block: blockB, MAC: mustMAC(macB), Underlay: b.local}, Remote{Block: blockB6, MAC: mustMAC(macB), Underlay: b.local})
			na.Addrs = append(na.Addrs, blockA6.Addr())
			nb := b.network(t, blockB, macB, Remote{Block: blockA, MAC: mustMAC(macA), Underlay: a.local}, Remote{Block: blockA6, MAC: mustMAC(macA), Underlay: a.local})
			nb.Addrs = append(nb.Addrs, blockB6.Addr())
			for _, x := range []struct {
				n  *testNode
				nw Network
			}{{a, na}, {b, nb}} {
				rep, err := x.n.h.Sync([]Network{x.nw})
				if err != nil {
					t.Fatal(err)
				}
				if got := rep.Devices["cvx4242"]; got != (Counts{Routes: 2, Neighbours: 2, FDB: 1}) {
					t.Errorf("counts %+v", got)
				}
			}
			wantMTU := "1450"
			if v6 {
				wantMTU = "1430"
			}
			if out := a.ip("-d", "link", "show", "cvx4242"); !strings.Contains(out, "mtu "+wantMTU) || !strings.Contains(out, "vxlan id 4242") ||
				!strings.Contains(out, "dstport 4789") || !strings.Contains(out, "nolearning") || !strings.Contains(out, macA) || !strings.Contains(out, "alias circuit overlay blue") {
				t.Errorf("device:\n%s", out)
			}
			if out := a.ip("route", "show", "proto", "199"); !strings.Contains(out, "10.248.1.0/24 via 10.248.1.0 dev cvx4242 onlink") {
				t.Errorf("routes:\n%s", out)
			}
			if out := a.ip("-6", "route", "show", "proto", "199"); !strings.Contains(out, "fd00:248::100/120 via fd00:248::100 dev cvx4242") {
				t.Errorf("IPv6 routes:\n%s", out)
			}
			if out := testutil.Run(t, "bridge", "-n", a.ns, "fdb", "show", "dev", "cvx4242"); !strings.Contains(out, macB+" dst "+b.local.String()) || !strings.Contains(out, "permanent") {
				t.Errorf("fdb:\n%s", out)
			}
			if out := a.ip("neigh", "show", "dev", "cvx4242"); !strings.Contains(out, "10.248.1.0 lladdr "+macB+" PERMANENT") {
				t.Errorf("neighbours:\n%s", out)
			}
			for _, dst := range []string{"10.248.1.0", "fd00:248::100"} {
				if out, err := exec.Command("ip", "netns", "exec", a.ns, "ping", "-c", "1", "-W", "2", dst).CombinedOutput(); err != nil {
					t.Errorf("ping %s across the overlay: %v\n%s", dst, err, out)
				}
			}

			// Again: nothing to do.
			if rep, err := a.h.Sync([]Network{na}); err != nil || rep.Changes != 0 {
				t.Errorf("a second sync changed %d things: %v", rep.Changes, err)
			}
		})
	}
}

// Extras circuit made are removed, what others made on or beside its
// device is left alone, a device of circuit's name it did not make is
// refused, and a device whose VNI changed is made again.
func TestSyncOwnsOnlyItsOwn(t *testing.T) {
	a, b := newPair(t, false)
	blockA, blockB, blockC := netip.MustParsePrefix("10.248.0.0/24"), netip.MustParsePrefix("10.248.1.0/24"), netip.MustParsePrefix("10.248.2.0/24")
	macB, macC := mustMAC("0a:00:00:00:00:0b"), mustMAC("0a:00:00:00:00:0c")
	n := a.network(t, blockA, "0a:00:00:00:00:0a",
		Remote{Block: blockB, MAC: macB, Underlay: b.local}, Remote{Block: blockC, MAC: macC, Underlay: netip.MustParseAddr("10.249.0.3")})
	if _, err := a.h.Sync([]Network{n}); err != nil {
		t.Fatal(err)
	}
	// Someone else's route on circuit's device, and their own device.
	a.ip("route", "add", "10.247.0.0/24", "dev", "cvx4242")
	a.ip("link", "add", "other0", "type", "vxlan", "id", "77", "dstport", "4789", "dev", "u0")
	// One remote leaves.
	n.Remotes = n.Remotes[:1]
	rep, err := a.h.Sync([]Network{n})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Changes != 3 {
		t.Errorf("removing a remote made %d changes, want 3 (route, neighbour, FDB)", rep.Changes)
	}
	if out := a.ip("route"); strings.Contains(out, "10.248.2.0") || !strings.Contains(out, "10.247.0.0/24 dev cvx4242") || !strings.Contains(out, "10.248.1.0/24") {
		t.Errorf("routes after a remote left:\n%s", out)
	}
	if out := testutil.Run(t, "bridge", "-n", a.ns, "fdb", "show", "dev", "cvx4242"); strings.Contains(out, macC.String()) {
		t.Errorf("fdb after a remote left:\n%s", out)
	}
	// The VNI changes: the device is made again.
	n.VNI = 4243
	if _, err := a.h.Sync([]Network{n}); err != nil {
		t.Fatal(err)
	}
	if out := a.ip("-d", "link", "show", "cvx4242"); !strings.Contains(out, "vxlan id 4243") {
		t.Errorf("device after the VNI changed:\n%s", out)
	}
	// A device of circuit's name that circuit did not make.
	a.ip("link", "add", "cvx5000", "type", "vxlan", "id", "5000", "dstport", "4789", "dev", "u0")
	n5 := n
	n5.Device, n5.VNI = "cvx5000", 5000
	if _, err := a.h.Sync([]Network{n, n5}); !errors.Is(err, ErrNotOurs) {
		t.Errorf("sync over a foreign device: %v", err)
	}
	// Nothing wanted: circuit's devices go, the others stay.
	if err := a.h.Remove(); err != nil {
		t.Fatal(err)
	}
	out := a.ip("-br", "link")
	if strings.Contains(out, "cvx4242") || !strings.Contains(out, "other0") || !strings.Contains(out, "cvx5000") {
		t.Errorf("links after Remove:\n%s", out)
	}
	if devs, err := a.h.Devices(); err != nil || len(devs) != 0 {
		t.Errorf("devices after Remove: %v %v", devs, err)
	}
}
