package nftables

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/circuit-cni/circuit/pkg/lb/internal/lbtest"
	"github.com/circuit-cni/circuit/pkg/lb/internal/spec"
	"github.com/circuit-cni/circuit/pkg/lb/nftables/legacy"
)

// A table of the first layout (made by a frozen copy of its code) is
// moved service by service in place: clients see no failure, connections
// to targets that stay keep working, persistent clients keep their
// targets, and nothing of the old layout is left once all have moved.
func TestMigrate(t *testing.T) {
	t.Parallel()
	tp := hostTopo(t)
	old, err := legacy.New(tp.LB.Path)
	must(t, err)
	defer old.Close()
	a, bb := hostPort(lbtest.A4, "80"), hostPort(lbtest.B4, "80")
	web := service("web", hostPort(lbtest.VIP4, "80"), "rr", a, bb)
	echo := service("echo", hostPort(lbtest.VIP4, lbtest.EchoPort), "rr",
		hostPort(lbtest.A4, lbtest.EchoPort), hostPort(lbtest.B4, lbtest.EchoPort))
	sticky := service("sticky", hostPort(lbtest.VIP6, "80"), "rr", hostPort(lbtest.A6, "80"), hostPort(lbtest.B6, "80"))
	lbtest.SetPersistence(&sticky.Persistence, time.Minute)
	for _, s := range []spec.Service{web, echo, sticky} {
		must(t, old.Ensure(s))
	}
	conn, err := tp.Client.DialEcho(lbtest.Client4, echo.Address)
	must(t, err)
	defer conn.Close()
	stuckTo, err := conn.Ask("before")
	must(t, err)
	c6 := tp.Client.Client(lbtest.Client6)
	pinned := lbtest.Tally(c6, url(lbtest.VIP6), 4)
	if len(pinned) != 1 {
		t.Fatalf("persistent v1 service: %v, want one target", pinned)
	}

	b := newBackend(t, tp.LB)
	if st := stats(t, b, web); !st.Outdated || st.Targets[a].Connections != 0 {
		t.Errorf("Stats of a v1 service: %+v", st)
	}
	loop := lbtest.StartLoop(tp.Client.Client(lbtest.Client4), url(lbtest.VIP4), 300)
	loop.At(100)
	must(t, b.Ensure(web))
	at := loop.At(0)
	got := loop.Wait(t)
	for i, s := range got {
		if s != "a" && s != "b" {
			t.Fatalf("request %d during the migration failed: %s", i, s)
		}
	}
	for i := at + 1; i+1 < len(got); i++ {
		if got[i] == got[i+1] {
			t.Fatalf("rr after the migration: requests %d and %d both went to %s", i, i+1, got[i])
		}
	}
	if st := stats(t, b, web); st.Outdated || st.Targets[a].Connections == 0 || st.Targets[a].Bytes == 0 {
		t.Errorf("Stats after the migration: %+v", st)
	}

	// The echo service moves by a target change (AddTarget falls back to
	// Ensure); its connection, to a target that stays, goes on.
	withC := with(echo, append(echo.Targets, target(hostPort(lbtest.H4, lbtest.EchoPort), 1))...)
	must(t, b.AddTarget(withC, withC.Targets[2]))
	if s, err := conn.Ask("after"); err != nil || s != stuckTo {
		t.Errorf("connection across the migration: answered by %q (%v), want %s", s, err, stuckTo)
	}
	// The persistent one keeps its client on its target.
	must(t, b.Ensure(sticky))
	es, err := getElems(b.nl, affinityMap("sticky"), [][]byte{netip.MustParseAddr(lbtest.Client6).AsSlice()})
	must(t, err)
	if len(es) != 1 {
		t.Errorf("the client's affinity was not copied: %v", es)
	}
	if now := lbtest.Tally(c6, url(lbtest.VIP6), 4); len(now) != 1 || now[firstKey(pinned)] != 4 {
		t.Errorf("persistent client moved in the migration: %v, was %v", now, pinned)
	}

	out, ok := nft(t, tp.LB, "list", "table", "inet", "circuit")
	for _, stale := range []string{"tg-", "svc-web/", "aff-sticky/", "recent4", "recent6"} {
		if ok && strings.Contains(out, stale) {
			t.Errorf("%q left after every service moved:\n%s", stale, out)
		}
	}
	for _, s := range []spec.Service{web, withC, sticky} {
		must(t, b.Delete(s))
	}
	if exists, err := b.tableExists(); err != nil || exists {
		t.Errorf("table exists=%v after the last delete (%v)", exists, err)
	}
}

func firstKey(m map[string]int) string {
	for k := range m {
		return k
	}
	return ""
}
