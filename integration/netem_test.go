package integration

import (
	"os/exec"
	"regexp"
	"strconv"
	"testing"

	"github.com/circuit-cni/circuit/pkg/qos"
	"github.com/circuit-cni/circuit/pkg/testutil"
)

// The seed's delay example, for real: a ping from a runc container rises by
// the delay once. Needs the kernel's netem: it runs in the VM tier.
func TestQoSNetemRunc(t *testing.T) {
	c := newCLI(t)
	if err := qos.NetemSupported("/proc/self/ns/net"); err != nil {
		t.Skipf("kernel has no sch_netem (the VM tier runs this): %v", err)
	}
	const gw = "10.220.31.1"
	c.must("network", "create", c.conf("sandbox", "10.220.31.0/24"))
	b := testutil.NewBundle(t)
	ctr := b.MustStart(t, testutil.RandName("nm-"))
	c.must("--runc-root", b.Root, "network", "connect", ctr.ID, "sandbox")

	base := minRTT(t, ctr, gw, 5)
	if out := c.must("network", "qos", "set", "--delay", "50ms", "sandbox"); out != "qos configured for sandbox\n" {
		t.Fatalf("qos set printed %q", out)
	}
	delayed := minRTT(t, ctr, gw, 5)
	t.Logf("RTT to the gateway (minimum of 5): %.2f ms unshaped, %.2f ms with --delay 50ms", base, delayed)
	if d := delayed - base; d < 45 || d > 60 {
		t.Fatalf("--delay 50ms raised the RTT by %.1f ms, want 45-60", d)
	}

	// Rate and delay together: the rate holds and the delay stays.
	c.must("network", "qos", "set", "--rate", "5000", "sandbox")
	if d := minRTT(t, ctr, gw, 5) - base; d < 45 || d > 70 {
		t.Fatalf("with rate and delay the RTT rose by %.1f ms, want 45-70", d)
	}
	if _, err := exec.LookPath("iperf3"); err == nil {
		mbps := testutil.MustIperf(t, ctr.PID, gw, false)
		t.Logf("--rate 5000 --delay 50ms: %.2f Mbit/s", mbps)
		if mbps < 2 || mbps > 6.5 {
			t.Fatalf("rate with delay: %.2f Mbit/s, want 2-6.5", mbps)
		}
	}

	// Loss replaces the delay; about a fifth of the pings are lost.
	c.must("network", "qos", "set", "--loss", "20%", "sandbox")
	out, _ := nsPing(ctr, "-c", "200", "-i", "0.01", "-q", "-W", "1", gw)
	m := regexp.MustCompile(`(\d+) (?:packets )?received`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("ping output: %s", out)
	}
	got, _ := strconv.Atoi(string(m[1]))
	loss := 100 - float64(got)/2
	t.Logf("--loss 20%%: %.1f%% of 200 pings lost", loss)
	if loss < 8 || loss > 35 {
		t.Fatalf("--loss 20%%: %.1f%% lost, want 8-35", loss)
	}

	c.must("network", "qos", "reset", "sandbox")
	if d := minRTT(t, ctr, gw, 5) - base; d > 10 {
		t.Fatalf("after reset the RTT is still %.1f ms above the baseline", d)
	}
}

// nsPing runs the host's ping (iputils, which takes short intervals) in a
// container's network namespace.
func nsPing(ctr *testutil.Container, args ...string) ([]byte, error) {
	return exec.Command("nsenter", append([]string{"-t", strconv.Itoa(ctr.PID), "-n", "ping"}, args...)...).CombinedOutput()
}

// minRTT pings from inside a container and returns the minimum in ms.
func minRTT(t *testing.T, ctr *testutil.Container, addr string, n int) float64 {
	t.Helper()
	out, err := nsPing(ctr, "-c", strconv.Itoa(n), "-i", "0.2", "-q", addr)
	if err != nil {
		t.Fatalf("ping %s: %v\n%s", addr, err, out)
	}
	// The minimum: netem delays every packet, while a loaded (or
	// emulated) machine only ever adds to some.
	m := regexp.MustCompile(`= ([\d.]+)/[\d.]+/`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no RTT in ping output:\n%s", out)
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}
