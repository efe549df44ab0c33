package qos

import (
	"strings"
	"testing"
)

// TestShapeThroughput shapes a veth between two netns and measures it.
// The measurements run in sequence on one pair so they do not compete
// for the CPU.
func TestShapeThroughput(t *testing.T) {
	p := newPair(t, "qa0", "qb0")

	t.Run("unshaped", func(t *testing.T) {
		assertMbit(t, p, p.nsA, p.nsB, p.ipB, 2, 100, 1e9)
	})

	egress := Policy{Rate: 5_000_000, Ceiling: 6_000_000}
	if err := Apply(p.pathA, p.ifA, egress); err != nil {
		t.Fatal(err)
	}
	classes := tcShow(t, p.nsA, "-s", "class", "show", "dev", p.ifA)
	if !strings.Contains(classes, "class htb c1c0:10 parent c1c0:1") || !strings.Contains(classes, "rate 5Mbit ceil 6Mbit") {
		t.Fatalf("tc class show lacks circuit's leaf class at rate 5Mbit ceil 6Mbit:\n%s", classes)
	}
	t.Run("egress 5000kbit ceil 6000kbit", func(t *testing.T) {
		assertMbit(t, p, p.nsA, p.nsB, p.ipB, 3, 3, 6.5)
		eg, in, err := Stats(p.pathA, p.ifA)
		if err != nil || eg == nil || in != nil {
			t.Fatalf("Stats = %+v, %+v, %v; want egress counters only", eg, in, err)
		}
		if eg.Bytes < 1_000_000 || eg.Packets == 0 || eg.Overlimits == 0 {
			t.Errorf("egress counters %+v: want traffic and overlimits after a shaped run", *eg)
		}
	})

	if err := Apply(p.pathA, p.ifA, Policy{Rate: 10_000_000}); err != nil {
		t.Fatalf("second Apply: %v", err)
	}
	if c := tcShow(t, p.nsA, "class", "show", "dev", p.ifA); !strings.Contains(c, "rate 10Mbit ceil 10Mbit") {
		t.Fatalf("second Apply did not replace the class:\n%s", c)
	}
	t.Run("egress replaced by 10000kbit", func(t *testing.T) {
		assertMbit(t, p, p.nsA, p.nsB, p.ipB, 3, 7, 11)
	})

	if err := Reset(p.pathA, p.ifA); err != nil {
		t.Fatal(err)
	}
	ingress := Policy{Rate: 5_000_000, Direction: Ingress}
	if err := Apply(p.pathB, p.ifB, ingress); err != nil {
		t.Fatal(err)
	}
	t.Run("ingress 5000kbit on the receiver", func(t *testing.T) {
		assertMbit(t, p, p.nsA, p.nsB, p.ipB, 3, 3, 6.5)
		eg, in, err := Stats(p.pathB, p.ifB)
		if err != nil || eg != nil || in == nil || in.Bytes < 1_000_000 {
			t.Fatalf("Stats = %+v, %+v, %v; want ingress counters with traffic only", eg, in, err)
		}
	})

	for _, s := range []struct{ path, dev string }{{p.pathA, p.ifA}, {p.pathB, p.ifB}} {
		if err := Reset(s.path, s.dev); err != nil {
			t.Fatal(err)
		}
	}
	for _, ns := range []string{p.nsA, p.nsB} {
		assertClean(t, ns)
	}
	t.Run("reset restores full speed", func(t *testing.T) {
		assertMbit(t, p, p.nsA, p.nsB, p.ipB, 2, 100, 1e9)
	})
}

// assertClean checks ns holds nothing of circuit's.
func assertClean(t *testing.T, ns string) {
	t.Helper()
	q := tcShow(t, ns, "qdisc", "show")
	for _, h := range []string{"c1c0:", "c1c1:", "ingress ffff:"} {
		if strings.Contains(q, h) {
			t.Errorf("netns %s still has %q:\n%s", ns, h, q)
		}
	}
	if l := run(t, "ip", "-n", ns, "-o", "link", "show"); strings.Contains(l, ifbPrefix) || strings.Contains(l, "cprobe") {
		t.Errorf("netns %s still has a circuit device:\n%s", ns, l)
	}
}
