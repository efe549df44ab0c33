package qos

import (
	"errors"
	"fmt"
	"io/fs"
	"runtime"
	"time"

	"github.com/circuit-cni/circuit/api"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netlinkTimeout keeps a wedged kernel answer from hanging a caller forever.
const netlinkTimeout = 10 * time.Second

// openNetns returns a route-netlink handle whose socket lives in the netns
// at path. Every later call on it acts in that netns without touching any
// OS thread's namespace.
func openNetns(path string) (*netlink.Handle, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, api.Errorf(api.ErrNotFound, "netns %s does not exist", path)
		}
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	defer ns.Close()
	// A pin whose netns is gone is a plain file; setns would reject it.
	var fs unix.Statfs_t
	if err := unix.Fstatfs(int(ns), &fs); err != nil || fs.Type != unix.NSFS_MAGIC {
		return nil, api.Errorf(api.ErrNotFound, "netns %s is not a network namespace (stale pin?)", path)
	}

	// NewHandleAt creates its socket by switching the calling thread into
	// ns and back. Do that on a fresh goroutine that keeps its thread
	// locked: the thread then exits with the goroutine, so a failed switch
	// back can never leak a thread in the wrong netns to the scheduler.
	type result struct {
		h   *netlink.Handle
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
		ch <- result{h, err}
	}()
	r := <-ch
	if r.err != nil {
		return nil, fmt.Errorf("netlink socket in netns %s: %w", path, r.err)
	}
	if err := r.h.SetSocketTimeout(netlinkTimeout); err != nil {
		r.h.Close()
		return nil, fmt.Errorf("netlink socket in netns %s: %w", path, err)
	}
	return r.h, nil
}

// linkByName finds ifname, mapping "no such device" to ErrNotFound.
func linkByName(h *netlink.Handle, ifname string) (netlink.Link, error) {
	l, err := h.LinkByName(ifname)
	if err != nil {
		if isNotFound(err) {
			return nil, api.Errorf(api.ErrNotFound, "interface %s does not exist", ifname)
		}
		return nil, fmt.Errorf("interface %s: %w", ifname, err)
	}
	return l, nil
}

func isNotFound(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT)
}

// dump retries a netlink dump that raced with a change; the kernel then
// flags the result as possibly inconsistent.
func dump[T any](f func() ([]T, error)) ([]T, error) {
	for i := 0; ; i++ {
		v, err := f()
		if errors.Is(err, netlink.ErrDumpInterrupted) && i < 10 {
			continue
		}
		return v, err
	}
}
