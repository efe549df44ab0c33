package ipvs

import (
	"testing"

	"github.com/circuit-cni/circuit/pkg/lb/internal/lbtest"
)

// 500 requests through the VIP while a real server is added, re-weighted
// (IPVS_CMD_SET_DEST), drained (weight 0: IPVS quiesces it) and removed:
// none fails.
func TestIPVSChangesUnderLoad(t *testing.T) {
	tp := lbtest.NewTopo(t)
	b := newIPVS(t, tp.LB)
	lbtest.ChangesUnderLoad(t, tp, b)
	must(t, b.Delete(service("load", lbtest.HostPort(lbtest.VIP4, "80"), "wrr")))
}

// A connection to a quiesced real server goes on, new ones go elsewhere,
// Active (its established connections) counts it until it ends, and the
// edit keeps the real server's counters (it is not a remove and add).
func TestIPVSDrainLongLived(t *testing.T) {
	tp := lbtest.NewTopo(t)
	b := newIPVS(t, tp.LB)
	for _, f := range lbtest.Families {
		t.Run(f.Name, func(t *testing.T) {
			rest, _ := lbtest.DrainLongLived(t, tp, b, f, "rr")
			must(t, b.Delete(rest))
		})
	}
}

// One IPVS service per family on the same two hosts, used at once.
func TestIPVSDualStack(t *testing.T) {
	tp := lbtest.NewTopo(t)
	b := newIPVS(t, tp.LB)
	for _, f := range lbtest.Families {
		svc := service("ds-"+f.Name, hostPort(f.VIP, "80"), "rr", hostPort(f.A, "80"), hostPort(f.B, "80"))
		must(t, b.Ensure(svc))
		defer func() { must(t, b.Delete(svc)) }()
	}
	for range 4 {
		for _, f := range lbtest.Families {
			got := lbtest.Tally(tp.Client.Client(f.Client), "http://"+hostPort(f.VIP, "80")+"/", 2)
			if got["a"] != 1 || got["b"] != 1 {
				t.Fatalf("%s: %v, want a:1 b:1", f.Name, got)
			}
		}
	}
}
