package nftables

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/pkg/lb/internal/lbtest"
	"github.com/circuit-cni/circuit/pkg/lb/internal/spec"
)

func addrs(n int) []weighted {
	out := make([]weighted, n)
	for i := range out {
		out[i] = weighted{netip.MustParseAddrPort(fmt.Sprintf("10.0.0.%d:80", i+1)), 1}
	}
	return out
}

func TestSlotCount(t *testing.T) {
	for _, tt := range []struct {
		live int
		want uint32
	}{{0, 60}, {1, 60}, {60, 60}, {61, 120}, {240, 240}, {241, 480}, {maxSlots, maxSlots}} {
		if got, err := slotCount(tt.live); err != nil || got != tt.want {
			t.Errorf("slotCount(%d) = %d, %v; want %d", tt.live, got, err, tt.want)
		}
	}
	if _, err := slotCount(maxSlots + 1); err == nil {
		t.Errorf("slotCount(%d) succeeded", maxSlots+1)
	}
}

// rr hands out the slots in turn: with 60 slots, exact for the counts
// that divide 60, and off by at most one slot for the others.
func TestAssignRR(t *testing.T) {
	for n := 1; n <= 60; n++ {
		got := assign(addrs(n), 60, false, 1)
		count := make([]int, n)
		for _, i := range got {
			count[i]++
		}
		for i, c := range count {
			if c < 60/n || c > 60/n+1 {
				t.Fatalf("%d targets: target %d has %d slots", n, i, c)
			}
		}
		if 60%n == 0 {
			for k, i := range got {
				if i != k%n {
					t.Fatalf("%d targets: slot %d -> %d, want strict turns %v", n, k, i, got)
				}
			}
		}
	}
}

// wrr shares follow the weights (3:1 -> 45:15), interleaved; every live
// target gets a slot however small its weight.
func TestAssignWeights(t *testing.T) {
	l := addrs(2)
	l[0].weight = 3
	got := assign(l, 60, false, 1)
	if c := strings.Count(fmt.Sprint(got), "1"); c != 15 {
		t.Errorf("3:1 gave target 1 %d slots, want 15: %v", c, got)
	}
	if got[0] != 0 || got[1] != 0 || got[2] != 1 {
		t.Errorf("3:1 not interleaved: %v", got)
	}
	l[0].weight = api.MaxWeight
	if q := quotas(l, 60); q[1] != 1 || q[0] != 59 {
		t.Errorf("quotas 65535:1 = %v, want [59 1]", q)
	}
	many := addrs(60)
	many[0].weight = 1000
	q := quotas(many, 60)
	sum := 0
	for _, n := range q {
		if n < 1 {
			t.Fatalf("a live target got no slot: %v", q)
		}
		sum += n
	}
	if sum != 60 {
		t.Errorf("quotas sum to %d: %v", sum, q)
	}
}

// sh keeps clients in place: removing one of five targets moves only the
// slots it had and the few the new quotas need.
func TestAssignStable(t *testing.T) {
	five := addrs(5)
	before := assign(five, 60, true, 7)
	after := assign(append(append([]weighted{}, five[:2]...), five[3:]...), 60, true, 7)
	moved := 0
	for k := range before {
		was := five[before[k]].addr
		now := append(append([]weighted{}, five[:2]...), five[3:]...)[after[k]].addr
		if was != now && was != five[2].addr {
			moved++
		}
	}
	if moved > 6 {
		t.Errorf("removing one of 5 targets moved %d slots of the others (of 48)", moved)
	}
	if again := assign(five, 60, true, 7); !cmp.Equal(again, before) {
		t.Error("the same targets gave another assignment")
	}
}

func TestNextRoster(t *testing.T) {
	a, b, c, d := netip.MustParseAddrPort("10.0.0.1:80"), netip.MustParseAddrPort("10.0.0.2:80"),
		netip.MustParseAddrPort("10.0.0.3:80"), netip.MustParseAddrPort("10.0.0.4:80")
	old := []entry{{a, 1}, {b, 1}, {c, 1}}
	pt := func(ap netip.AddrPort, w int) spec.ParsedTarget { return spec.ParsedTarget{Addr: ap, Weight: w} }
	for _, tt := range []struct {
		want []spec.ParsedTarget
		got  []entry
	}{
		{[]spec.ParsedTarget{pt(c, 1), pt(b, 1), pt(a, 1), pt(d, 2)}, []entry{{a, 1}, {b, 1}, {c, 1}, {d, 2}}}, // append
		{[]spec.ParsedTarget{pt(b, 1), pt(c, 1)}, []entry{{c, 1}, {b, 1}}},                                     // the last fills the hole
		{[]spec.ParsedTarget{pt(a, 1), pt(b, 0), pt(c, 1)}, []entry{{a, 1}, {b, 0}, {c, 1}}},                   // drain in place
		{nil, []entry{}},
	} {
		if got := nextRoster(old, tt.want); !cmp.Equal(got, tt.got, cmp.AllowUnexported(entry{}), cmp.Comparer(func(x, y netip.AddrPort) bool { return x == y })) {
			t.Errorf("nextRoster(%v) = %v, want %v", tt.want, got, tt.got)
		}
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
		if got, w, ok := parseRosterData(rosterData(ap, 7)); !ok || got != ap || w != 7 {
			t.Errorf("parseRosterData(rosterData(%v, 7)) = %v, %d, %v", ap, got, w, ok)
		}
		if got, p, ok := parseTupleKey(tupleKey(ap, 17)); !ok || got != ap || p != 17 {
			t.Errorf("parseTupleKey(tupleKey(%v)) = %v, %d, %v", ap, got, p, ok)
		}
		for _, h := range []header{{slots: 60}, {slots: 480, hash: true, weighted: true, persistence: 3600}} {
			if got, ok := parseHeaderData(headerData(h, ap.Addr().Is6())); !ok || got != h {
				t.Errorf("header %+v read back as %+v", h, got)
			}
		}
		if n := len(slotKey(ap, 6, 3)); n != len(tupleKey(ap, 6))+4 {
			t.Errorf("slotKey length %d", n)
		}
	}
}

func TestComment(t *testing.T) {
	svc := spec.Service{Name: "web", Address: "[fd00::1]:443", Protocol: "udp", Scheduler: "sh"}
	lbtest.SetPersistence(&svc.Persistence, 90*time.Second)
	s, err := spec.Parse(svc)
	if err != nil {
		t.Fatal(err)
	}
	c := serviceComment(s)
	if len(c) > 255 {
		t.Fatalf("comment too long for nft: %d", len(c))
	}
	want := recorded{vip: s.VIP, proto: 17, scheduler: "sh", persistence: 90 * time.Second}
	if r, ok := parseComment(c); !ok || r != want {
		t.Errorf("parseComment(%q) = %+v, %v; want %+v", c, r, ok, want)
	}
	// What the first layout wrote.
	v1 := "circuit service web 10.0.0.1:80 tcp rr 0"
	if r, ok := parseComment(v1); !ok || !r.v1 || r.vip != netip.MustParseAddrPort("10.0.0.1:80") || r.proto != 6 {
		t.Errorf("parseComment(%q) = %+v, %v", v1, r, ok)
	}
	if _, ok := parseComment("something else"); ok {
		t.Error("parsed a foreign comment")
	}
}

func TestNames(t *testing.T) {
	got := []string{serviceChain("web"), counterName("web"), pickChain("web"), stickChain("web"), affinityMap("web"),
		servicesMap(false), slotsMap(true, 3), v1TargetChain("web.v2", netip.MustParseAddrPort("[fd00::2]:80"))}
	want := []string{"svc-web", "svc-web", fmt.Sprintf("pick-%d", groupOf("web")), fmt.Sprintf("stick-%d", groupOf("web")),
		"aff-web", "services4", "slots6-3", "svc-web.v2/fd00..2/80"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("names (-want +got):\n%s", diff)
	}
	if s := shardOf(strings.Repeat("x", 63)); s >= slotShards {
		t.Errorf("shard %d", s)
	}
}

func TestParseReplies(t *testing.T) {
	// An error (ENOENT) for request 7, then an ack of request 8.
	msg := func(typ uint16, errno int32, seq uint32) []byte {
		b := make([]byte, 16+4+16)
		le := func(o int, v uint32) { b[o], b[o+1], b[o+2], b[o+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24) }
		le(0, uint32(len(b)))
		b[4], b[5] = byte(typ), byte(typ>>8)
		le(20, 16)
		le(16, uint32(-errno))
		le(20+8, seq)
		return b
	}
	rs, err := parseReplies(append(msg(2, 2, 7), msg(2, 0, 8)...))
	if err != nil || len(rs) != 2 || rs[0].errno != 2 || rs[0].seq != 7 || !rs[1].ack || rs[1].errno != 0 || rs[1].seq != 8 {
		t.Errorf("parseReplies = %+v, %v", rs, err)
	}
	if _, err := parseReplies([]byte{200, 0, 0, 0, 1, 2}); err != nil {
		t.Errorf("a short tail should be ignored, got %v", err)
	}
}

func TestValidate(t *testing.T) {
	base := spec.Service{Name: "web", Address: "10.0.0.1:80",
		Targets: []spec.Target{{Address: "10.0.1.1:80", Weight: 3}, {Address: "10.0.1.2:80", Weight: 0}}}
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
	for _, fwd := range []string{"dr", "tunnel"} {
		s := base
		s.Targets = []spec.Target{{Address: "10.0.1.1:80", Forward: fwd, Weight: 1}}
		if err := (&Backend{}).Validate(s); !errors.Is(err, api.ErrUnsupported) || !strings.Contains(err.Error(), "only forwards by nat") {
			t.Errorf("forward %s: %v", fwd, err)
		}
	}
	s := base
	s.Targets = []spec.Target{{Address: "10.0.1.1:80", Weight: -1}}
	if err := (&Backend{}).Validate(s); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("weight -1: %v", err)
	}
}
