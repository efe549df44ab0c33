package qos

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/circuit-cni/circuit/api"
	"github.com/vishvananda/netlink"
)

// Circuit's traffic-control identities (see the package comment).
const (
	rootMajor  = 0xc1c0
	netemMajor = 0xc1c1
	capMinor   = 0x1
	leafMinor  = 0x10
	filterPrio = 0xc1c0
)

var (
	rootHandle  = netlink.MakeHandle(rootMajor, 0)
	capClass    = netlink.MakeHandle(rootMajor, capMinor)
	leafClass   = netlink.MakeHandle(rootMajor, leafMinor)
	netemHandle = netlink.MakeHandle(netemMajor, 0)
)

// rootQdisc returns link's root qdisc, or nil while the kernel's default
// (noqueue, pfifo_fast, mq, ... all with handle 0:) is in place.
func rootQdisc(h *netlink.Handle, link netlink.Link) (netlink.Qdisc, error) {
	qs, err := dump(func() ([]netlink.Qdisc, error) { return h.QdiscList(link) })
	if err != nil {
		return nil, fmt.Errorf("list qdiscs: %w", err)
	}
	for _, q := range qs {
		if a := q.Attrs(); a.Parent == netlink.HANDLE_ROOT && a.LinkIndex == link.Attrs().Index {
			if a.Handle == 0 {
				return nil, nil
			}
			return q, nil
		}
	}
	return nil, nil
}

func isOurs(q netlink.Qdisc) bool { return q != nil && q.Attrs().Handle == rootHandle }

// checkRoot refuses a link whose root qdisc somebody else installed; else
// it returns circuit's root qdisc, nil if the kernel's default is in place.
func checkRoot(h *netlink.Handle, link netlink.Link) (netlink.Qdisc, error) {
	q, err := rootQdisc(h, link)
	if err != nil {
		return nil, err
	}
	if q != nil && !isOurs(q) {
		return nil, &kindError{
			msg: fmt.Sprintf("%s already has a root qdisc %s %s that circuit did not install; remove it first",
				link.Attrs().Name, q.Type(), strings.TrimSuffix(netlink.HandleStr(q.Attrs().Handle), ":0")+":"),
			kind: api.ErrInUse,
		}
	}
	return q, nil
}

// installTree makes link's root tree match p. Objects change in place
// (replace semantics), so traffic is not briefly unshaped; only a switch
// between netem-only and HTB deletes the old root first.
func installTree(h *netlink.Handle, link netlink.Link, p Policy) error {
	root, err := checkRoot(h, link)
	if err != nil {
		return err
	}
	wantHTB := p.Rate > 0
	if root != nil && (root.Type() == "htb") != wantHTB {
		// A qdisc cannot change kind in place.
		if err := h.QdiscDel(root); err != nil && !isNotFound(err) {
			return fmt.Errorf("delete old root qdisc: %w", err)
		}
		root = nil
	}
	idx := link.Attrs().Index
	if !wantHTB {
		if err := h.QdiscReplace(netemQdisc(idx, netlink.HANDLE_ROOT, rootHandle, p)); err != nil {
			return fmt.Errorf("netem root qdisc: %w", err)
		}
		return nil
	}
	if root == nil {
		htb := netlink.NewHtb(netlink.QdiscAttrs{LinkIndex: idx, Handle: rootHandle, Parent: netlink.HANDLE_ROOT})
		htb.Defcls = leafMinor
		if err := h.QdiscAdd(htb); err != nil {
			return fmt.Errorf("htb root qdisc: %w", err)
		}
	}
	// A class straight under the root cannot borrow, so the leaf hangs off a
	// class fixed at the ceiling and borrows from it up to Ceiling.
	mtu := link.Attrs().MTU
	if err := h.ClassReplace(htbClass(idx, rootHandle, capClass, p.Ceiling, p.Ceiling, mtu)); err != nil {
		return fmt.Errorf("htb class %s: %w", netlink.HandleStr(capClass), err)
	}
	if err := h.ClassReplace(htbClass(idx, capClass, leafClass, p.Rate, p.Ceiling, mtu)); err != nil {
		return fmt.Errorf("htb class %s: %w", netlink.HandleStr(leafClass), err)
	}
	if p.NeedsNetem() {
		if err := h.QdiscReplace(netemQdisc(idx, leafClass, netemHandle, p)); err != nil {
			return fmt.Errorf("netem qdisc: %w", err)
		}
		return nil
	}
	child, err := qdiscByHandle(h, link, netemHandle)
	if err != nil {
		return err
	}
	if child != nil {
		// HTB puts its default pfifo back in the leaf.
		if err := h.QdiscDel(child); err != nil && !isNotFound(err) {
			return fmt.Errorf("delete netem qdisc: %w", err)
		}
	}
	return nil
}

// removeTree deletes circuit's root qdisc (and with it everything below).
func removeTree(h *netlink.Handle, link netlink.Link) error {
	root, err := rootQdisc(h, link)
	if err != nil || !isOurs(root) {
		return err
	}
	if err := h.QdiscDel(root); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete root qdisc %s: %w", netlink.HandleStr(rootHandle), err)
	}
	return nil
}

// readTree reads circuit's tree on link back into a policy, nil if none.
// Apply uses it to put a previous policy back after a failure.
func readTree(h *netlink.Handle, link netlink.Link) (*Policy, error) {
	root, err := rootQdisc(h, link)
	if err != nil || !isOurs(root) {
		return nil, err
	}
	p := &Policy{}
	if n, ok := root.(*netlink.Netem); ok {
		netemToPolicy(n, p)
		return p, nil
	}
	classes, err := dump(func() ([]netlink.Class, error) { return h.ClassList(link, 0) })
	if err != nil {
		return nil, fmt.Errorf("list classes: %w", err)
	}
	for _, c := range classes {
		if hc, ok := c.(*netlink.HtbClass); ok && hc.Handle == leafClass {
			p.Rate, p.Ceiling = hc.Rate*8, hc.Ceil*8
		}
	}
	child, err := qdiscByHandle(h, link, netemHandle)
	if err != nil {
		return nil, err
	}
	if n, ok := child.(*netlink.Netem); ok {
		netemToPolicy(n, p)
	}
	return p, nil
}

func qdiscByHandle(h *netlink.Handle, link netlink.Link, handle uint32) (netlink.Qdisc, error) {
	qs, err := dump(func() ([]netlink.Qdisc, error) { return h.QdiscList(link) })
	if err != nil {
		return nil, fmt.Errorf("list qdiscs: %w", err)
	}
	for _, q := range qs {
		if q.Attrs().Handle == handle && q.Attrs().LinkIndex == link.Attrs().Index {
			return q, nil
		}
	}
	return nil, nil
}

// counters reads circuit's root qdisc on link, nil if it has none.
func counters(h *netlink.Handle, link netlink.Link) (*Counters, error) {
	root, err := rootQdisc(h, link)
	if err != nil || !isOurs(root) {
		return nil, err
	}
	c := &Counters{}
	if s := root.Attrs().Statistics; s != nil {
		if s.Basic != nil {
			c.Bytes, c.Packets = s.Basic.Bytes, uint64(s.Basic.Packets)
		}
		if s.Queue != nil {
			c.Drops, c.Overlimits = uint64(s.Queue.Drops), uint64(s.Queue.Overlimits)
		}
	}
	return c, nil
}

// burstTime is how long a class may send at full speed after idling.
// Short enough that a shaped flow starts without a visible overshoot,
// long enough that a fast class is not throttled packet by packet.
const burstTime = time.Millisecond

// burstBytes is rate×1ms, but at least one full frame (MTU plus room for
// link-layer headers) so a single packet never exceeds the bucket.
func burstBytes(rateBytes uint64, mtu int) uint64 {
	if mtu <= 0 {
		mtu = 1500
	}
	b := rateBytes * uint64(burstTime) / uint64(time.Second)
	return max(b, uint64(mtu)+64)
}

// htbClass builds a class with rate and ceil in bits per second. Buffers
// are given to the kernel as the time the burst takes at the rate, in
// psched ticks.
func htbClass(link int, parent, handle uint32, rate, ceil uint64, mtu int) *netlink.HtbClass {
	rb, cb := htbBytes(rate), htbBytes(ceil)
	// Quantum only splits spare bandwidth between siblings; set it so the
	// kernel does not log "quantum of class is big/small" for extreme rates.
	quantum := min(max(rb/10, uint64(max(mtu, 1500))+64), 200000)
	return &netlink.HtbClass{
		ClassAttrs: netlink.ClassAttrs{LinkIndex: link, Parent: parent, Handle: handle},
		Rate:       rb,
		Ceil:       cb,
		Buffer:     ticks(burstBytes(rb, mtu), rb),
		Cbuffer:    ticks(burstBytes(cb, mtu), cb),
		Quantum:    uint32(quantum),
	}
}

// htbBytes converts bits to bytes per second for HTB. The kernel rejects a
// class whose legacy 32-bit rate is zero even when the 64-bit rate is set,
// so a rate that is an exact multiple of 2^32 bytes is nudged by 1 B/s.
func htbBytes(bits uint64) uint64 {
	b := max(bits/8, 1)
	if b>>32 != 0 && uint32(b) == 0 {
		b++
	}
	return b
}

// ticks is the time size bytes take at rate bytes/s, in psched ticks.
func ticks(size, rate uint64) uint32 {
	us := float64(size) / float64(rate) * 1e6
	t := us * netlink.TickInUsec()
	if t > math.MaxUint32 {
		return math.MaxUint32
	}
	return uint32(max(t, 1))
}
