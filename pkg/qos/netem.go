package qos

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// netemSeen caches a successful probe: a kernel does not lose a qdisc kind
// it once had. A failed probe is not cached, as the module may be loaded.
var netemSeen atomic.Bool

// NetemSupported reports whether the kernel has the netem qdisc, which
// delay, jitter and loss need. It returns nil if so, an error wrapping
// api.ErrUnsupported if not, or another error if it could not tell.
// It probes on a throwaway device it creates and deletes in the netns at
// nsPath, so it changes nothing a caller can see.
func NetemSupported(nsPath string) error {
	h, err := openNetns(nsPath)
	if err != nil {
		return fmt.Errorf("probe for netem: %w", err)
	}
	defer h.Close()
	return netemSupported(h)
}

func netemSupported(h *netlink.Handle) error {
	if netemSeen.Load() {
		return nil
	}
	err := probeNetem(h)
	if err == nil {
		netemSeen.Store(true)
	}
	return err
}

// probeDevices are throwaway devices to try a netem qdisc on: IFB, and veth
// for kernels built without IFB.
var probeDevices = []func(name string) netlink.Link{
	func(name string) netlink.Link {
		return &netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: name, TxQLen: -1}}
	},
	func(name string) netlink.Link {
		return &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, TxQLen: -1}, PeerName: name + "p"}
	},
}

// probeNetem adds a netem qdisc to a fresh device and deletes the device.
func probeNetem(h *netlink.Handle) error {
	var lastErr error
	for _, mk := range probeDevices {
		link := mk(probeName())
		if err := h.LinkAdd(link); err != nil {
			lastErr = err
			if errors.Is(err, unix.EOPNOTSUPP) {
				continue // no such device kind: try the next
			}
			return fmt.Errorf("probe for netem: create %s: %w", link.Type(), err)
		}
		err := tryNetem(h, link.Attrs().Name)
		if derr := h.LinkDel(link); derr != nil && !isNotFound(derr) {
			return fmt.Errorf("probe for netem: delete probe device %s: %w", link.Attrs().Name, derr)
		}
		return err
	}
	return fmt.Errorf("probe for netem: no device to probe on: %w", lastErr)
}

func tryNetem(h *netlink.Handle, name string) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("probe for netem: %w", err)
	}
	q := netemQdisc(l.Attrs().Index, netlink.HANDLE_ROOT, netemHandle, Policy{Delay: time.Millisecond})
	err = h.QdiscAdd(q)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.ENOENT): // "Specified qdisc kind is unknown"
		return ErrNoNetem
	default:
		return fmt.Errorf("probe for netem: %w", err)
	}
}

// probeName is unique enough for a device that lives a few milliseconds.
func probeName() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return "cprobe" + hex.EncodeToString(b)
}

// netemQdisc builds netem with the policy's delay, jitter and loss.
func netemQdisc(link int, parent, handle uint32, p Policy) *netlink.Netem {
	return netlink.NewNetem(
		netlink.QdiscAttrs{LinkIndex: link, Parent: parent, Handle: handle},
		netlink.NetemQdiscAttrs{
			Latency: uint32(p.Delay / time.Microsecond),
			Jitter:  uint32(p.Jitter / time.Microsecond),
			Loss:    float32(p.Loss),
		})
}

// netemToPolicy reads the kernel's netem parameters back.
func netemToPolicy(n *netlink.Netem, p *Policy) {
	us := func(t uint32) time.Duration {
		return time.Duration(math.Round(float64(t)/netlink.TickInUsec())) * time.Microsecond
	}
	p.Delay, p.Jitter = us(n.Latency), us(n.Jitter)
	if n.Loss != 0 {
		p.Loss = float64(n.Loss) / math.MaxUint32 * 100
	}
}
