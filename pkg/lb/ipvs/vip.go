package ipvs

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DummyDevice holds the service addresses: IPVS only sees packets
// addressed to the host, so each VIP must be a local address. circuit owns
// this device and deletes it when it holds no address.
const DummyDevice = "circuit-lb0"

const addrGenModeNone = 1 // IN6_ADDR_GEN_MODE_NONE: no link-local address

func hostPrefix(a netip.Addr) *netlink.Addr {
	return &netlink.Addr{
		IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())},
		Flags: unix.IFA_F_NODAD, // usable at once, no duplicate detection delay
	}
}

func family(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// localOn returns the link index holding a, or 0.
func (b *Backend) localOn(a netip.Addr) (int, error) {
	addrs, err := b.nl.AddrList(nil, family(a))
	if err != nil {
		return 0, fmt.Errorf("list addresses: %w", err)
	}
	for _, x := range addrs {
		if ip, ok := netip.AddrFromSlice(x.IP); ok && ip.Unmap() == a {
			return x.LinkIndex, nil
		}
	}
	return 0, nil
}

// ensureVIP makes a a local address, on DummyDevice unless it is local
// already (then it is not ours to manage).
func (b *Backend) ensureVIP(a netip.Addr) error {
	if idx, err := b.localOn(a); err != nil || idx != 0 {
		return err
	}
	link, err := b.nl.LinkByName(DummyDevice)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		d := &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: DummyDevice}}
		if err := b.nl.LinkAdd(d); err != nil {
			return fmt.Errorf("create dummy device %s to hold service address %s (needs CONFIG_DUMMY): %w", DummyDevice, a, err)
		}
		if link, err = b.nl.LinkByName(DummyDevice); err != nil {
			return fmt.Errorf("dummy device %s: %w", DummyDevice, err)
		}
		// Best effort: without IPv6 there is no link-local address to avoid.
		_ = b.nl.LinkSetIP6AddrGenMode(link, addrGenModeNone)
	} else if err != nil {
		return fmt.Errorf("dummy device %s: %w", DummyDevice, err)
	}
	if err := b.nl.AddrAdd(link, hostPrefix(a)); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add service address %s to %s: %w", a, DummyDevice, err)
	}
	if err := b.nl.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", DummyDevice, err)
	}
	return nil
}

// releaseVIP removes a from DummyDevice once no IPVS service uses it, and
// the device once it holds no address.
func (b *Backend) releaseVIP(a netip.Addr) error {
	svcs, err := b.g.services()
	if err != nil {
		return fmt.Errorf("list IPVS services: %w", err)
	}
	for _, s := range svcs {
		if s.addr.Addr() == a {
			return nil
		}
	}
	link, err := b.nl.LinkByName(DummyDevice)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("dummy device %s: %w", DummyDevice, err)
	}
	err = b.nl.AddrDel(link, hostPrefix(a))
	if err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove service address %s from %s: %w", a, DummyDevice, err)
	}
	left, err := b.nl.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", DummyDevice, err)
	}
	for _, x := range left {
		if !x.IP.IsLinkLocalUnicast() {
			return nil
		}
	}
	if err := b.nl.LinkDel(link); err != nil {
		return fmt.Errorf("delete %s: %w", DummyDevice, err)
	}
	return nil
}
