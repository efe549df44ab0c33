package ipvs

import (
	"net"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	mobyipvs "github.com/moby/ipvs"
	"golang.org/x/sys/unix"

	"github.com/circuit-cni/circuit/pkg/lb/internal/lbtest"
	"github.com/circuit-cni/circuit/pkg/lb/internal/spec"
)

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func hostPort(ip, port string) string { return net.JoinHostPort(ip, port) }

// service is a service whose targets have weight 1 (0 would drain them).
func service(name, vip, sched string, targets ...string) spec.Service {
	s := spec.Service{Name: name, Address: vip, Scheduler: sched}
	for _, a := range targets {
		s.Targets = append(s.Targets, spec.Target{Address: a, Weight: 1})
	}
	return s
}

// newIPVS returns the backend in ns, or skips when the kernel has no IPVS
// (as on hosts whose kernel lacks it; the VM test tier has it).
func newIPVS(t *testing.T, ns *lbtest.NS) *Backend {
	t.Helper()
	b, err := New(ns.Path)
	must(t, err)
	t.Cleanup(func() { b.Close() })
	if err := b.Available(); err != nil {
		t.Skipf("kernel has no IPVS: %v", err)
	}
	return b
}

// foreignIPVS is a service someone else made, with moby/ipvs directly.
type foreignIPVS struct {
	h   *mobyipvs.Handle
	svc *mobyipvs.Service
}

func addForeign(t *testing.T, ns *lbtest.NS) *foreignIPVS {
	h, err := mobyipvs.New(ns.Path)
	must(t, err)
	t.Cleanup(h.Close)
	f := &foreignIPVS{h: h, svc: &mobyipvs.Service{Address: net.ParseIP("10.201.100.99"), Protocol: unix.IPPROTO_TCP,
		Port: 8080, SchedName: "wlc", AddressFamily: unix.AF_INET, Netmask: 0xffffffff}}
	must(t, h.NewService(f.svc))
	must(t, h.NewDestination(f.svc, &mobyipvs.Destination{Address: net.ParseIP(lbtest.A4), Port: 8080, Weight: 2,
		AddressFamily: unix.AF_INET}))
	return f
}

// snapshot is the foreign service and its real servers, without counters.
func (f *foreignIPVS) snapshot(t *testing.T) any {
	s, err := f.h.GetService(f.svc)
	must(t, err)
	ds, err := f.h.GetDestinations(f.svc)
	must(t, err)
	s.Stats = mobyipvs.SvcStats{}
	for _, d := range ds {
		d.Stats = mobyipvs.DstStats{}
		d.ActiveConnections, d.InactiveConnections = 0, 0
	}
	return []any{s, ds}
}

// TestIPVSTraffic drives real HTTP through IPVS in a throwaway topology:
// client -> LB (IPVS, VIP on circuit-lb0) -> servers a and b.
func TestIPVSTraffic(t *testing.T) {
	tp := lbtest.NewTopo(t)
	b := newIPVS(t, tp.LB)
	f := addForeign(t, tp.LB)
	before := f.snapshot(t)

	for _, fam := range []struct{ name, vip, a, b, client string }{
		{"ipv4", lbtest.VIP4, lbtest.A4, lbtest.B4, lbtest.Client4},
		{"ipv6", lbtest.VIP6, lbtest.A6, lbtest.B6, lbtest.Client6},
	} {
		t.Run(fam.name, func(t *testing.T) {
			c := tp.Client.Client(fam.client)
			u := "http://" + hostPort(fam.vip, "80") + "/"
			a, bb := hostPort(fam.a, "80"), hostPort(fam.b, "80")
			svc := service("web-"+fam.name, hostPort(fam.vip, "80"), "rr", a, bb)

			t.Run("rr", func(t *testing.T) {
				must(t, b.Ensure(svc))
				if got := lbtest.Tally(c, u, 20); got["a"] != 10 || got["b"] != 10 {
					t.Fatalf("rr over 20 requests: %v, want a:10 b:10", got)
				}
				// IPVS folds its per-CPU counters every 2s: wait for them (the
				// minute is a backstop; the VM tier emulates its CPUs).
				var st *spec.Stats
				for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
					var err error
					st, err = b.Stats(svc)
					must(t, err)
					if st.Service.Connections >= 20 {
						break
					}
				}
				if st.Service.Connections < 20 || st.Targets[a].Connections < 10 || st.Targets[bb].Connections < 10 ||
					st.Service.Packets < 80 || st.Service.Bytes < st.Service.Packets*40 {
					t.Errorf("stats %+v", st)
				}
				if p, ok := lbtest.Tool("ipvsadm"); ok {
					out, _ := tp.LB.Run(p, "-Ln")
					t.Logf("ipvsadm -Ln:\n%s", out)
				}
			})

			t.Run("wrr", func(t *testing.T) {
				svc := svc
				svc.Scheduler = "wrr"
				svc.Targets = []spec.Target{{Address: a, Weight: 3}, {Address: bb, Weight: 1}}
				must(t, b.Ensure(svc))
				got := lbtest.Tally(c, u, 40)
				if got["a"] < 24 || got["a"] > 36 || got["a"]+got["b"] != 40 {
					t.Fatalf("wrr 3:1 over 40 requests: %v, want a in 24-36", got)
				}
				t.Logf("wrr 3:1: %v", got)
			})

			t.Run("sh", func(t *testing.T) {
				svc := svc
				svc.Scheduler = "sh"
				must(t, b.Ensure(svc))
				if got := lbtest.Tally(c, u, 20); len(got) != 1 || got["error"] != 0 {
					t.Fatalf("sh: one client went to %v, want one target", got)
				}
			})

			t.Run("lc", func(t *testing.T) { // IPVS only
				// A fresh service: lc counts the connections IPVS still
				// tracks (closed ones linger), and those of the earlier
				// subtests would steer it.
				vip := map[string]string{"ipv4": "10.201.100.11", "ipv6": "fd00:201:100::11"}[fam.name]
				lc := service("lc-"+fam.name, hostPort(vip, "80"), "lc", a, bb)
				must(t, b.Ensure(lc))
				defer func() { must(t, b.Delete(lc)) }()
				got := lbtest.Tally(c, "http://"+hostPort(vip, "80")+"/", 20)
				if got["a"] < 5 || got["b"] < 5 || got["error"] != 0 {
					t.Fatalf("lc over 20 sequential requests: %v, want both targets used", got)
				}
				t.Logf("lc: %v", got)
			})

			t.Run("remove", func(t *testing.T) {
				must(t, b.Ensure(svc))
				after := service(svc.Name, svc.Address, "rr", a)
				must(t, b.RemoveTarget(after, spec.Target{Address: bb}))
				must(t, b.RemoveTarget(after, spec.Target{Address: bb})) // gone already
				if got := lbtest.Tally(c, u, 10); got["a"] != 10 {
					t.Fatalf("after removing b: %v, want all to a", got)
				}
				must(t, b.AddTarget(svc, spec.Target{Address: bb, Weight: 1}))
				if got := lbtest.Tally(c, u, 10); got["a"] == 0 || got["b"] == 0 {
					t.Fatalf("after adding b back: %v", got)
				}
			})

			t.Run("persistence", func(t *testing.T) {
				svc := svc
				lbtest.SetPersistence(&svc.Persistence, time.Minute)
				must(t, b.Ensure(svc))
				if got := lbtest.Tally(c, u, 10); len(got) != 1 || got["error"] != 0 {
					t.Fatalf("persistent rr: one client went to %v, want one target", got)
				}
			})

			t.Run("delete", func(t *testing.T) {
				must(t, b.Delete(svc))
				if got := lbtest.Tally(c, u, 2); got["error"] != 2 {
					t.Fatalf("after delete the VIP still answers: %v", got)
				}
				must(t, b.Delete(svc)) // gone already: fine
			})
		})
	}

	if _, err := tp.LB.Netlink().LinkByName(DummyDevice); err == nil {
		t.Errorf("%s left after the last service was deleted", DummyDevice)
	}
	if d := cmp.Diff(before, f.snapshot(t)); d != "" {
		t.Errorf("foreign IPVS service changed:\n%s", d)
	}
}
