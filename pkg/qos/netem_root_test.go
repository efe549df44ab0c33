package qos

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/circuit-cni/circuit/api"
)

// hasNetem reports whether the kernel has sch_netem, failing on an
// inconclusive probe.
func hasNetem(t *testing.T, path string) bool {
	t.Helper()
	err := NetemSupported(path)
	if err != nil && !errors.Is(err, api.ErrUnsupported) {
		t.Fatalf("NetemSupported: %v", err)
	}
	return err == nil
}

// TestNetemUnsupported runs where the kernel lacks sch_netem: every policy
// that needs it must be refused without changing anything.
func TestNetemUnsupported(t *testing.T) {
	p := newPair(t, "qa0", "qb0")
	if hasNetem(t, p.pathA) {
		t.Skip("kernel has sch_netem; TestNetem covers it")
	}
	err := NetemSupported(p.pathA)
	if !strings.Contains(err.Error(), "sch_netem") {
		t.Errorf("NetemSupported error %q should name sch_netem", err)
	}

	refuse := func(t *testing.T) {
		t.Helper()
		for _, pol := range []Policy{
			{Delay: 50 * time.Millisecond},
			{Rate: 1_000_000, Delay: 50 * time.Millisecond},
			{Rate: 2_000_000, Ceiling: 3_000_000, Loss: 1, Direction: Both},
			{Jitter: time.Millisecond, Delay: 5 * time.Millisecond, Direction: Ingress},
		} {
			before := snapshotNS(t, p.nsA)
			err := Apply(p.pathA, p.ifA, pol)
			if !errors.Is(err, api.ErrUnsupported) {
				t.Fatalf("Apply(%+v) = %v, want ErrUnsupported", pol, err)
			}
			want := "apply qos to qa0: delay, jitter and loss need the kernel's netem qdisc (sch_netem), which this kernel does not have"
			if err.Error() != want {
				t.Errorf("error %q, want %q", err, want)
			}
			if after := snapshotNS(t, p.nsA); after != before {
				t.Fatalf("refused Apply(%+v) changed the netns:\nbefore:\n%s\nafter:\n%s", pol, before, after)
			}
		}
	}
	t.Run("pristine interface", refuse)

	mustApply(t, p.pathA, p.ifA, Policy{Rate: 5_000_000, Direction: Both})
	t.Run("over a previous circuit rate policy", refuse)
	if c := tcShow(t, p.nsA, "class", "show", "dev", p.ifA); !strings.Contains(c, "rate 5Mbit ceil 5Mbit") {
		t.Errorf("previous policy not intact:\n%s", c)
	}
}

// TestNetem runs where the kernel has sch_netem (the VM test tier).
func TestNetem(t *testing.T) {
	p := newPair(t, "qa0", "qb0")
	if !hasNetem(t, p.pathA) {
		t.Skip("kernel has no sch_netem")
	}
	base, _ := ping(t, p.nsA, p.ipB, "-c", "5", "-i", "0.2")
	t.Logf("baseline RTT %.2f ms", base)

	assertDelay := func(t *testing.T, from, to string) {
		t.Helper()
		rtt, _ := ping(t, from, to, "-c", "5", "-i", "0.2")
		t.Logf("RTT %.2f ms (baseline %.2f)", rtt, base)
		if d := rtt - base; d < 45 || d > 60 {
			t.Errorf("delay 50ms raised RTT by %.1f ms, want 45-60", d)
		}
	}

	t.Run("delay 50ms", func(t *testing.T) {
		mustApply(t, p.pathA, p.ifA, Policy{Delay: 50 * time.Millisecond})
		if q := tcShow(t, p.nsA, "qdisc", "show", "dev", p.ifA); !strings.Contains(q, "qdisc netem c1c0: root") {
			t.Errorf("want netem as circuit's root:\n%s", q)
		}
		assertDelay(t, p.nsA, p.ipB)
	})

	t.Run("delay 50ms and rate 5000kbit", func(t *testing.T) {
		mustApply(t, p.pathA, p.ifA, Policy{Rate: 5_000_000, Delay: 50 * time.Millisecond})
		q := tcShow(t, p.nsA, "qdisc", "show", "dev", p.ifA)
		if !strings.Contains(q, "qdisc htb c1c0: root") || !strings.Contains(q, "qdisc netem c1c1: parent c1c0:10") {
			t.Errorf("want htb with a netem leaf:\n%s", q)
		}
		assertDelay(t, p.nsA, p.ipB)
		assertMbit(t, p, p.nsA, p.nsB, p.ipB, 3, 3, 6.5)
	})

	t.Run("rate only again drops netem", func(t *testing.T) {
		mustApply(t, p.pathA, p.ifA, Policy{Rate: 5_000_000})
		if q := tcShow(t, p.nsA, "qdisc", "show", "dev", p.ifA); strings.Contains(q, "netem") {
			t.Errorf("netem left behind:\n%s", q)
		}
		rtt, _ := ping(t, p.nsA, p.ipB, "-c", "3", "-i", "0.2")
		if rtt-base > 10 {
			t.Errorf("RTT %.1f ms still delayed", rtt)
		}
	})

	t.Run("loss 20%", func(t *testing.T) {
		mustApply(t, p.pathA, p.ifA, Policy{Loss: 20})
		_, loss := ping(t, p.nsA, p.ipB, "-i", "0.01", "-c", "200")
		t.Logf("loss %.1f%%", loss)
		if loss < 8 || loss > 35 {
			t.Errorf("loss 20%% dropped %.1f%% of 200 pings, want 8-35%%", loss)
		}
		eg, _, err := Stats(p.pathA, p.ifA)
		if err != nil || eg == nil || eg.Drops == 0 {
			t.Errorf("Stats after loss = %+v, %v; want drops", eg, err)
		}
	})

	t.Run("ingress delay 50ms", func(t *testing.T) {
		if err := Reset(p.pathA, p.ifA); err != nil {
			t.Fatal(err)
		}
		mustApply(t, p.pathB, p.ifB, Policy{Delay: 50 * time.Millisecond, Direction: Ingress})
		assertDelay(t, p.nsA, p.ipB)
		if err := Reset(p.pathB, p.ifB); err != nil {
			t.Fatal(err)
		}
	})

	if err := Reset(p.pathA, p.ifA); err != nil {
		t.Fatal(err)
	}
	assertClean(t, p.nsA)
	assertClean(t, p.nsB)
}
