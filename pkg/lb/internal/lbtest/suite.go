package lbtest

import (
	"net"
	"slices"
	"testing"
	"time"

	"github.com/circuit-cni/circuit/pkg/lb/internal/spec"
)

// Backend is what the shared scenarios below need of a load balancer
// (pkg/lb's Backend, which this package cannot import).
type Backend interface {
	Ensure(svc spec.Service) error
	AddTarget(svc spec.Service, t spec.Target) error
	RemoveTarget(svc spec.Service, t spec.Target) error
	SetTarget(svc spec.Service, t spec.Target) error
	Stats(svc spec.Service) (*spec.Stats, error)
}

// Family is one IP family of the standard topology.
type Family struct{ Name, VIP, A, B, Client string }

// Families are IPv4 and IPv6.
var Families = []Family{
	{"ipv4", VIP4, A4, B4, Client4},
	{"ipv6", VIP6, A6, B6, Client6},
}

// HostPort joins an address and a port, bracketing IPv6.
func HostPort(ip, port string) string { return net.JoinHostPort(ip, port) }

// Weighted is a service whose targets have the given weights.
func Weighted(name, vip, sched string, targets map[string]int, order ...string) spec.Service {
	s := spec.Service{Name: name, Address: vip, Scheduler: sched}
	for _, a := range order {
		if w, ok := targets[a]; ok {
			s.Targets = append(s.Targets, spec.Target{Address: a, Weight: w})
		}
	}
	return s
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// ChangesUnderLoad sends 500 requests one after another through the VIP
// (wrr) while target b is added, a re-weighted 3:1, b drained and then
// removed: none may fail, and each change shows in the requests sent
// after it returned.
func ChangesUnderLoad(t *testing.T, tp *Topo, b Backend) {
	t.Helper()
	a, bb := HostPort(A4, "80"), HostPort(B4, "80")
	order := []string{a, bb}
	svc := func(w map[string]int) spec.Service { return Weighted("load", HostPort(VIP4, "80"), "wrr", w, order...) }
	must(t, b.Ensure(svc(map[string]int{a: 1})))
	loop := StartLoop(tp.Client.Client(Client4), "http://"+HostPort(VIP4, "80")+"/", 500)
	var after []int // requests answered when each change returned
	for i, step := range []struct {
		at int
		do func() error
	}{
		{50, func() error {
			return b.AddTarget(svc(map[string]int{a: 1, bb: 1}), spec.Target{Address: bb, Weight: 1})
		}},
		{150, func() error { return b.SetTarget(svc(map[string]int{a: 3, bb: 1}), spec.Target{Address: a, Weight: 3}) }},
		{250, func() error { return b.SetTarget(svc(map[string]int{a: 3, bb: 0}), spec.Target{Address: bb}) }},
		{350, func() error { return b.RemoveTarget(svc(map[string]int{a: 3}), spec.Target{Address: bb}) }},
	} {
		loop.At(step.at)
		if err := step.do(); err != nil {
			t.Fatalf("change %d: %v", i, err)
		}
		after = append(after, loop.At(0))
	}
	got := loop.Wait(t)
	for i, s := range got {
		if s != "a" && s != "b" {
			t.Fatalf("request %d failed: %s", i, s)
		}
	}
	count := func(from, to int) map[string]int {
		m := map[string]int{}
		for _, s := range got[from+1 : to] { // +1: one request may have been in flight
			m[s]++
		}
		return m
	}
	if m := count(0, after[0]); m["b"] != 0 {
		t.Errorf("b answered before it was added: %v", m)
	}
	if m := count(after[0], after[1]); m["a"] == 0 || m["b"] == 0 || abs(m["a"]-m["b"]) > 2 {
		t.Errorf("a:1 b:1 gave %v", m)
	}
	if m := count(after[1], after[2]); m["b"]*4 < m["a"]+m["b"]-4 || m["b"]*4 > m["a"]+m["b"]+4 {
		t.Errorf("a:3 b:1 gave %v", m)
	}
	if m := count(after[2], len(got)); m["b"] != 0 {
		t.Errorf("b answered while drained or removed: %v", m)
	}
	t.Logf("changes after requests %v of %d", after, len(got))
}

func abs(x int) int { return max(x, -x) }

// DrainLongLived opens a long-lived connection to an echo service, drains
// the target it landed on, and checks: the connection goes on, new ones
// never reach the target, Active counts the connection until it ends
// (with a reset), and RemoveTarget then takes the target out. It returns
// the service after the removal and the removed target, for the
// backend's own checks.
func DrainLongLived(t *testing.T, tp *Topo, b Backend, f Family, sched string) (spec.Service, string) {
	t.Helper()
	vip := HostPort(f.VIP, EchoPort)
	addr := map[string]string{"a": HostPort(f.A, EchoPort), "b": HostPort(f.B, EchoPort)}
	order := []string{addr["a"], addr["b"]}
	name := "drain-" + f.Name
	svc := Weighted(name, vip, sched, map[string]int{addr["a"]: 1, addr["b"]: 1}, order...)
	must(t, b.Ensure(svc))
	conn, err := tp.Client.DialEcho(f.Client, vip)
	must(t, err)
	defer conn.Close()
	x, err := conn.Ask("hello")
	must(t, err)
	other := map[string]string{"a": "b", "b": "a"}[x]
	before, err := b.Stats(svc)
	must(t, err)
	drained := Weighted(name, vip, sched, map[string]int{addr[other]: 1, addr[x]: 0}, order...)
	must(t, b.SetTarget(drained, spec.Target{Address: addr[x]}))

	for _, line := range []string{"still 1", "still 2", "still 3"} {
		if s, err := conn.Ask(line); err != nil || s != x {
			t.Fatalf("the draining connection: answered by %q (%v), want %s", s, err, x)
		}
	}
	for range 20 {
		if s, err := tp.Client.Which(f.Client, vip); err != nil || s != other {
			t.Fatalf("a new connection while %s drains: answered by %q (%v)", x, s, err)
		}
	}
	st, err := b.Stats(drained)
	must(t, err)
	if st.Active[addr[x]] < 1 {
		t.Errorf("active connections while draining: %v, want %s: 1", st.Active, addr[x])
	}
	// Changed in place: the target keeps its counters.
	if st.Targets[addr[x]].Connections < before.Targets[addr[x]].Connections {
		t.Errorf("SetTarget reset the target's counters: %+v, before %+v", st.Targets[addr[x]], before.Targets[addr[x]])
	}
	must(t, conn.Reset())
	WaitActive(t, b, drained, addr[x], 0)

	rest := Weighted(name, vip, sched, map[string]int{addr[other]: 1}, order...)
	must(t, b.RemoveTarget(rest, spec.Target{Address: addr[x]}))
	st, err = b.Stats(rest)
	must(t, err)
	if _, ok := st.Targets[addr[x]]; ok || len(st.Programmed.Targets) != 1 {
		t.Errorf("removed target still programmed: %+v", st)
	}
	return rest, addr[x]
}

// WaitActive polls Stats until target's Active is want: a connection that
// ended stops counting at once (conntrack's TIME_WAIT and CLOSE entries,
// IPVS's inactive TCP connections are left out), so the backstop only
// bounds a broken backend.
func WaitActive(t *testing.T, b Backend, svc spec.Service, target string, want uint64) {
	t.Helper()
	var seen []uint64
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		st, err := b.Stats(svc)
		must(t, err)
		if st.Active[target] == want {
			return
		}
		seen = append(seen, st.Active[target])
	}
	t.Fatalf("Active of %s still not %d after 30s (seen %v)", target, want, slices.Compact(seen))
}
