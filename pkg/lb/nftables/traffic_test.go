package nftables

import (
	"strings"
	"testing"
	"time"

	"github.com/circuit-cni/circuit/pkg/lb/internal/lbtest"
	"github.com/circuit-cni/circuit/pkg/lb/internal/spec"
)

type family struct{ name, vip, a, b, client string }

var families = []family{
	{"ipv4", lbtest.VIP4, lbtest.A4, lbtest.B4, lbtest.Client4},
	{"ipv6", lbtest.VIP6, lbtest.A6, lbtest.B6, lbtest.Client6},
}

// TestTraffic drives real HTTP through the nftables backend in a
// throwaway topology: client -> LB (the backend) -> servers a and b.
func TestTraffic(t *testing.T) {
	t.Parallel()
	tp := lbtest.NewTopo(t)
	b := newBackend(t, tp.LB)
	addForeignTable(t, tp.LB)
	before := snapshotForeign(t, tp.LB)

	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			c := tp.Client.Client(fam.client)
			u := url(fam.vip)
			a, bb := hostPort(fam.a, "80"), hostPort(fam.b, "80")
			svc := service("web-"+fam.name, hostPort(fam.vip, "80"), "rr", a, bb)

			t.Run("rr", func(t *testing.T) {
				must(t, b.Ensure(svc))
				if got := lbtest.Tally(c, u, 20); got["a"] != 10 || got["b"] != 10 {
					t.Fatalf("rr over 20 requests: %v, want a:10 b:10", got)
				}
				st := stats(t, b, svc)
				if st.Service.Connections != 20 || st.Targets[a].Connections != 10 || st.Targets[bb].Connections != 10 {
					t.Errorf("connection counters %+v", st)
				}
				// 10 HTTP exchanges are well over 10 packets each way.
				for _, tg := range []string{a, bb} {
					if c := st.Targets[tg]; c.Packets < 40 || c.Bytes < c.Packets*40 {
						t.Errorf("target %s packet counters %+v", tg, c)
					}
				}
				if s := st.Service; s.Packets < 80 || s.Packets != st.Targets[a].Packets+st.Targets[bb].Packets {
					t.Errorf("service packets %d, targets' %d + %d", s.Packets, st.Targets[a].Packets, st.Targets[bb].Packets)
				}
				// Closed: none counts as active once its last packets are through.
				waitActive(t, b, svc, a, 0)
				waitActive(t, b, svc, bb, 0)
				if out, ok := nft(t, tp.LB, "list", "table", "inet", "circuit"); ok {
					t.Logf("nft list table inet circuit:\n%s", out)
				}
			})

			t.Run("wrr", func(t *testing.T) {
				svc := with(svc, target(a, 3), target(bb, 1))
				svc.Scheduler = "wrr"
				must(t, b.Ensure(svc))
				got := lbtest.Tally(c, u, 40)
				if got["a"] != 30 || got["b"] != 10 {
					t.Fatalf("wrr 3:1 over 40 requests: %v, want a:30 b:10", got)
				}
				st := stats(t, b, svc)
				if w := st.Programmed.Targets; len(w) != 2 || w[0].Weight+w[1].Weight != 4 {
					t.Errorf("programmed weights %+v", w)
				}
			})

			t.Run("sh", func(t *testing.T) {
				svc := svc
				svc.Scheduler = "sh"
				must(t, b.Ensure(svc))
				got := lbtest.Tally(c, u, 20)
				if len(got) != 1 || got["error"] != 0 {
					t.Fatalf("sh: one client went to %v, want one target", got)
				}
			})

			t.Run("remove", func(t *testing.T) {
				must(t, b.Ensure(svc))
				after := service(svc.Name, svc.Address, "rr", a)
				must(t, b.RemoveTarget(after, spec.Target{Address: bb}))
				if got := lbtest.Tally(c, u, 10); got["a"] != 10 {
					t.Fatalf("after removing b: %v, want all to a", got)
				}
				must(t, b.AddTarget(svc, target(bb, 1)))
				if got := lbtest.Tally(c, u, 10); got["a"] != 5 || got["b"] != 5 {
					t.Fatalf("after adding b back: %v, want a:5 b:5", got)
				}
			})

			t.Run("persistence", func(t *testing.T) {
				svc := svc
				lbtest.SetPersistence(&svc.Persistence, time.Minute)
				must(t, b.Ensure(svc))
				got := lbtest.Tally(c, u, 10)
				if len(got) != 1 || got["error"] != 0 {
					t.Fatalf("persistent rr: one client went to %v, want one target", got)
				}
				var stuck string
				for s := range got {
					stuck = s
				}
				other := map[string]string{"a": bb, "b": a}[stuck]
				// Remove the target the client sticks to: it must move.
				rest := service(svc.Name, svc.Address, "rr", other)
				rest.Persistence = svc.Persistence
				must(t, b.RemoveTarget(rest, spec.Target{Address: map[string]string{"a": a, "b": bb}[stuck]}))
				if got := lbtest.Tally(c, u, 5); got[stuck] != 0 || got["error"] != 0 {
					t.Fatalf("after removing %s: %v", stuck, got)
				}
				must(t, b.Ensure(svc)) // back to both, still persistent
				if got := lbtest.Tally(c, u, 10); len(got) != 1 || got[stuck] != 0 {
					t.Fatalf("client should stay on the target it moved to: %v", got)
				}
			})

			t.Run("delete", func(t *testing.T) {
				must(t, b.Delete(svc))
				if got := lbtest.Tally(c, u, 1); got["error"] != 1 {
					t.Fatalf("after delete the VIP still answers: %v", got)
				}
				must(t, b.Delete(svc)) // gone already: fine
				if _, err := b.Stats(svc); !isNotFound(err) {
					t.Errorf("Stats after delete: %v, want ErrNotFound", err)
				}
			})
		})
	}

	if out, ok := nft(t, tp.LB, "list", "tables"); ok && strings.Contains(out, "circuit") {
		t.Errorf("table left after the last service was deleted:\n%s", out)
	}
	if exists, err := b.tableExists(); err != nil || exists {
		t.Errorf("table inet circuit exists=%v after the last delete (%v)", exists, err)
	}
	if d := before.diff(snapshotForeign(t, tp.LB)); d != "" {
		t.Errorf("foreign table changed:\n%s", d)
	}
}

// One service per family on the same two hosts, used at once: each
// balances over both hosts and counts only its own traffic.
func TestDualStack(t *testing.T) {
	t.Parallel()
	tp := hostTopo(t)
	b := newBackend(t, tp.LB)
	var svcs []spec.Service
	for _, fam := range families {
		svc := service("ds-"+fam.name, hostPort(fam.vip, "80"), "rr", hostPort(fam.a, "80"), hostPort(fam.b, "80"))
		must(t, b.Ensure(svc))
		svcs = append(svcs, svc)
	}
	got := [2]map[string]int{{}, {}}
	for range 10 {
		for i, fam := range families {
			s, seen, err := lbtest.Get(tp.Client.Client(fam.client), url(fam.vip))
			if err != nil || seen != fam.client {
				t.Fatalf("%s: answered by %q seeing %q (%v)", fam.name, s, seen, err)
			}
			got[i][s]++
		}
	}
	for i, fam := range families {
		if got[i]["a"] != 5 || got[i]["b"] != 5 {
			t.Errorf("%s: %v, want a:5 b:5", fam.name, got[i])
		}
		st := stats(t, b, svcs[i])
		if st.Service.Connections != 10 || st.Targets[svcs[i].Targets[0].Address].Connections != 5 {
			t.Errorf("%s stats: %+v", fam.name, st)
		}
	}
}
