package nftables

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/pkg/lb/internal/lbtest"
	"github.com/circuit-cni/circuit/pkg/lb/internal/spec"
)

func TestSlots(t *testing.T) {
	tests := []struct {
		weights []int
		mod     uint32
		ranges  []slotRange
	}{
		{[]int{1, 1}, 2, []slotRange{{0, 0, 0}, {1, 1, 1}}},
		{[]int{3, 1}, 4, []slotRange{{0, 2, 0}, {3, 3, 1}}},
		{[]int{6, 2}, 4, []slotRange{{0, 2, 0}, {3, 3, 1}}}, // gcd 2
		{[]int{5}, 1, []slotRange{{0, 0, 0}}},
		{[]int{2, 3, 5}, 10, []slotRange{{0, 1, 0}, {2, 4, 1}, {5, 9, 2}}},
		{[]int{65535, 1}, 65536, []slotRange{{0, 65534, 0}, {65535, 65535, 1}}},
		{nil, 0, nil},
	}
	for _, tt := range tests {
		mod, ranges, err := slots(tt.weights)
		if err != nil || mod != tt.mod || !cmp.Equal(ranges, tt.ranges) {
			t.Errorf("slots(%v) = %d, %v, %v; want %d, %v", tt.weights, mod, ranges, err, tt.mod, tt.ranges)
		}
	}
	if _, _, err := slots([]int{1, 0}); err == nil {
		t.Error("slots accepted weight 0")
	}
}

// The share of each target equals its weight over the total.
func TestSlotsProportional(t *testing.T) {
	w := []int{7, 3, 11, 1}
	mod, ranges, err := slots(w)
	if err != nil {
		t.Fatal(err)
	}
	next := uint32(0)
	for i, r := range ranges {
		if r.First != next || r.Last-r.First+1 != uint32(w[i]) || r.Target != i {
			t.Fatalf("range %d = %+v", i, r)
		}
		next = r.Last + 1
	}
	if next != mod {
		t.Fatalf("ranges end at %d, mod %d", next, mod)
	}
}

func TestNames(t *testing.T) {
	v4 := netip.MustParseAddrPort("10.0.0.2:8080")
	v6 := netip.MustParseAddrPort("[fd00::2]:80")
	got := []string{serviceChain("web"), targetChain("web", v4), targetChain("web.v2", v6),
		affinitySet("web", v4), targetSet("web"), counterName("web"), servicesMap(false), flowsSet(true)}
	want := []string{"svc-web", "svc-web/10.0.0.2/8080", "svc-web.v2/fd00..2/80",
		"aff-web/10.0.0.2/8080", "tg-web", "svc-web", "services4", "flows6"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("names (-want +got):\n%s", diff)
	}
	// Names stay within nft's identifier characters and length limits.
	long := strings.Repeat("x", 63)
	n := targetChain(long, netip.MustParseAddrPort("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"))
	if len(n) > 255 || strings.ContainsAny(n, ": []") {
		t.Errorf("target chain name %q", n)
	}
}

func TestKeys(t *testing.T) {
	ap := netip.MustParseAddrPort("10.1.2.3:80")
	if got, want := tupleKey(ap, 6), []byte{10, 1, 2, 3, 6, 0, 0, 0, 0, 80, 0, 0}; !cmp.Equal(got, want) {
		t.Errorf("tupleKey = %v, want %v", got, want)
	}
	if got, want := targetKey(ap), []byte{10, 1, 2, 3, 0, 80, 0, 0}; !cmp.Equal(got, want) {
		t.Errorf("targetKey = %v, want %v", got, want)
	}
	for _, s := range []string{"10.1.2.3:80", "[fd00::1]:65535"} {
		ap := netip.MustParseAddrPort(s)
		if got, ok := parseTargetKey(targetKey(ap)); !ok || got != ap {
			t.Errorf("parseTargetKey(targetKey(%v)) = %v, %v", ap, got, ok)
		}
		if got, p, ok := parseTupleKey(tupleKey(ap, 17)); !ok || got != ap || p != 17 {
			t.Errorf("parseTupleKey(tupleKey(%v)) = %v, %d, %v", ap, got, p, ok)
		}
	}
}

func TestComment(t *testing.T) {
	svc := spec.Service{Name: "web", Address: "[fd00::1]:443", Protocol: "udp"}
	lbtest.SetPersistence(&svc.Persistence, 90*time.Second)
	s, err := spec.Parse(svc)
	if err != nil {
		t.Fatal(err)
	}
	c := serviceComment(s)
	if len(c) > 255 {
		t.Fatalf("comment too long for nft: %d", len(c))
	}
	r, ok := parseComment(c)
	want := recorded{vip: s.VIP, proto: 17, persistence: 90 * time.Second}
	if !ok || r != want {
		t.Errorf("parseComment(%q) = %+v, %v; want %+v", c, r, ok, want)
	}
	if _, ok := parseComment("something else"); ok {
		t.Error("parsed a foreign comment")
	}
}

func TestValidate(t *testing.T) {
	base := spec.Service{Name: "web", Address: "10.0.0.1:80",
		Targets: []spec.Target{{Address: "10.0.1.1:80", Weight: 3}, {Address: "10.0.1.2:80"}}}
	for _, sched := range []string{"", "rr", "wrr", "sh"} {
		s := base
		s.Scheduler = sched
		if err := (&Backend{}).Validate(s); err != nil {
			t.Errorf("scheduler %q: %v", sched, err)
		}
	}
	for _, proto := range []string{"tcp", "udp", "sctp"} {
		s := base
		s.Protocol = proto
		if err := (&Backend{}).Validate(s); err != nil {
			t.Errorf("protocol %q: %v", proto, err)
		}
	}
	for _, sched := range []string{"lc", "wlc", "lblc", "lblcr", "dh", "sed", "nq", "mh"} {
		s := base
		s.Scheduler = sched
		err := (&Backend{}).Validate(s)
		if !errors.Is(err, api.ErrUnsupported) || !strings.Contains(err.Error(), "nftables backend cannot do") ||
			!strings.Contains(err.Error(), "("+sched+")") || !strings.Contains(err.Error(), "ipvs backend") {
			t.Errorf("scheduler %s: %v", sched, err)
		}
	}
	s := base
	s.Scheduler = "lc"
	want := "the nftables backend cannot do least-connection scheduling (lc); use rr, wrr or sh, or the ipvs backend"
	if err := (&Backend{}).Validate(s); err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("lc: %v", err)
	}
	for _, fwd := range []string{"dr", "tunnel"} {
		s := base
		s.Targets = []spec.Target{{Address: "10.0.1.1:80", Forward: fwd}}
		if err := (&Backend{}).Validate(s); !errors.Is(err, api.ErrUnsupported) || !strings.Contains(err.Error(), "only forwards by nat") {
			t.Errorf("forward %s: %v", fwd, err)
		}
	}
	s = base
	s.Scheduler = "bogus"
	if err := (&Backend{}).Validate(s); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("bogus scheduler: %v", err)
	}
}
