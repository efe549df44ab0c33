package nftables

import (
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/pkg/lb/internal/lbtest"
	"github.com/circuit-cni/circuit/pkg/lb/internal/spec"
)

// A client on the same bridge as the target is masqueraded, else the
// target would answer it directly; a routed client is not. With
// br_netfilter on, the bridge itself un-NATs the replies and the
// connection must simply work.
func TestHairpin(t *testing.T) {
	t.Parallel()
	tp := lbtest.NewTopo(t)
	tp.AddHairpin(t)
	b := newBackend(t, tp.LB)
	svc := service("hair", lbtest.VIP4+":80", "rr", lbtest.H4+":80")
	must(t, b.Ensure(svc))

	brnf := "net/bridge/bridge-nf-call-iptables"
	if host, err := os.ReadFile("/proc/sys/" + brnf); err == nil {
		tp.LB.Sysctl(t, brnf, "1")
		if server, _, err := lbtest.Get(tp.C.Client(""), url(lbtest.VIP4)); err != nil || server != "h" {
			t.Errorf("hairpin client with br_netfilter: answered by %q (%v)", server, err)
		}
		tp.LB.Sysctl(t, brnf, "0")
		// Old kernels had this sysctl global: never leave the host changed.
		if now, _ := os.ReadFile("/proc/sys/" + brnf); string(now) != string(host) {
			os.WriteFile("/proc/sys/"+brnf, host, 0o644)
			t.Fatalf("%s is not per network namespace here", brnf)
		}
	}
	server, seen, err := lbtest.Get(tp.C.Client(""), url(lbtest.VIP4))
	if err != nil || server != "h" || seen != "10.201.4.1" {
		t.Errorf("hairpin client: answered by %q seeing %q (%v); want h seeing the LB's 10.201.4.1", server, seen, err)
	}
	server, seen, err = lbtest.Get(tp.Client.Client(lbtest.Client4), url(lbtest.VIP4))
	if err != nil || server != "h" || seen != lbtest.Client4 {
		t.Errorf("routed client: answered by %q seeing %q (%v); want h seeing %s", server, seen, err, lbtest.Client4)
	}
	want := uint64(2)
	if _, err := os.ReadFile("/proc/sys/" + brnf); err == nil {
		want++
	}
	if st := stats(t, b, svc); st.Service.Connections != want || st.Targets[lbtest.H4+":80"].Connections != want {
		t.Errorf("hairpin counts twice or not at all: %+v", st)
	}
}

// Ensure is idempotent, follows changes of address and persistence, and
// Delete and Stats behave on missing services.
func TestLifecycle(t *testing.T) {
	t.Parallel()
	ns := lbtest.NewNS(t, "life")
	b := newBackend(t, ns)
	other := service("other", "10.201.100.20:53", "rr", "10.201.2.2:53")
	other.Protocol = "udp"
	if err := b.Delete(other); err != nil {
		t.Fatalf("Delete without a table: %v", err)
	}
	if _, err := b.Stats(other); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("Stats without a table: %v", err)
	}
	must(t, b.Ensure(other))
	svc := service("web", "10.201.100.10:80", "wrr", "10.201.2.2:80", "10.201.3.2:80")
	svc.Targets[0].Weight = 3
	must(t, b.Ensure(svc))
	list := func() string {
		out, _ := nft(t, ns, "list", "table", "inet", "circuit")
		return out
	}
	first := list()
	txs := b.txs.Load()
	must(t, b.Ensure(svc))
	if b.txs.Load() != txs+1 {
		t.Errorf("Ensure took %d transactions, want 1", b.txs.Load()-txs)
	}
	for _, op := range b.lastOps { // idempotent adds, to repair what was deleted by hand
		if op != nftMsgNewSetElem && op != unix.NFT_MSG_NEWOBJ {
			t.Errorf("Ensure of an unchanged service holds %s", msgNames[op])
		}
	}
	if again := list(); again != first {
		t.Errorf("second Ensure changed the table:\n--- first\n%s\n--- second\n%s", first, again)
	}
	// rr -> wrr and back changes slots, not rules.
	svc.Scheduler = "rr"
	must(t, b.Ensure(svc))
	noRules(t, b, "Ensure wrr -> rr")

	// Same name, new address, persistence and targets: nothing stale left.
	moved := service("web", "[fd00:201:100::10]:443", "sh", "[fd00:201:2::2]:443")
	lbtest.SetPersistence(&moved.Persistence, 30*time.Second)
	must(t, b.Ensure(moved))
	if out := list(); out != "" && (strings.Contains(out, "10.201.100.10") || strings.Contains(out, "10.201.3.2")) {
		t.Errorf("stale address after moving the service:\n%s", out)
	}
	st := stats(t, b, moved)
	if len(st.Targets) != 1 || st.Programmed.Scheduler != "sh" || st.Programmed.Persistence != 30*time.Second {
		t.Errorf("after move: %+v", st)
	}
	lbtest.SetPersistence(&moved.Persistence, 0)
	must(t, b.Ensure(moved))
	if out := list(); strings.Contains(out, "aff-web") || strings.Contains(out, "@aff-web") {
		t.Errorf("affinity left after persistence was turned off:\n%s", out)
	}

	// Adding a target to a service that is not programmed falls back to Ensure.
	late := service("late", "10.201.100.30:80", "rr", "10.201.2.2:80")
	must(t, b.AddTarget(late, late.Targets[0]))
	if st := stats(t, b, late); len(st.Targets) != 1 {
		t.Errorf("late service: %+v", st)
	}
	// The service passed must be the one after the change.
	if err := b.RemoveTarget(late, late.Targets[0]); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("RemoveTarget of a listed target: %v", err)
	}
	if err := b.SetTarget(late, target("10.201.2.2:80", 5)); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("SetTarget with another weight than the service's: %v", err)
	}
	// Two services cannot share an address.
	dup := service("dup", "10.201.100.30:80", "rr")
	if err := b.Ensure(dup); !errors.Is(err, api.ErrExists) {
		t.Errorf("duplicate address: %v, want ErrExists", err)
	}

	// Someone removed part of a service by hand: Delete still cleans up.
	bt := newBatch()
	bt.delElems(ref(slotsMap(false, shardOf("late"))), []nftables.SetElement{{Key: slotKey(
		netip.MustParseAddrPort("10.201.100.30:80"), 6, 0)}})
	must(t, b.commit(bt))
	must(t, b.Delete(late))
	if out := list(); strings.Contains(out, "late") || strings.Contains(out, "10.201.100.30") {
		t.Errorf("service left after Delete of a damaged service:\n%s", out)
	}

	for _, s := range []spec.Service{other, moved} {
		must(t, b.Delete(s))
	}
	if exists, err := b.tableExists(); err != nil || exists {
		t.Errorf("table exists=%v after deleting every service (%v):\n%s", exists, err, list())
	}
}

// elementsOnly fails unless the last transaction changed set elements
// only: no rule, chain, set or object, so nothing the kernel re-validates.
func elementsOnly(t *testing.T, b *Backend, what string) {
	t.Helper()
	for _, op := range b.lastOps {
		if op != nftMsgNewSetElem && op != nftMsgDelSetElem {
			t.Errorf("%s: the transaction holds %s (all: %v)", what, msgNames[op], b.lastOps)
			return
		}
	}
}

// noRules fails if the last transaction changed a rule, chain or set.
func noRules(t *testing.T, b *Backend, what string) {
	t.Helper()
	for _, op := range b.lastOps {
		if op != nftMsgNewSetElem && op != nftMsgDelSetElem && op != unix.NFT_MSG_NEWOBJ {
			t.Errorf("%s: the transaction holds %s (all: %v)", what, msgNames[op], b.lastOps)
			return
		}
	}
}

// What `nft list ruleset` prints for our table in every shape (v4, v6,
// persistence, sh), nft must print without failing: admins read it.
func TestListing(t *testing.T) {
	t.Parallel()
	ns := lbtest.NewNS(t, "list")
	b := newBackend(t, ns)
	for i, v := range []string{"10.201.100.10:80", "[fd00:201:100::10]:80"} {
		svc := service([]string{"s0", "s1"}[i], v, "sh")
		if i == 0 {
			svc.Targets = []spec.Target{{Address: "10.201.2.2:80", Weight: 2}, {Address: "10.201.3.2:8080", Weight: 0}}
		} else {
			svc.Targets = []spec.Target{{Address: "[fd00:201:2::2]:80", Weight: 1}}
		}
		lbtest.SetPersistence(&svc.Persistence, time.Hour)
		must(t, b.Ensure(svc))
	}
	out, ok := nft(t, ns, "list", "ruleset")
	if !ok {
		t.Skip("nft is not installed")
	}
	for _, want := range []string{"jhash ip saddr mod 60", "ip6 saddr map @aff-s1", "ct reply ip saddr . ct reply proto-src @tbytes4"} {
		if !strings.Contains(out, want) {
			t.Errorf("listing lacks %q:\n%s", want, out)
		}
	}
}
