package overlay

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const (
	// Port is VXLAN's IANA port, as flannel and the kernel's default use.
	Port = 4789
	// RouteProtocol marks circuit's overlay routes (ip route ... proto 199),
	// so that circuit only ever removes its own: an unused number above
	// the kernel's and the routing daemons' of /etc/iproute2/rt_protos.
	RouteProtocol netlink.RouteProtocol = 199
	// Alias marks a device as circuit's (ip link shows it as "alias").
	Alias = "circuit overlay"
	// Overhead is what VXLAN adds to each frame: outer IPv4 (20), UDP (8),
	// VXLAN (8) and the inner Ethernet header (14); an IPv6 underlay's
	// header is 20 bytes longer.
	Overhead4 = 50
	Overhead6 = 70
)

// netlinkTimeout keeps a wedged kernel answer from hanging the agent.
const netlinkTimeout = 10 * time.Second

// ErrNotOurs: a device of the wanted name exists and circuit did not make
// it. Sync leaves it alone.
var ErrNotOurs = errors.New("not circuit's")

// Network is one overlay as this node should have it.
type Network struct {
	Device  string           // e.g. cvx4096; at most 15 bytes
	Label   string           // the network's name, shown in the device's alias
	VNI     int              // 1 to 2^24-1
	Local   netip.Addr       // this node's underlay address
	Parent  int              // the underlay link's index
	MTU     int              // the device's MTU
	MAC     net.HardwareAddr // this node's VTEP MAC
	Addrs   []netip.Addr     // the network addresses of this node's blocks
	Remotes []Remote         // every other node's blocks
}

// Remote is one block another node holds.
type Remote struct {
	Block    netip.Prefix     // routed to the device
	MAC      net.HardwareAddr // the holder's VTEP MAC
	Underlay netip.Addr       // the holder's underlay address
}

// Counts is what a device carries once synced.
type Counts struct {
	Routes, Neighbours, FDB int
}

// Report is what a Sync did: per device what it carries now, and how
// many kernel objects it added, changed or removed.
type Report struct {
	Devices map[string]Counts
	Changes int
}

// Underlay is the link that holds the node's underlay address.
type Underlay struct {
	Name  string
	Index int
	MTU   int
}

// MTU is the overlay MTU over an underlay link of mtu bytes reached from
// local: flannel's arithmetic.
func MTU(mtu int, local netip.Addr) int {
	if local.Is4() || local.Is4In6() {
		return mtu - Overhead4
	}
	return mtu - Overhead6
}

// DeviceName is the device of a VNI: "cvx" and the VNI fit in 15 bytes for
// every 24-bit VNI.
func DeviceName(vni int) string { return fmt.Sprintf("cvx%d", vni) }

// Handle programs overlays in one network namespace through a netlink
// socket bound to it: no thread switches namespace.
type Handle struct {
	nl *netlink.Handle
}

// Open binds a handle to the netns at nsPath ("": the caller's).
func Open(nsPath string) (*Handle, error) {
	var (
		h   *netlink.Handle
		err error
	)
	if nsPath == "" {
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	} else {
		var ns netns.NsHandle
		if ns, err = netns.GetFromPath(nsPath); err != nil {
			return nil, fmt.Errorf("overlay: open netns %s: %w", nsPath, err)
		}
		defer ns.Close()
		h, err = newHandleAt(ns)
	}
	if err != nil {
		return nil, fmt.Errorf("overlay: netlink socket: %w", err)
	}
	if err := h.SetSocketTimeout(netlinkTimeout); err != nil {
		h.Close()
		return nil, fmt.Errorf("overlay: netlink socket: %w", err)
	}
	return &Handle{nl: h}, nil
}

// Close releases the socket.
func (h *Handle) Close() { h.nl.Close() }

// Underlay finds the link that holds local.
func (h *Handle) Underlay(local netip.Addr) (Underlay, error) {
	addrs, err := dump(func() ([]netlink.Addr, error) { return h.nl.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return Underlay{}, fmt.Errorf("overlay: list addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == local.Unmap() {
			l, err := h.nl.LinkByIndex(a.LinkIndex)
			if err != nil {
				return Underlay{}, fmt.Errorf("overlay: link of %s: %w", local, err)
			}
			return Underlay{Name: l.Attrs().Name, Index: l.Attrs().Index, MTU: l.Attrs().MTU}, nil
		}
	}
	return Underlay{}, fmt.Errorf("overlay: no link of this node holds %s (is it the node's advertised address?)", local)
}

// Devices lists circuit's overlay devices.
func (h *Handle) Devices() ([]string, error) {
	links, err := dump(h.nl.LinkList)
	if err != nil {
		return nil, fmt.Errorf("overlay: list links: %w", err)
	}
	var out []string
	for _, l := range links {
		if ours(l) {
			out = append(out, l.Attrs().Name)
		}
	}
	slices.Sort(out)
	return out, nil
}

// ours reports whether circuit made l: a VXLAN device with circuit's alias.
func ours(l netlink.Link) bool {
	return l.Type() == "vxlan" && strings.HasPrefix(l.Attrs().Alias, Alias)
}

// Sync makes the namespace's overlays exactly nets: each device made or
// mended, its addresses, routes, neighbour and FDB entries added or
// removed; circuit's devices not in nets are deleted, with everything on
// them. One network's failure does not stop the others'; the errors are
// joined.
func (h *Handle) Sync(nets []Network) (Report, error) {
	rep := Report{Devices: map[string]Counts{}}
	var errs []error
	want := map[string]bool{}
	for _, n := range nets {
		want[n.Device] = true
		c, changes, err := h.syncNetwork(n)
		rep.Changes += changes
		if err != nil {
			errs = append(errs, fmt.Errorf("overlay %s (VNI %d): %w", n.Device, n.VNI, err))
			continue
		}
		rep.Devices[n.Device] = c
	}
	links, err := dump(h.nl.LinkList)
	if err != nil {
		return rep, errors.Join(append(errs, fmt.Errorf("overlay: list links: %w", err))...)
	}
	for _, l := range links {
		if ours(l) && !want[l.Attrs().Name] {
			if err := h.nl.LinkDel(l); err != nil && !isNotFound(err) {
				errs = append(errs, fmt.Errorf("overlay: delete device %s: %w", l.Attrs().Name, err))
				continue
			}
			rep.Changes++
		}
	}
	return rep, errors.Join(errs...)
}

// Remove deletes all of circuit's overlay devices.
func (h *Handle) Remove() error {
	_, err := h.Sync(nil)
	return err
}

func (h *Handle) syncNetwork(n Network) (Counts, int, error) {
	if err := n.check(); err != nil {
		return Counts{}, 0, err
	}
	link, changes, err := h.ensureDevice(n)
	if err != nil {
		return Counts{}, changes, err
	}
	idx := link.Attrs().Index
	steps := []func(int, Network) (int, error){h.syncAddrs, h.syncFDB, h.syncNeighbours, h.syncRoutes}
	var errs []error
	for _, step := range steps {
		c, err := step(idx, n)
		changes += c
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return Counts{}, changes, err
	}
	return Counts{Routes: len(n.Remotes), Neighbours: len(n.Remotes), FDB: len(fdbOf(n))}, changes, nil
}

func (n Network) check() error {
	switch {
	case n.Device == "" || len(n.Device) > unix.IFNAMSIZ-1:
		return fmt.Errorf("device name %q: use 1 to 15 bytes", n.Device)
	case n.VNI < 1 || n.VNI > 1<<24-1:
		return fmt.Errorf("VNI %d out of range", n.VNI)
	case !n.Local.IsValid():
		return fmt.Errorf("no underlay address")
	case len(n.MAC) != 6:
		return fmt.Errorf("VTEP MAC %q is not an Ethernet address", n.MAC)
	case n.MTU < 68:
		return fmt.Errorf("MTU %d too small", n.MTU)
	}
	return nil
}

// ensureDevice makes the device as n wants it. What the kernel cannot
// change on a live VXLAN device (VNI, addresses, port, parent, learning,
// MAC) is mended by making the device again; the MTU is set in place.
func (h *Handle) ensureDevice(n Network) (netlink.Link, int, error) {
	changes := 0
	cur, err := h.nl.LinkByName(n.Device)
	switch {
	case err != nil && !isNotFound(err):
		return nil, 0, fmt.Errorf("look up device: %w", err)
	case err == nil && !ours(cur) && !(cur.Type() == "vxlan" && sameDevice(cur, n, false)):
		return nil, 0, fmt.Errorf("device %s exists and is %w (no %q alias): remove or rename it", n.Device, ErrNotOurs, Alias)
	case err == nil && !ours(cur):
		// Made by circuit, which stopped before it set the alias: the
		// VTEP MAC, which the agent derives from the node and VNI, says so.
		if err := h.setAlias(cur, n); err != nil {
			return nil, 0, err
		}
		changes++
	case err == nil && !sameDevice(cur, n, true):
		if err := h.nl.LinkDel(cur); err != nil && !isNotFound(err) {
			return nil, 0, fmt.Errorf("delete device to make it again: %w", err)
		}
		changes++
		cur = nil
	case err != nil:
		cur = nil
	}
	if cur == nil {
		vx := &netlink.Vxlan{
			LinkAttrs: netlink.LinkAttrs{Name: n.Device, MTU: n.MTU, HardwareAddr: n.MAC},
			VxlanId:   n.VNI, VtepDevIndex: n.Parent, SrcAddr: n.Local.AsSlice(),
			Port: Port, Learning: false,
		}
		if err := h.nl.LinkAdd(vx); err != nil {
			return nil, changes, fmt.Errorf("add device: %w", err)
		}
		changes++
		if cur, err = h.nl.LinkByName(n.Device); err != nil {
			return nil, changes, fmt.Errorf("look up new device: %w", err)
		}
		// The kernel ignores an alias given with the new link.
		if err := h.setAlias(cur, n); err != nil {
			_ = h.nl.LinkDel(cur)
			return nil, changes, err
		}
	}
	if cur.Attrs().MTU != n.MTU {
		if err := h.nl.LinkSetMTU(cur, n.MTU); err != nil {
			return nil, changes, fmt.Errorf("set MTU %d: %w", n.MTU, err)
		}
		changes++
	}
	if cur.Attrs().Flags&net.FlagUp == 0 {
		if err := h.nl.LinkSetUp(cur); err != nil {
			return nil, changes, fmt.Errorf("set up: %w", err)
		}
		changes++
	}
	return cur, changes, nil
}

func (h *Handle) setAlias(l netlink.Link, n Network) error {
	if err := h.nl.LinkSetAlias(l, alias(n)); err != nil {
		return fmt.Errorf("mark device %s as circuit's: %w", n.Device, err)
	}
	return nil
}

func alias(n Network) string { return Alias + " " + n.Label }

// sameDevice reports whether cur is the VXLAN device n describes, but for
// its MTU (and its alias, unless withAlias).
func sameDevice(cur netlink.Link, n Network, withAlias bool) bool {
	vx, ok := cur.(*netlink.Vxlan)
	if !ok {
		return false
	}
	src, _ := netip.AddrFromSlice(vx.SrcAddr)
	return vx.VxlanId == n.VNI && src.Unmap() == n.Local.Unmap() && vx.Port == Port &&
		vx.VtepDevIndex == n.Parent && !vx.Learning && vx.Group == nil &&
		vx.Attrs().HardwareAddr.String() == n.MAC.String() &&
		(!withAlias || vx.Attrs().Alias == alias(n))
}

// syncAddrs keeps on the device exactly n's addresses (each a host
// prefix), leaving the link-local ones the kernel makes.
func (h *Handle) syncAddrs(idx int, n Network) (int, error) {
	link := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: idx}}
	have, err := dump(func() ([]netlink.Addr, error) { return h.nl.AddrList(link, netlink.FAMILY_ALL) })
	if err != nil {
		return 0, fmt.Errorf("list addresses: %w", err)
	}
	want := map[netip.Addr]bool{}
	for _, a := range n.Addrs {
		want[a.Unmap()] = true
	}
	changes := 0
	var errs []error
	for _, a := range have {
		ip, _ := netip.AddrFromSlice(a.IP)
		ip = ip.Unmap()
		if ip.IsLinkLocalUnicast() {
			continue
		}
		if ones, bits := a.Mask.Size(); want[ip] && ones == bits {
			delete(want, ip)
			continue
		}
		if err := h.nl.AddrDel(link, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			errs = append(errs, fmt.Errorf("remove address %s: %w", a.IPNet, err))
			continue
		}
		changes++
	}
	for _, ip := range sortedAddrs(want) {
		a := &netlink.Addr{IPNet: hostNet(ip)}
		if ip.Is6() {
			a.Flags = unix.IFA_F_NODAD // no duplicate detection to wait for: the address is the node's alone
		}
		if err := h.nl.AddrAdd(link, a); err != nil && !errors.Is(err, unix.EEXIST) {
			errs = append(errs, fmt.Errorf("add address %s: %w", ip, err))
			continue
		}
		changes++
	}
	return changes, errors.Join(errs...)
}

// syncRoutes keeps on the device, among the routes with circuit's
// protocol, exactly one per remote block: via its network address, onlink.
func (h *Handle) syncRoutes(idx int, n Network) (int, error) {
	have, err := dump(func() ([]netlink.Route, error) {
		return h.nl.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: idx, Protocol: RouteProtocol},
			netlink.RT_FILTER_OIF|netlink.RT_FILTER_PROTOCOL)
	})
	if err != nil {
		return 0, fmt.Errorf("list routes: %w", err)
	}
	want := map[netip.Prefix]netip.Addr{}
	for _, r := range n.Remotes {
		want[r.Block.Masked()] = r.Block.Masked().Addr()
	}
	changes := 0
	var errs []error
	for _, r := range have {
		dst := prefixOf(r.Dst)
		gw, _ := netip.AddrFromSlice(r.Gw)
		if g, ok := want[dst]; ok && g == gw.Unmap() && r.Flags&int(netlink.FLAG_ONLINK) != 0 && len(r.MultiPath) == 0 {
			delete(want, dst)
			continue
		}
		if err := h.nl.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("remove route %s: %w", dst, err))
			continue
		}
		changes++
	}
	for _, dst := range sortedPrefixes(want) {
		r := &netlink.Route{
			LinkIndex: idx, Dst: ipNet(dst), Gw: want[dst].AsSlice(),
			Flags: int(netlink.FLAG_ONLINK), Protocol: RouteProtocol, Scope: netlink.SCOPE_UNIVERSE,
		}
		if err := h.nl.RouteReplace(r); err != nil {
			errs = append(errs, fmt.Errorf("add route %s via %s: %w", dst, want[dst], err))
			continue
		}
		changes++
	}
	return changes, errors.Join(errs...)
}

// syncNeighbours keeps on the device exactly one permanent neighbour entry
// per remote block: its network address -> the holder's VTEP MAC. Entries
// the kernel resolved itself (not permanent) are left to age out.
func (h *Handle) syncNeighbours(idx int, n Network) (int, error) {
	want := map[netip.Addr]string{}
	for _, r := range n.Remotes {
		want[r.Block.Masked().Addr()] = r.MAC.String()
	}
	changes := 0
	var errs []error
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		have, err := dump(func() ([]netlink.Neigh, error) { return h.nl.NeighList(idx, fam) })
		if err != nil {
			return changes, fmt.Errorf("list neighbours: %w", err)
		}
		for _, e := range have {
			if e.State&netlink.NUD_PERMANENT == 0 {
				continue
			}
			ip, _ := netip.AddrFromSlice(e.IP)
			ip = ip.Unmap()
			if mac, ok := want[ip]; ok {
				if mac == e.HardwareAddr.String() {
					delete(want, ip)
				}
				continue // a wrong MAC is replaced below
			}
			if err := h.nl.NeighDel(&e); err != nil && !isNotFound(err) {
				errs = append(errs, fmt.Errorf("remove neighbour %s: %w", ip, err))
				continue
			}
			changes++
		}
	}
	for _, ip := range sortedAddrs(want) {
		mac, _ := net.ParseMAC(want[ip])
		e := &netlink.Neigh{LinkIndex: idx, State: netlink.NUD_PERMANENT, Type: unix.RTN_UNICAST, IP: ip.AsSlice(), HardwareAddr: mac}
		if err := h.nl.NeighSet(e); err != nil {
			errs = append(errs, fmt.Errorf("set neighbour %s -> %s: %w", ip, mac, err))
			continue
		}
		changes++
	}
	return changes, errors.Join(errs...)
}

// fdbOf is n's FDB: each remote VTEP MAC once, with its underlay address.
func fdbOf(n Network) map[string]netip.Addr {
	out := map[string]netip.Addr{}
	for _, r := range n.Remotes {
		out[r.MAC.String()] = r.Underlay.Unmap()
	}
	return out
}

// syncFDB keeps on the device exactly one permanent FDB entry per remote
// VTEP: its MAC -> its node's underlay address.
func (h *Handle) syncFDB(idx int, n Network) (int, error) {
	want := fdbOf(n)
	have, err := dump(func() ([]netlink.Neigh, error) { return h.nl.NeighList(idx, unix.AF_BRIDGE) })
	if err != nil {
		return 0, fmt.Errorf("list FDB: %w", err)
	}
	changes := 0
	var errs []error
	for _, e := range have {
		if e.State&netlink.NUD_PERMANENT == 0 || e.LinkIndex != idx {
			continue
		}
		mac := e.HardwareAddr.String()
		dst, _ := netip.AddrFromSlice(e.IP)
		if u, ok := want[mac]; ok && u == dst.Unmap() {
			delete(want, mac)
			continue
		}
		if err := h.nl.NeighDel(&e); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("remove FDB entry %s: %w", mac, err))
			continue
		}
		changes++
	}
	for _, mac := range slices.Sorted(maps.Keys(want)) {
		hw, _ := net.ParseMAC(mac)
		e := &netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF, State: netlink.NUD_PERMANENT,
			IP: want[mac].AsSlice(), HardwareAddr: hw}
		if err := h.nl.NeighSet(e); err != nil {
			errs = append(errs, fmt.Errorf("set FDB entry %s -> %s: %w", mac, want[mac], err))
			continue
		}
		changes++
	}
	return changes, errors.Join(errs...)
}
