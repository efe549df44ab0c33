package netns

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/circuit-cni/circuit/pkg/testutil"
)

func TestPinOutlivesProcess(t *testing.T) {
	testutil.RequireRoot(t)
	s := testutil.NewSleeper(t)
	pin := filepath.Join(t.TempDir(), "pins", "one")
	if err := Pin(ProcPath(s.PID), pin); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Unpin(pin) })
	if !IsNetns(pin) || !Same(pin, ProcPath(s.PID)) || Same(pin, ProcPath(os.Getpid())) {
		t.Fatal("pin does not name the sleeper's namespace")
	}
	// Something made in the namespace stays reachable through the pin
	// after its process died: this is what lets DEL clean up.
	if err := Do(pin, func() error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth1"})
	}); err != nil {
		t.Fatal(err)
	}
	s.Kill()
	links, err := LinkNames(pin)
	if name := FreeIfName(links); err != nil || name != "eth2" {
		t.Fatalf("FreeIfName(LinkNames) after death = %q, %v; want eth2", name, err)
	}
	if err := Unpin(pin); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(pin); !os.IsNotExist(err) || IsNetns(pin) {
		t.Fatalf("pin still there: %v", err)
	}
	if err := Unpin(pin); err != nil {
		t.Fatalf("second unpin: %v", err)
	}
}

func TestDoLeavesThreadsHome(t *testing.T) {
	testutil.RequireRoot(t)
	s := testutil.NewSleeper(t)
	home, _ := os.Readlink("/proc/thread-self/ns/net")
	for range 50 {
		var inside string
		Do(ProcPath(s.PID), func() error {
			inside, _ = os.Readlink("/proc/thread-self/ns/net")
			return nil
		})
		if inside == home {
			t.Fatal("Do ran fn in the caller's namespace")
		}
	}
	// Every thread of this process is back home.
	tasks, _ := filepath.Glob("/proc/self/task/*/ns/net")
	for _, task := range tasks {
		if ns, _ := os.Readlink(task); ns != home {
			t.Fatalf("thread %s left in %s", task, ns)
		}
	}
	if err := Do("/nonexistent", func() error { return nil }); err == nil {
		t.Fatal("Do into a missing namespace succeeded")
	}
}

func TestPlainFileIsNotNetns(t *testing.T) {
	f := filepath.Join(t.TempDir(), "stale")
	os.WriteFile(f, nil, 0o600) // what a pin is after a reboot
	if IsNetns(f) {
		t.Fatal("a plain file counts as a namespace")
	}
}

// An IPv6 address on a new interface is tentative for about a second: the
// wait ends when the kernel would use it, and says which one it waited on.
func TestWaitSettled(t *testing.T) {
	testutil.RequireRoot(t)
	s := testutil.NewSleeper(t)
	path := ProcPath(s.PID)
	err := Do(path, func() error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "a0"}, PeerName: "b0"}); err != nil {
			return err
		}
		for _, name := range []string{"a0", "b0"} {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
		}
		l, _ := netlink.LinkByName("a0")
		return netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP("fd00:77::1"), Mask: net.CIDRMask(64, 128)}})
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := WaitSettled(path, []string{"fd00:77::1"}, 0); err == nil || !strings.Contains(err.Error(), "fd00:77::1") {
		t.Fatalf("a new address did not count as tentative: %v", err)
	}
	if err := WaitSettled(path, []string{"fd00:77::1", "fd00:77::99", "10.1.1.1"}, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	h, _ := Handle(path)
	defer h.Close()
	addrs, _ := h.AddrList(nil, netlink.FAMILY_V6)
	for _, a := range addrs {
		if a.IP.Equal(net.ParseIP("fd00:77::1")) && a.Flags&unix.IFA_F_TENTATIVE != 0 {
			t.Fatal("WaitSettled returned with the address still tentative")
		}
	}
}
