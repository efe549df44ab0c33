package nftables

import (
	"strings"
	"testing"
	"time"

	"github.com/circuit-cni/circuit/pkg/lb/internal/lbtest"
	"github.com/circuit-cni/circuit/pkg/lb/internal/spec"
)

// TestTraffic drives real HTTP through the nftables backend in a
// throwaway topology: client -> LB (the backend) -> servers a and b.
func TestTraffic(t *testing.T) {
	t.Parallel()
	tp := lbtest.NewTopo(t)
	b := newBackend(t, tp.LB)
	addForeignTable(t, tp.LB)
	before := snapshotForeign(t, tp.LB)

	for _, fam := range []struct{ name, vip, a, b, client string }{
		{"ipv4", lbtest.VIP4, lbtest.A4, lbtest.B4, lbtest.Client4},
		{"ipv6", lbtest.VIP6, lbtest.A6, lbtest.B6, lbtest.Client6},
	} {
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
					t.Errorf("stats %+v", st)
				}
				// 20 HTTP exchanges are well over 20 packets each way.
				if st.Service.Packets < 80 || st.Service.Bytes < st.Service.Packets*40 {
					t.Errorf("packet counters %+v", st.Service)
				}
				if out, ok := nft(t, tp.LB, "list", "table", "inet", "circuit"); ok {
					t.Logf("nft list table inet circuit:\n%s", out)
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
				must(t, b.AddTarget(svc, spec.Target{Address: bb}))
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
				var stuck, other string
				for s := range got {
					stuck = s
				}
				other = map[string]string{"a": bb, "b": a}[stuck]
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
				if out, ok := nft(t, tp.LB, "list", "chain", "inet", "circuit", serviceChain(svc.Name)); ok {
					t.Logf("persistent service chain:\n%s", out)
				}
			})

			t.Run("delete", func(t *testing.T) {
				must(t, b.Delete(svc))
				if got := lbtest.Tally(c, u, 2); got["error"] != 2 {
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
