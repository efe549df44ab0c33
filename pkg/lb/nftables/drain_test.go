package nftables

import (
	"strings"
	"testing"

	"github.com/circuit-cni/circuit/pkg/lb/internal/lbtest"
	"github.com/circuit-cni/circuit/pkg/lb/internal/spec"
)

// 500 requests through the VIP while a target is added, re-weighted,
// drained and removed: none fails (lbtest.ChangesUnderLoad).
func TestChangesUnderLoad(t *testing.T) {
	t.Parallel()
	tp := hostTopo(t)
	lbtest.ChangesUnderLoad(t, tp, newBackend(t, tp.LB))
}

// A connection to a draining target goes on until it ends, new ones never
// reach it, Active counts it until it ends (lbtest.DrainLongLived); after
// RemoveTarget no element of the table names the target.
func TestDrainLongLived(t *testing.T) {
	t.Parallel()
	tp := hostTopo(t)
	b := newBackend(t, tp.LB)
	for _, f := range lbtest.Families {
		t.Run(f.Name, func(t *testing.T) {
			rest, gone := lbtest.DrainLongLived(t, tp, b, f, "rr")
			if out, ok := nft(t, tp.LB, "list", "table", "inet", "circuit"); ok {
				ip := strings.Trim(strings.TrimSuffix(gone, ":"+lbtest.EchoPort), "[]")
				if strings.Contains(out, ip+" . "+lbtest.EchoPort) {
					t.Errorf("removed target %s still in the table:\n%s", gone, out)
				}
			}
			must(t, b.Delete(rest))
		})
	}
}

// waitActive is lbtest.WaitActive for this package's tests.
func waitActive(t *testing.T, b *Backend, svc spec.Service, target string, want uint64) {
	t.Helper()
	lbtest.WaitActive(t, b, svc, target, want)
}
