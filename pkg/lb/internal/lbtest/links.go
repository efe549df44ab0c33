package lbtest

import (
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Veth connects a (interface aIf) to b (interface bIf), assigns the
// CIDR addresses and brings both ends up.
func Veth(t testing.TB, a *NS, aIf string, aAddrs []string, b *NS, bIf string, bAddrs []string) {
	t.Helper()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: aIf}, PeerName: bIf, PeerNamespace: netlink.NsFd(int(b.h))}
	if err := a.nl.LinkAdd(v); err != nil {
		t.Fatalf("veth %s/%s - %s/%s: %v", a.Name, aIf, b.Name, bIf, err)
	}
	a.Up(t, aIf, aAddrs...)
	b.Up(t, bIf, bAddrs...)
}

// Bridge creates a bridge with addresses in n.
func (n *NS) Bridge(t testing.TB, name string, addrs ...string) {
	t.Helper()
	if err := n.nl.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
		t.Fatalf("%s: bridge %s: %v", n.Name, name, err)
	}
	n.Up(t, name, addrs...)
}

// Enslave puts interface ifname under bridge br.
func (n *NS) Enslave(t testing.TB, ifname, br string) {
	t.Helper()
	l, err := n.nl.LinkByName(ifname)
	if err != nil {
		t.Fatalf("%s: %s: %v", n.Name, ifname, err)
	}
	m, err := n.nl.LinkByName(br)
	if err != nil {
		t.Fatalf("%s: %s: %v", n.Name, br, err)
	}
	if err := n.nl.LinkSetMaster(l, m); err != nil {
		t.Fatalf("%s: enslave %s to %s: %v", n.Name, ifname, br, err)
	}
}

// Up adds CIDR addresses (without IPv6 duplicate address detection, so
// they are usable at once) and sets the link up.
func (n *NS) Up(t testing.TB, ifname string, addrs ...string) {
	t.Helper()
	l, err := n.nl.LinkByName(ifname)
	if err != nil {
		t.Fatalf("%s: %s: %v", n.Name, ifname, err)
	}
	for _, a := range addrs {
		p := netip.MustParsePrefix(a)
		ipn := &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
		if err := n.nl.AddrAdd(l, &netlink.Addr{IPNet: ipn, Flags: unix.IFA_F_NODAD}); err != nil {
			t.Fatalf("%s: address %s on %s: %v", n.Name, a, ifname, err)
		}
	}
	if err := n.nl.LinkSetUp(l); err != nil {
		t.Fatalf("%s: %s up: %v", n.Name, ifname, err)
	}
}

// DefaultVia adds default routes through the given gateways.
func (n *NS) DefaultVia(t testing.TB, gws ...string) {
	t.Helper()
	for _, gw := range gws {
		ip := netip.MustParseAddr(gw)
		dst := &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
		if ip.Is6() {
			dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		}
		if err := n.nl.RouteAdd(&netlink.Route{Dst: dst, Gw: ip.AsSlice()}); err != nil {
			t.Fatalf("%s: default via %s: %v", n.Name, gw, err)
		}
	}
}

// Forward turns on IPv4 and IPv6 forwarding.
func (n *NS) Forward(t testing.TB) {
	t.Helper()
	n.Sysctl(t, "net/ipv4/ip_forward", "1")
	n.Sysctl(t, "net/ipv6/conf/all/forwarding", "1")
}
