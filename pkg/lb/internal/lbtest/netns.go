// Package lbtest builds throwaway network namespaces for the load balancer
// tests, with netlink only (no ip, no runc), so the tests run on a bare VM
// with nothing but the test binary. Servers and clients are sockets of the
// test process created inside a namespace: a socket keeps its namespace.
package lbtest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Root skips the test unless it runs as root.
func Root(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
}

// NS is a named network namespace that the test owns.
type NS struct {
	Name string
	Path string // /var/run/netns/NAME, for lb.Open
	h    netns.NsHandle
	nl   *netlink.Handle
}

var runID = func() string {
	b := make([]byte, 3)
	rand.Read(b)
	return hex.EncodeToString(b)
}()

// NewNS creates a namespace named circ-<random>-<role> with lo up and
// removes it when the test ends. Names are unique, so tests of several
// packages can run at once.
func NewNS(t testing.TB, role string) *NS {
	t.Helper()
	b := make([]byte, 3)
	rand.Read(b)
	name := fmt.Sprintf("circ-%s%s-%s", runID, hex.EncodeToString(b), role)
	var h netns.NsHandle
	err := onThread(func() error {
		orig, err := netns.Get()
		if err != nil {
			return err
		}
		defer orig.Close()
		h, err = netns.NewNamed(name) // also switches this thread
		if err != nil {
			return err
		}
		return netns.Set(orig)
	})
	if err != nil {
		t.Skipf("cannot create netns %s: %v", name, err)
	}
	n := &NS{Name: name, Path: "/var/run/netns/" + name, h: h}
	t.Cleanup(func() {
		if n.nl != nil {
			n.nl.Close()
		}
		n.h.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
	if n.nl, err = netlink.NewHandleAt(h); err != nil {
		t.Fatalf("netlink handle in %s: %v", name, err)
	}
	// Links made later get link-local addresses usable at once: with
	// duplicate address detection, a namespace's first IPv6 neighbor
	// discovery waits for it (a first request took 2s).
	for _, c := range []string{"all", "default"} {
		n.Sysctl(t, "net/ipv6/conf/"+c+"/accept_dad", "0")
	}
	lo, err := n.nl.LinkByName("lo")
	if err == nil {
		err = n.nl.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatalf("%s: lo up: %v", name, err)
	}
	return n
}

// Netlink returns a netlink handle bound to the namespace.
func (n *NS) Netlink() *netlink.Handle { return n.nl }

// Do runs fn on an OS thread switched into the namespace. Sockets and
// processes fn creates belong to the namespace.
func (n *NS) Do(fn func() error) error {
	var ferr error
	err := onThread(func() error {
		orig, err := netns.Get()
		if err != nil {
			return err
		}
		defer orig.Close()
		if err := netns.Set(n.h); err != nil {
			return fmt.Errorf("enter %s: %w", n.Name, err)
		}
		ferr = fn()
		return netns.Set(orig)
	})
	if err != nil {
		return err
	}
	return ferr
}

// onThread runs fn on a locked thread; if fn fails to restore the
// thread's namespace, the thread is left locked and so discarded.
func onThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		err := fn()
		if err == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// Run runs a command inside the namespace and returns its combined output.
func (n *NS) Run(argv ...string) (string, error) {
	var out []byte
	err := n.Do(func() error {
		var err error
		out, err = exec.Command(argv[0], argv[1:]...).CombinedOutput()
		return err
	})
	return string(out), err
}

// Sysctl writes a value under /proc/sys inside the namespace.
func (n *NS) Sysctl(t testing.TB, path, value string) {
	t.Helper()
	err := n.Do(func() error { return os.WriteFile("/proc/sys/"+path, []byte(value), 0o644) })
	if err != nil {
		t.Fatalf("%s: sysctl %s=%s: %v", n.Name, path, value, err)
	}
}

// Start starts a command inside the namespace; the test kills it at the
// end if still running. Output goes to out.
func (n *NS) Start(t testing.TB, out io.Writer, argv ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := n.Do(cmd.Start); err != nil {
		t.Fatalf("%s: start %v: %v", n.Name, argv, err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd
}
