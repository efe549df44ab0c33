package qos

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// pair is two network namespaces joined by a veth pair:
// nsA/ifA has 10.231.N.1/24, nsB/ifB has 10.231.N.2/24.
type pair struct {
	nsA, nsB     string // names under /var/run/netns
	pathA, pathB string
	ifA, ifB     string
	ipA, ipB     string
}

var subnet atomic.Int32

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, veth pairs and qdiscs")
	}
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (iproute2) to build and inspect the test network", tool)
		}
	}
}

// newPair builds the namespaces and link and removes them on cleanup.
func newPair(t *testing.T, ifA, ifB string) *pair {
	t.Helper()
	requireRoot(t)
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	n := 1 + subnet.Add(1)%250
	p := &pair{
		nsA: "cqos-a-" + id, nsB: "cqos-b-" + id,
		ifA: ifA, ifB: ifB,
		ipA: fmt.Sprintf("10.231.%d.1", n), ipB: fmt.Sprintf("10.231.%d.2", n),
	}
	p.pathA, p.pathB = "/var/run/netns/"+p.nsA, "/var/run/netns/"+p.nsB
	for _, ns := range []string{p.nsA, p.nsB} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	}
	run(t, "ip", "link", "add", ifA, "netns", p.nsA, "type", "veth", "peer", "name", ifB, "netns", p.nsB)
	for _, s := range []struct{ ns, dev, ip string }{{p.nsA, ifA, p.ipA}, {p.nsB, ifB, p.ipB}} {
		run(t, "ip", "-n", s.ns, "addr", "add", s.ip+"/24", "dev", s.dev)
		run(t, "ip", "-n", s.ns, "link", "set", s.dev, "up")
		run(t, "ip", "-n", s.ns, "link", "set", "lo", "up")
	}
	// No IPv6 chatter (DAD, router solicitations) to move counters; best
	// effort, as a kernel may lack IPv6.
	for _, ns := range []string{p.nsA, p.nsB} {
		_ = exec.Command("ip", "netns", "exec", ns, "sysctl", "-w", "net.ipv6.conf.all.disable_ipv6=1").Run()
	}
	return p
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// tcShow is `tc <args>` inside ns, e.g. tcShow(t, ns, "qdisc", "show").
func tcShow(t *testing.T, ns string, args ...string) string {
	t.Helper()
	return run(t, "tc", append([]string{"-n", ns}, args...)...)
}

// snapshotNS is everything Apply could touch in ns, for before/after checks.
func snapshotNS(t *testing.T, ns string) string {
	t.Helper()
	s := tcShow(t, ns, "qdisc", "show") + classesOf(t, ns) + filtersOf(t, ns) +
		run(t, "ip", "-n", ns, "-o", "link", "show")
	return counterRe.ReplaceAllString(s, "$1 N")
}

// counterRe matches counters that traffic moves without anyone changing
// the configuration.
var counterRe = regexp.MustCompile(`(direct_packets_stat) \d+`)

func classesOf(t *testing.T, ns string) string {
	var b strings.Builder
	for _, dev := range devices(t, ns) {
		b.WriteString(tcShow(t, ns, "class", "show", "dev", dev))
	}
	return b.String()
}

func filtersOf(t *testing.T, ns string) string {
	var b strings.Builder
	for _, dev := range devices(t, ns) {
		b.WriteString(tcShow(t, ns, "filter", "show", "dev", dev, "ingress"))
	}
	return b.String()
}

func devices(t *testing.T, ns string) []string {
	var devs []string
	for _, l := range strings.Split(run(t, "ip", "-n", ns, "-o", "link", "show"), "\n") {
		f := strings.Fields(l)
		if len(f) > 1 {
			devs = append(devs, strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0])
		}
	}
	return devs
}

// needIperf3 skips the calling (sub)test when iperf3 is missing.
func needIperf3(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Skip("iperf3 not installed (Debian package iperf3): cannot measure throughput")
	}
}

// throughput runs a TCP iperf3 test from fromNS to toIP (served in toNS)
// for secs seconds and returns what the receiver got, in Mbit/s.
func throughput(t *testing.T, fromNS, toNS, toIP string, secs int) float64 {
	t.Helper()
	needIperf3(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs+20)*time.Second)
	defer cancel()
	srv := exec.CommandContext(ctx, "ip", "netns", "exec", toNS, "iperf3", "-s", "-1", "-p", "5201")
	if err := srv.Start(); err != nil {
		t.Fatalf("start iperf3 server: %v", err)
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()

	var out []byte
	var err error
	for deadline := time.Now().Add(time.Minute); ; { // a backstop
		// The server needs a moment to listen; retry while refused.
		out, err = exec.CommandContext(ctx, "ip", "netns", "exec", fromNS,
			"iperf3", "-c", toIP, "-p", "5201", "-t", strconv.Itoa(secs), "-J").Output()
		if !strings.Contains(string(out), "Connection refused") || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("iperf3 client: %v\n%s", err, out)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(out, &res); err != nil || res.Error != "" {
		t.Fatalf("iperf3 output: %v %s\n%s", err, res.Error, out)
	}
	return res.End.SumReceived.BitsPerSecond / 1e6
}

// assertMbit measures and checks the rate is within [lo, hi] Mbit/s.
func assertMbit(t *testing.T, p *pair, fromNS, toNS, toIP string, secs int, lo, hi float64) float64 {
	t.Helper()
	got := throughput(t, fromNS, toNS, toIP, secs)
	t.Logf("measured %.2f Mbit/s (want %.1f-%.1f)", got, lo, hi)
	if got < lo || got > hi {
		t.Errorf("throughput %.2f Mbit/s, want %.1f-%.1f", got, lo, hi)
	}
	return got
}

var (
	rttRe  = regexp.MustCompile(`= [0-9.]+/([0-9.]+)/[0-9.]+/[0-9.]+ ms`)
	lossRe = regexp.MustCompile(`([0-9.]+)% packet loss`)
)

// ping runs ping in fromNS and returns the average RTT in ms and the loss
// in percent.
func ping(t *testing.T, fromNS, toIP string, args ...string) (rttMs, lossPct float64) {
	t.Helper()
	args = append([]string{"netns", "exec", fromNS, "ping", "-n", "-q"}, append(args, toIP)...)
	out, _ := exec.Command("ip", args...).CombinedOutput() // non-zero on any loss
	m := lossRe.FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("ping output has no loss figure:\n%s", out)
	}
	lossPct, _ = strconv.ParseFloat(m[1], 64)
	if m := rttRe.FindStringSubmatch(string(out)); m != nil {
		rttMs, _ = strconv.ParseFloat(m[1], 64)
	}
	return rttMs, lossPct
}
