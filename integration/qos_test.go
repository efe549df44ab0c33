package integration

import (
	"encoding/json"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/circuit-cni/circuit/pkg/qos"
	"github.com/circuit-cni/circuit/pkg/testutil"
)

// The seed's QoS walkthrough against real runc containers on a bridge,
// measured with iperf3 between each container and the bridge's gateway
// address on the host. Subtests run in order and share the containers:
// each one starts from the state the previous one left.
func TestQoSRuncBridge(t *testing.T) {
	c := newCLI(t)
	testutil.RequireIperf(t)
	const gw = "10.220.30.1"
	if out := c.must("network", "create", c.conf("sandbox", "10.220.30.0/24")); out != "sandbox created\n" {
		t.Fatalf("create printed %q", out)
	}
	b := testutil.NewBundle(t)
	// Peers are listed sorted by container ID; the prefixes fix the order
	// qa < qb < qc, so a failure on qc has qa's change to roll back.
	a := b.MustStart(t, testutil.RandName("qa-"))
	c.must("--runc-root", b.Root, "network", "connect", a.ID, "sandbox")
	var bb, cc *testutil.Container // connected by later subtests

	// Containers a subtest starts must outlive it: their cleanup belongs
	// to the whole test.
	top := t
	start := func(t *testing.T, prefix string) *testutil.Container {
		t.Helper()
		ctr, err := b.Start(top, testutil.RandName(prefix))
		if err != nil {
			t.Fatalf("runc run: %v", err)
		}
		qmust(t, c, "--runc-root", b.Root, "network", "connect", ctr.ID, "sandbox")
		return ctr
	}
	step := func(name string, f func(t *testing.T)) {
		if !t.Run(name, f) {
			t.FailNow() // later steps build on this one's state
		}
	}

	step("unshaped", func(t *testing.T) {
		mbps := testutil.MustIperf(t, a.PID, gw, false)
		t.Logf("unshaped egress: %.1f Mbit/s", mbps)
		if mbps <= 100 {
			t.Fatalf("unshaped egress %.1f Mbit/s, want > 100", mbps)
		}
		if q := tcState(t, a.PID); strings.Contains(q, "c1c0:") || strings.Contains(q, "cifb") {
			t.Fatalf("circuit's qdiscs present before any qos set:\n%s", q)
		}
	})

	step("rate 5000 ceiling 6000", func(t *testing.T) {
		if out := qmust(t, c, "network", "qos", "set", "--rate", "5000", "--ceiling", "6000", "sandbox"); out != "qos configured for sandbox\n" {
			t.Fatalf("qos set printed %q", out)
		}
		// A single flow has the link to itself, so the HTB leaf borrows
		// from its parent up to the ceiling: expect ~5.7 Mbit/s, not the
		// 5 Mbit/s rate. The upper bound is the 6 Mbit/s ceiling plus the
		// slack of HTB's burst over a 2 s run.
		mbps := testutil.MustIperf(t, a.PID, gw, false)
		t.Logf("rate 5000 ceiling 6000 egress: %.2f Mbit/s", mbps)
		inRange(t, "egress with --rate 5000 --ceiling 6000", mbps, 3, 6.5)
	})

	step("second set replaces the rate pair", func(t *testing.T) {
		if out := qmust(t, c, "network", "qos", "set", "--rate", "10000", "sandbox"); out != "qos configured for sandbox\n" {
			t.Fatalf("qos set printed %q", out)
		}
		mbps := testutil.MustIperf(t, a.PID, gw, false)
		t.Logf("rate 10000 egress: %.2f Mbit/s", mbps)
		inRange(t, "egress with --rate 10000", mbps, 7, 11)
		// --rate and --ceiling are replaced as a pair: the old ceiling is
		// gone, not kept above the new rate.
		row := showRow(t, c, a.ID)
		if row.Policy == nil || row.Policy.Rate != 10_000_000 || row.Policy.Ceiling != 0 {
			t.Fatalf("qos show policy after the second set = %+v, want rate 10000000 and no ceiling", row.Policy)
		}
	})

	step("later container inherits", func(t *testing.T) {
		bb = start(t, "qb-")
		mbps := testutil.MustIperf(t, bb.PID, gw, false)
		t.Logf("container connected after the set, egress: %.2f Mbit/s", mbps)
		inRange(t, "egress of a container connected after qos set", mbps, 7, 11)
	})

	step("container override", func(t *testing.T) {
		if out := qmust(t, c, "network", "qos", "set", "--container", bb.ID, "--rate", "2000", "sandbox"); out != "qos configured for sandbox\n" {
			t.Fatalf("qos set --container printed %q", out)
		}
		got := measureAll(t, []measurement{{a.PID, false}, {bb.PID, false}}, gw)
		t.Logf("override: %s (network 10000) %.2f Mbit/s, %s (--rate 2000) %.2f Mbit/s", a.ID, got[0], bb.ID, got[1])
		inRange(t, "egress of the overridden container", got[1], 1.5, 2.5)
		inRange(t, "egress of the other container", got[0], 7, 11)
	})

	step("show json", func(t *testing.T) {
		rows := showQoS(t, c)
		if len(rows) != 2 {
			t.Fatalf("qos show lists %d peers, want 2: %+v", len(rows), rows)
		}
		want := map[string]struct {
			source string
			rate   uint64
			pid    int
		}{a.ID: {"network", 10_000_000, a.PID}, bb.ID: {"container", 2_000_000, bb.PID}}
		for _, r := range rows {
			w, ok := want[r.ContainerID]
			if !ok {
				t.Fatalf("qos show lists unknown container %q", r.ContainerID)
			}
			if r.Source != w.source || r.Policy == nil || r.Policy.Rate != w.rate || r.PID != w.pid || r.IfName != "eth0" || r.Error != "" {
				t.Errorf("qos show %s: %+v (policy %+v), want source %s, rate %d, pid %d, eth0", r.ContainerID, r, r.Policy, w.source, w.rate, w.pid)
			}
			// Both carried an iperf3 run through circuit's egress tree.
			if r.Egress == nil || r.Egress.Bytes == 0 || r.Egress.Packets == 0 {
				t.Errorf("qos show %s: egress counters %+v, want non-zero", r.ContainerID, r.Egress)
			}
			if r.Ingress != nil {
				t.Errorf("qos show %s: ingress counters %+v for an egress-only policy", r.ContainerID, r.Ingress)
			}
		}
	})

	step("delay refused without netem", func(t *testing.T) {
		if netemAvailable(t) {
			t.Skip("this kernel has netem (VM tier): --delay is accepted here")
		}
		beforeA, beforeB := tcState(t, a.PID), tcState(t, bb.PID)
		beforeInspect := qmust(t, c, "network", "inspect", "sandbox")
		for _, args := range [][]string{
			{"--delay", "50ms"},
			{"--rate", "3000", "--delay", "50ms"},
			{"--container", bb.ID, "--delay", "50ms"},
		} {
			full := append(append([]string{"network", "qos", "set"}, args...), "sandbox")
			out, stderr := mustFail(t, c, full...)
			if out != "" {
				t.Errorf("%v printed %q on stdout", args, out)
			}
			if lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n"); len(lines) != 1 || !strings.Contains(stderr, "sch_netem") {
				t.Errorf("%v: stderr is not one line naming sch_netem:\n%s", args, stderr)
			}
			t.Logf("%v refused: %s", args, strings.TrimSpace(stderr))
		}
		if got := tcState(t, a.PID); got != beforeA {
			t.Errorf("%s's traffic control changed:\nbefore:\n%s\nafter:\n%s", a.ID, beforeA, got)
		}
		if got := tcState(t, bb.PID); got != beforeB {
			t.Errorf("%s's traffic control changed:\nbefore:\n%s\nafter:\n%s", bb.ID, beforeB, got)
		}
		if got := qmust(t, c, "network", "inspect", "sandbox"); got != beforeInspect {
			t.Errorf("network inspect changed:\nbefore:\n%s\nafter:\n%s", beforeInspect, got)
		}
		// The netem probe's throwaway device is gone from the host too.
		if out, _ := exec.Command("ip", "-o", "link", "show").CombinedOutput(); strings.Contains(string(out), "cprobe") {
			t.Errorf("netem probe device left on the host:\n%s", out)
		}
	})

	step("ingress", func(t *testing.T) {
		beforeB := tcState(t, bb.PID)
		qmust(t, c, "network", "qos", "set", "--direction", "ingress", "--rate", "5000", "sandbox")
		in := testutil.MustIperf(t, a.PID, gw, true)
		out := testutil.MustIperf(t, a.PID, gw, false)
		t.Logf("--direction ingress --rate 5000: host->container %.2f Mbit/s, container->host %.1f Mbit/s", in, out)
		// The ceiling defaults to the rate: ~4.8 Mbit/s.
		inRange(t, "ingress with --direction ingress --rate 5000", in, 3, 6.5)
		if out <= 100 {
			t.Errorf("egress %.1f Mbit/s under an ingress-only policy, want > 100", out)
		}
		q := tcState(t, a.PID)
		if !strings.Contains(q, "c1c0: dev cifb-eth0 root") || strings.Contains(q, "c1c0: dev eth0") {
			t.Errorf("want circuit's tree on cifb-eth0 only:\n%s", q)
		}
		// The override keeps shaping its container alone.
		if got := tcState(t, bb.PID); got != beforeB {
			t.Errorf("%s (own policy) changed with the network's:\nbefore:\n%s\nafter:\n%s", bb.ID, beforeB, got)
		}
		row := showRow(t, c, a.ID)
		if row.Policy == nil || row.Policy.Direction != "ingress" || row.Policy.Rate != 5_000_000 {
			t.Errorf("qos show %s: policy %+v, want ingress at 5000000", a.ID, row.Policy)
		}
		if row.Ingress == nil || row.Ingress.Bytes == 0 || row.Egress != nil {
			t.Errorf("qos show %s: egress %+v ingress %+v, want ingress counters only", a.ID, row.Egress, row.Ingress)
		}
	})

	step("foreign qdisc", func(t *testing.T) {
		cc = start(t, "qc-")
		nsenter(t, cc.PID, "tc", "qdisc", "replace", "dev", "eth0", "root", "handle", "1:", "htb")
		beforeA, beforeB, beforeC := tcState(t, a.PID), tcState(t, bb.PID), tcState(t, cc.PID)
		beforeInspect := qmust(t, c, "network", "inspect", "sandbox")
		// Both directions: qa gets an egress tree and a new ingress rate
		// before qc's egress refuses, so qa has two things to roll back.
		// (The direction must be given: a set keeps the one in place.)
		out, stderr := mustFail(t, c, "network", "qos", "set", "--direction", "both", "--rate", "4000", "sandbox")
		if out != "" {
			t.Errorf("failed set printed %q on stdout", out)
		}
		if lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n"); len(lines) != 1 ||
			!strings.Contains(stderr, cc.ID) || !strings.Contains(stderr, "htb 1:") {
			t.Errorf("stderr does not name the container and the foreign qdisc in one line:\n%s", stderr)
		}
		t.Logf("refused: %s", strings.TrimSpace(stderr))
		// qa was shaped before qc failed: it must be back as it was.
		for _, s := range []struct{ id, before, after string }{
			{a.ID, beforeA, tcState(t, a.PID)}, {bb.ID, beforeB, tcState(t, bb.PID)}, {cc.ID, beforeC, tcState(t, cc.PID)},
		} {
			if s.after != s.before {
				t.Errorf("%s's traffic control changed by a failed set:\nbefore:\n%s\nafter:\n%s", s.id, s.before, s.after)
			}
		}
		if !strings.Contains(beforeC, "qdisc htb 1: dev eth0 root") {
			t.Errorf("the foreign qdisc is not there:\n%s", beforeC)
		}
		if got := qmust(t, c, "network", "inspect", "sandbox"); got != beforeInspect {
			t.Errorf("network inspect changed by a failed set:\nbefore:\n%s\nafter:\n%s", beforeInspect, got)
		}
		// The ingress policy still holds on qa after the rollback.
		in := testutil.MustIperf(t, a.PID, gw, true)
		t.Logf("after the rolled-back set: host->container %.2f Mbit/s", in)
		inRange(t, "ingress after the rolled-back set", in, 3, 6.5)
	})

	step("reset", func(t *testing.T) {
		if out := qmust(t, c, "network", "qos", "reset", "sandbox"); out != "qos reset for sandbox\n" {
			t.Fatalf("qos reset printed %q", out)
		}
		got := measureAll(t, []measurement{{a.PID, true}, {bb.PID, false}}, gw)
		t.Logf("after reset: %s host->container %.1f Mbit/s, %s container->host %.1f Mbit/s", a.ID, got[0], bb.ID, got[1])
		if got[0] <= 100 || got[1] <= 100 {
			t.Errorf("after reset: %.1f and %.1f Mbit/s, want both > 100", got[0], got[1])
		}
		for _, ctr := range []*testutil.Container{a, bb, cc} {
			q := tcState(t, ctr.PID)
			links := nsenter(t, ctr.PID, "ip", "-o", "link", "show")
			if strings.Contains(q, "c1c0:") || strings.Contains(q, "cifb") || strings.Contains(links, "cifb") {
				t.Errorf("%s keeps circuit's traffic control after reset:\n%s\n%s", ctr.ID, q, links)
			}
		}
		if q := tcState(t, cc.PID); !strings.Contains(q, "qdisc htb 1: dev eth0 root") {
			t.Errorf("reset removed the foreign qdisc of %s:\n%s", cc.ID, q)
		}
		for _, r := range showQoS(t, c) {
			if r.Source != "none" || r.Policy != nil {
				t.Errorf("qos show %s after reset: source %s policy %+v", r.ContainerID, r.Source, r.Policy)
			}
		}
	})
}

// qosRow is one element of `network qos show --format json`.
type qosRow struct {
	ContainerID string `json:"containerID"`
	PID         int    `json:"pid"`
	IfName      string `json:"ifname"`
	Source      string `json:"source"`
	Policy      *struct {
		Rate      uint64 `json:"rate"`
		Ceiling   uint64 `json:"ceiling"`
		Direction string `json:"direction"`
	} `json:"policy"`
	Egress, Ingress *struct {
		Bytes   uint64 `json:"bytes"`
		Packets uint64 `json:"packets"`
	}
	Error string `json:"error"`
}

func showQoS(t *testing.T, c *cli) []qosRow {
	t.Helper()
	out := qmust(t, c, "network", "qos", "show", "--format", "json", "sandbox")
	var rows []qosRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("qos show --format json: %v\n%s", err, out)
	}
	return rows
}

func showRow(t *testing.T, c *cli, id string) qosRow {
	t.Helper()
	for _, r := range showQoS(t, c) {
		if r.ContainerID == id {
			return r
		}
	}
	t.Fatalf("qos show does not list %s", id)
	return qosRow{}
}

type measurement struct {
	pid     int
	reverse bool
}

// measureAll runs iperf3 for several containers at once (each against its
// own server), to keep the test short; it returns Mbit/s in order.
func measureAll(t *testing.T, ms []measurement, gw string) []float64 {
	t.Helper()
	got := make([]float64, len(ms))
	errs := make([]error, len(ms))
	var wg sync.WaitGroup
	for i, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var bps float64
			bps, errs[i] = testutil.Iperf(m.pid, gw, m.reverse)
			got[i] = bps / 1e6
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return got
}

func inRange(t *testing.T, what string, mbps, lo, hi float64) {
	t.Helper()
	if mbps < lo || mbps > hi {
		t.Errorf("%s: %.2f Mbit/s, want %g-%g", what, mbps, lo, hi)
	}
}

// nsenter runs a command in the network namespace of pid.
func nsenter(t *testing.T, pid int, args ...string) string {
	t.Helper()
	out, err := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(pid), "-n"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("nsenter %d %v: %v\n%s", pid, args, err, out)
	}
	return string(out)
}

// tcState is what traffic control a container has: every qdisc in its
// netns (IFBs included), eth0's classes and its ingress filters. None of
// these listings carries byte counters, so equal means unchanged.
func tcState(t *testing.T, pid int) string {
	t.Helper()
	s := nsenter(t, pid, "tc", "qdisc", "show") +
		"--- classes\n" + nsenter(t, pid, "tc", "class", "show", "dev", "eth0") +
		"--- filters\n" + nsenter(t, pid, "tc", "filter", "show", "dev", "eth0", "ingress")
	// A packet the kernel sends meanwhile (IPv6 neighbour discovery) moves
	// this counter; it is traffic, not configuration.
	return directPackets.ReplaceAllString(s, "direct_packets_stat N")
}

var directPackets = regexp.MustCompile(`direct_packets_stat \d+`)

// mustFail runs circuit expecting a non-zero exit; it returns stdout and stderr.
func mustFail(t *testing.T, c *cli, args ...string) (string, string) {
	t.Helper()
	out, stderr, err := c.run("", args...)
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() == 0 {
		t.Fatalf("circuit %s: err %v, want a non-zero exit\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, stderr)
	}
	return out, stderr
}

// netemAvailable reports whether this kernel has netem, by trying it.
func netemAvailable(t *testing.T) bool {
	t.Helper()
	return qos.NetemSupported("/proc/self/ns/net") == nil
}

// qmust is c.must for subtests: it fails the subtest, not the test c
// belongs to (FailNow must run on the test's own goroutine).
func qmust(t *testing.T, c *cli, args ...string) string {
	t.Helper()
	out, stderr, err := c.run("", args...)
	if err != nil {
		t.Fatalf("circuit %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, stderr)
	}
	return out
}

// A rate below what HTB can shape (one byte per second) is refused by qos
// set with the shaper's own rule, even on a network with no container to
// shape yet: stored, it would break every later connect and start hook.
func TestQoSRateBelowKernelMinimumRefused(t *testing.T) {
	c := newCLI(t)
	c.must("network", "create", c.conf("tiny", "10.220.71.0/24"))
	for _, rate := range []string{"7bit", "0.001"} {
		_, stderr, err := c.run("", "network", "qos", "set", "--rate", rate, "tiny")
		secOneLine(t, "qos set --rate "+rate, err, stderr, "rate")
	}
	if q := c.must("network", "inspect", "tiny", "--format", "{{.QoS}}"); strings.TrimSpace(q) != "<nil>" {
		t.Errorf("a policy was stored: %s", q)
	}
	s := testutil.NewSleeper(t)
	c.must("network", "connect", strconv.Itoa(s.PID), "tiny")
	c.must("network", "disconnect", strconv.Itoa(s.PID), "tiny")
}
