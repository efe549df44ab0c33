package qos

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/circuit-cni/circuit/api"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

func mustApply(t *testing.T, path, dev string, p Policy) {
	t.Helper()
	if err := Apply(path, dev, p); err != nil {
		t.Fatalf("Apply(%+v): %v", p, err)
	}
}

func TestForeignRootQdisc(t *testing.T) {
	p := newPair(t, "qa0", "qb0")
	run(t, "tc", "-n", p.nsA, "qdisc", "add", "dev", p.ifA, "root", "handle", "1:", "htb")
	before := snapshotNS(t, p.nsA)

	for _, dir := range []Direction{"", Egress, Both} {
		err := Apply(p.pathA, p.ifA, Policy{Rate: 5_000_000, Direction: dir})
		if !errors.Is(err, api.ErrInUse) {
			t.Fatalf("Apply %q over a foreign root qdisc: %v, want ErrInUse", dir, err)
		}
		if !strings.Contains(err.Error(), "htb 1:") || !strings.HasPrefix(err.Error(), "apply qos to qa0: ") {
			t.Errorf("error %q should name the foreign qdisc and the interface", err)
		}
		if after := snapshotNS(t, p.nsA); after != before {
			t.Fatalf("refused Apply changed the netns:\nbefore:\n%s\nafter:\n%s", before, after)
		}
	}

	// Ingress shaping does not touch the root qdisc, so it may coexist.
	mustApply(t, p.pathA, p.ifA, Policy{Rate: 5_000_000, Direction: Ingress})
	if q := tcShow(t, p.nsA, "qdisc", "show", "dev", p.ifA); !strings.Contains(q, "qdisc htb 1: root") {
		t.Fatalf("foreign root qdisc gone after ingress Apply:\n%s", q)
	}
	if err := Reset(p.pathA, p.ifA); err != nil {
		t.Fatal(err)
	}
	if after := snapshotNS(t, p.nsA); after != before {
		t.Fatalf("Reset did not leave exactly the foreign setup:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func TestResetKeepsForeignIngress(t *testing.T) {
	p := newPair(t, "qa0", "qb0")
	// A user's clsact with a filter of their own.
	run(t, "tc", "-n", p.nsA, "qdisc", "add", "dev", p.ifA, "clsact")
	run(t, "tc", "-n", p.nsA, "filter", "add", "dev", p.ifA, "ingress", "pref", "10",
		"protocol", "ip", "u32", "match", "ip", "dst", "10.231.250.250/32", "flowid", "1:1")
	before := snapshotNS(t, p.nsA)

	mustApply(t, p.pathA, p.ifA, Policy{Rate: 5_000_000, Direction: Ingress})
	f := tcShow(t, p.nsA, "filter", "show", "dev", p.ifA, "ingress")
	if !strings.Contains(f, "pref 10 ") || !strings.Contains(f, "pref 49600 ") || !strings.Contains(f, "cifb-qa0") {
		t.Fatalf("want the user's filter and circuit's redirect side by side:\n%s", f)
	}
	if err := Reset(p.pathA, p.ifA); err != nil {
		t.Fatal(err)
	}
	if after := snapshotNS(t, p.nsA); after != before {
		t.Fatalf("Reset changed the user's ingress setup:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func TestDirectionsAndIdempotence(t *testing.T) {
	p := newPair(t, "qa0", "qb0")
	pristine := snapshotNS(t, p.nsA)
	pol := Policy{Rate: 5_000_000}

	mustApply(t, p.pathA, p.ifA, pol)
	mustApply(t, p.pathA, p.ifA, pol) // the same again: no "file exists"
	once := snapshotNS(t, p.nsA)

	pol.Direction = Ingress
	mustApply(t, p.pathA, p.ifA, pol)
	mustApply(t, p.pathA, p.ifA, pol)
	q := tcShow(t, p.nsA, "qdisc", "show")
	if strings.Contains(q, "dev qa0 root") && strings.Contains(q, "htb c1c0: dev qa0") {
		t.Errorf("egress tree left behind after switching to ingress:\n%s", q)
	}
	if !strings.Contains(q, "qdisc htb c1c0: dev cifb-qa0 root") || !strings.Contains(q, "qdisc ingress ffff: dev qa0") {
		t.Errorf("ingress setup missing:\n%s", q)
	}
	if c := tcShow(t, p.nsA, "class", "show", "dev", "cifb-qa0"); !strings.Contains(c, "rate 5Mbit ceil 5Mbit") {
		t.Errorf("IFB class:\n%s", c)
	}

	pol.Direction = Both
	pol.Rate, pol.Ceiling = 2_000_000, 3_000_000
	mustApply(t, p.pathA, p.ifA, pol)
	for _, dev := range []string{p.ifA, "cifb-qa0"} {
		if c := tcShow(t, p.nsA, "class", "show", "dev", dev); !strings.Contains(c, "rate 2Mbit ceil 3Mbit") {
			t.Errorf("%s class after both:\n%s", dev, c)
		}
	}
	eg, in, err := Stats(p.pathA, p.ifA)
	if err != nil || eg == nil || in == nil {
		t.Errorf("Stats with both directions = %v, %v, %v", eg, in, err)
	}

	pol.Direction = Egress
	pol.Rate, pol.Ceiling = 5_000_000, 0
	mustApply(t, p.pathA, p.ifA, pol)
	if got := snapshotNS(t, p.nsA); got != once {
		t.Errorf("back to egress is not the same as egress first:\nwant:\n%s\ngot:\n%s", once, got)
	}

	// A zero policy is a Reset.
	mustApply(t, p.pathA, p.ifA, Policy{})
	if got := snapshotNS(t, p.nsA); got != pristine {
		t.Errorf("zero policy left state behind:\nwant:\n%s\ngot:\n%s", pristine, got)
	}
	for i := 0; i < 2; i++ {
		if err := Reset(p.pathA, p.ifA); err != nil {
			t.Errorf("Reset #%d: %v", i, err)
		}
	}
	assertClean(t, p.nsA)
}

func TestMissingThings(t *testing.T) {
	p := newPair(t, "qa0", "qb0")
	pol := Policy{Rate: 1_000_000}

	if err := Apply(p.pathA, "nope0", pol); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("Apply to a missing interface: %v, want ErrNotFound", err)
	}
	if err := Apply("/var/run/netns/circuit-no-such-ns", p.ifA, pol); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("Apply in a missing netns: %v, want ErrNotFound", err)
	}
	if _, _, err := Stats(p.pathA, "nope0"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("Stats of a missing interface: %v, want ErrNotFound", err)
	}
	if err := Reset("/var/run/netns/circuit-no-such-ns", p.ifA); err != nil {
		t.Errorf("Reset in a missing netns: %v", err)
	}
	stale := filepath.Join(t.TempDir(), "stale-pin") // a pin whose netns is gone
	if err := os.WriteFile(stale, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Reset(stale, p.ifA); err != nil {
		t.Errorf("Reset through a stale pin: %v", err)
	}
	if err := Apply(stale, p.ifA, pol); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("Apply through a stale pin: %v, want ErrNotFound", err)
	}
	if err := Reset(p.pathA, "nope0"); err != nil {
		t.Errorf("Reset of a missing interface: %v", err)
	}
	if eg, in, err := Stats(p.pathA, p.ifA); eg != nil || in != nil || err != nil {
		t.Errorf("Stats of an unshaped interface = %v, %v, %v; want nil, nil, nil", eg, in, err)
	}
	if err := Apply(p.pathA, p.ifA, Policy{Rate: 1_000_000, Direction: "sideways"}); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("bad direction: %v, want ErrInvalid", err)
	}

	// An interface that vanished leaves its IFB behind; Reset still removes it.
	mustApply(t, p.pathA, p.ifA, Policy{Rate: 1_000_000, Direction: Ingress})
	run(t, "ip", "-n", p.nsA, "link", "del", p.ifA)
	if err := Reset(p.pathA, p.ifA); err != nil {
		t.Fatal(err)
	}
	assertClean(t, p.nsA)

	// The same works through /proc/PID/ns/net paths and a long name.
	q := newPair(t, "a-very-long-if0", "qb1")
	path := "/proc/self/task/" + strconv.Itoa(lockedTid(t, q.pathA)) + "/ns/net"
	mustApply(t, path, q.ifA, Policy{Rate: 1_000_000, Direction: Both})
	if l := run(t, "ip", "-n", q.nsA, "-o", "link", "show", "type", "ifb"); !strings.Contains(l, ifbName(q.ifA)) {
		t.Errorf("no %s for %s:\n%s", ifbName(q.ifA), q.ifA, l)
	}
	if err := Reset(path, q.ifA); err != nil {
		t.Fatal(err)
	}
	assertClean(t, q.nsA)
}

// lockedTid parks a thread inside the netns at path for the test's life
// and returns its thread id, so /proc/self/task/TID/ns/net names it.
func lockedTid(t *testing.T, path string) int {
	t.Helper()
	tid, done := make(chan int), make(chan struct{})
	t.Cleanup(func() { close(done) })
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with us
		ns, err := netns.GetFromPath(path)
		if err != nil {
			tid <- -1
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			tid <- -1
			return
		}
		tid <- unix.Gettid()
		<-done
	}()
	id := <-tid
	if id < 0 {
		t.Fatal("cannot park a thread in the test netns")
	}
	return id
}

// TestNoThreadLeftInNetns applies concurrently and then checks that no
// thread the scheduler hands out sits in a container netns.
func TestNoThreadLeftInNetns(t *testing.T) {
	p := newPair(t, "qa0", "qb0")
	host, err := netns.GetFromPath("/proc/self/ns/net") // the main thread's

	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_ = Apply(p.pathA, p.ifA, Policy{Rate: uint64(1+i%3) * 1_000_000})
			_, _, _ = Stats(p.pathA, p.ifA)
		}(i)
	}
	wg.Wait()
	for i := 0; i < 32; i++ {
		runtime.Gosched()
		func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			cur, err := netns.Get()
			if err != nil {
				t.Fatal(err)
			}
			defer cur.Close()
			if !cur.Equal(host) {
				t.Fatalf("a thread is in netns %s, not the host's", cur)
			}
		}()
		time.Sleep(time.Millisecond)
	}
}

func TestRollback(t *testing.T) {
	p := newPair(t, "qa0", "qb0")
	mustApply(t, p.pathA, p.ifA, Policy{Rate: 5_000_000})
	before := snapshotNS(t, p.nsA)
	boom := errors.New("injected failure")
	for _, step := range []string{"egress", "ingress"} {
		stepHook = func(s string) error {
			if s == step {
				return boom
			}
			return nil
		}
		err := Apply(p.pathA, p.ifA, Policy{Rate: 1_000_000, Ceiling: 2_000_000, Direction: Both})
		stepHook = func(string) error { return nil }
		if !errors.Is(err, boom) {
			t.Fatalf("failing after %s: %v, want the injected error", step, err)
		}
		if after := snapshotNS(t, p.nsA); after != before {
			t.Fatalf("failure after %s was not rolled back:\nbefore:\n%s\nafter:\n%s", step, before, after)
		}
	}
}
