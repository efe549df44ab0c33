// Package netns pins network namespaces and runs work inside them without
// leaving an OS thread in the wrong namespace.
package netns

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ProcPath is the netns file of a process.
func ProcPath(pid int) string { return "/proc/" + strconv.Itoa(pid) + "/ns/net" }

// Pin bind-mounts the namespace at src onto dst (a new file), so the
// namespace and whatever plugins put in it outlive the container's process
// until Unpin, as container runtimes do.
func Pin(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return fmt.Errorf("pin netns: %w", err)
	}
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o600)
	if err != nil {
		return fmt.Errorf("pin netns: %w", err)
	}
	f.Close()
	if err := unix.Mount(src, dst, "none", unix.MS_BIND, ""); err != nil {
		os.Remove(dst)
		return fmt.Errorf("pin netns %s at %s: %w", src, dst, err)
	}
	return nil
}

// Unpin releases a pin. A missing pin, or one that is no longer mounted
// (after a reboot), is not an error.
func Unpin(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unpin netns %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("unpin netns %s: %w", path, err)
	}
	return nil
}

// IsNetns reports whether path is a live network namespace (a pin that did
// not survive a reboot is a plain empty file).
func IsNetns(path string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false
	}
	return st.Type == unix.NSFS_MAGIC
}

// ID identifies the namespace at path (its nsfs device and inode), which
// no PID or path string does.
func ID(path string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return "", err
	}
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino), nil
}

// Same reports whether two paths name the same namespace.
func Same(a, b string) bool {
	var sa, sb unix.Stat_t
	if unix.Stat(a, &sa) != nil || unix.Stat(b, &sb) != nil {
		return false
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

// Handle returns a netlink handle bound to the namespace at path; no thread
// switches namespace to use it.
func Handle(path string) (*netlink.Handle, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	defer ns.Close()
	// Only the route family: with none named, NewHandleAt opens one socket
	// per family it knows (route, xfrm, netfilter), each by entering ns.
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink in netns %s: %w", path, err)
	}
	return h, nil
}

// Do runs fn inside the namespace at path on a dedicated, locked OS thread.
// If switching back fails, the thread stays locked and dies with its
// goroutine instead of returning to the pool in the wrong namespace.
func Do(path string, fn func() error) error {
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("current netns: %w", err)
			return // thread untouched, but stays locked: harmless
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", path, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("leave netns %s: %w", path, err)
			return // keep the thread locked: it exits with the goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// LinkNames lists the interfaces in the namespace at path.
func LinkNames(path string) ([]string, error) {
	h, err := Handle(path)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	links, err := h.LinkList()
	if errors.Is(err, netlink.ErrDumpInterrupted) {
		links, err = h.LinkList() // changed under the dump: once more
	}
	if err != nil {
		return nil, fmt.Errorf("list links in %s: %w", path, err)
	}
	names := make([]string, 0, len(links))
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	return names, nil
}

// FreeIfName returns the first ethN name not in used.
func FreeIfName(used []string) string {
	for i := 0; ; i++ {
		if n := "eth" + strconv.Itoa(i); !slices.Contains(used, n) {
			return n
		}
	}
}

// LinkInfo reads an interface's MAC and, for a veth, the name of its other
// end (the host interface) in the namespace at hostPath.
func LinkInfo(path, ifname, hostPath string) (mac, hostIf string, err error) {
	h, err := Handle(path)
	if err != nil {
		return "", "", err
	}
	defer h.Close()
	l, err := h.LinkByName(ifname)
	if err != nil {
		return "", "", fmt.Errorf("find %s in %s: %w", ifname, path, err)
	}
	mac = l.Attrs().HardwareAddr.String()
	if _, ok := l.(*netlink.Veth); ok && l.Attrs().ParentIndex > 0 {
		hh, err := Handle(hostPath)
		if err != nil {
			return mac, "", nil
		}
		defer hh.Close()
		if pl, err := hh.LinkByIndex(l.Attrs().ParentIndex); err == nil {
			hostIf = pl.Attrs().Name
		}
	}
	return mac, hostIf, nil
}

// BridgePorts lists the interfaces enslaved to bridge in the namespace at
// path.
func BridgePorts(path, bridge string) ([]string, error) {
	h, err := Handle(path)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	br, err := h.LinkByName(bridge)
	if err != nil {
		return nil, fmt.Errorf("find %s in %s: %w", bridge, path, err)
	}
	links, err := h.LinkList()
	if errors.Is(err, netlink.ErrDumpInterrupted) {
		links, err = h.LinkList()
	}
	if err != nil {
		return nil, fmt.Errorf("list links in %s: %w", path, err)
	}
	var ports []string
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index {
			ports = append(ports, l.Attrs().Name)
		}
	}
	return ports, nil
}

// DeleteLink deletes the interface name in the namespace at path; one
// already gone is not an error.
func DeleteLink(path, name string) error {
	h, err := Handle(path)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("find %s in %s: %w", name, path, err)
	}
	if err := h.LinkDel(l); err != nil {
		return fmt.Errorf("delete %s in %s: %w", name, path, err)
	}
	return nil
}

// WaitSettled waits, at most limit, until none of addrs that are assigned
// in the namespace at path is still tentative (IPv6 duplicate address
// detection, about a second on a new interface): until then the kernel
// neither answers on such an address nor picks it as a source, so a bridge
// the plugin has just made does not yet carry IPv6 traffic to its gateway.
// Addresses not assigned there are no concern of it. It reports the
// addresses still tentative when limit passed.
func WaitSettled(path string, addrs []string, limit time.Duration) error {
	want := map[string]bool{}
	for _, a := range addrs {
		if ip := net.ParseIP(a); ip != nil && ip.To4() == nil {
			want[ip.String()] = true
		}
	}
	if len(want) == 0 {
		return nil
	}
	h, err := Handle(path)
	if err != nil {
		return err
	}
	defer h.Close()
	deadline := time.Now().Add(limit)
	for {
		list, err := h.AddrList(nil, netlink.FAMILY_V6)
		if err != nil {
			return fmt.Errorf("list addresses in %s: %w", path, err)
		}
		var tentative []string
		for _, a := range list {
			if want[a.IP.String()] && a.Flags&unix.IFA_F_TENTATIVE != 0 && a.Flags&unix.IFA_F_DADFAILED == 0 {
				tentative = append(tentative, a.IP.String())
			}
		}
		if len(tentative) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("addresses %v in %s still tentative after %s", tentative, path, limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
