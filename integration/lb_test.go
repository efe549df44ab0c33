package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/circuit-cni/circuit/pkg/testutil"
)

// Load balancing on the host tier. This kernel has no IPVS, so `auto`
// means nftables here; IPVS is exercised in the VM tier.
//
// Networks use 10.220.50.0/24-10.220.59.0/24, service addresses 10.220.60.x.

// lbStatus is what `lb show --format json` prints, as far as we check it.
type lbStatus struct {
	Name    string `json:"name"`
	Address string `json:"address"`
	Backend string `json:"backend"`
	Targets []struct {
		Address string `json:"address"`
		Weight  int    `json:"weight"`
	} `json:"targets"`
	Stats struct {
		Connections uint64 `json:"connections"`
	} `json:"stats"`
	TargetStats map[string]struct {
		Connections uint64 `json:"connections"`
	} `json:"targetStats"`
}

// kernelHasIPVS: loaded, or loadable (the kernel loads ip_vs itself when
// circuit asks for the IPVS netlink family).
func kernelHasIPVS() bool {
	for _, p := range []string{"/proc/net/ip_vs", "/sys/module/ip_vs"} {
		if _, err := os.Stat(p); err == nil {
			return true
		}
	}
	if rel, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m, _ := filepath.Glob(filepath.Join("/lib/modules", strings.TrimSpace(string(rel)), "kernel/net/netfilter/ipvs/ip_vs.ko*"))
		return len(m) > 0
	}
	return false
}

func requireNft(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("nft is not installed (needed to look at the kernel's tables)")
	}
}

func nft(args ...string) (string, error) {
	out, err := exec.Command("nft", args...).CombinedOutput()
	return string(out), err
}

func mustNft(t *testing.T, args ...string) string {
	t.Helper()
	out, err := nft(args...)
	if err != nil {
		t.Fatalf("nft %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// iptablesTables are the tables iptables(-nft) keeps, where the CNI
// plugins of other tests running on this host add and remove
// per-container rules at any time; circuit's lb commands never touch them.
var iptablesTables = []string{"nat", "filter", "mangle", "raw", "security"}

// ruleset is `nft -s list ruleset` (no counters, which traffic moves)
// without iptables' tables.
func ruleset(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	skip := false
	for _, l := range strings.SplitAfter(mustNft(t, "-s", "list", "ruleset"), "\n") {
		if strings.HasPrefix(l, "table ") {
			f := strings.Fields(l)
			skip = len(f) >= 3 && (f[1] == "ip" || f[1] == "ip6") && slices.Contains(iptablesTables, f[2])
		}
		if !skip {
			b.WriteString(l)
		}
	}
	return b.String()
}

// circuitTable reports whether circuit's nftables table exists.
func circuitTable() bool {
	_, err := nft("list", "table", "inet", "circuit")
	return err == nil
}

// lbStart checks the host is clean of circuit's table (a leftover would
// make every "table gone" check meaningless) and removes the table at the
// end if the test leaves it behind, so one failure does not poison the
// next test.
func lbStart(t *testing.T) *cli {
	t.Helper()
	c := newCLI(t)
	requireNft(t)
	if circuitTable() {
		t.Fatalf("table inet circuit exists before the test (a leftover of another run):\n%s", mustNft(t, "list", "table", "inet", "circuit"))
	}
	t.Cleanup(func() {
		if circuitTable() {
			out, _ := nft("list", "table", "inet", "circuit")
			t.Errorf("table inet circuit left after the test's cleanup:\n%s", out)
			nft("delete", "table", "inet", "circuit")
		}
	})
	return c
}

// lbMust runs circuit, wants exactly `want` on stdout and nothing on stderr.
func (c *cli) lbMust(want string, args ...string) {
	c.t.Helper()
	out, stderr, err := c.run("", args...)
	if err != nil {
		c.t.Fatalf("circuit %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, stderr)
	}
	if out != want || stderr != "" {
		c.t.Fatalf("circuit %s printed\nstdout: %q\nstderr: %q\nwant stdout %q and no stderr", strings.Join(args, " "), out, stderr, want)
	}
}

// lbService creates a service and deletes it when the test ends.
func (c *cli) lbService(name string, args ...string) {
	c.t.Helper()
	c.lbMust("service "+name+" created\n", append([]string{"lb", "create", name}, args...)...)
	c.t.Cleanup(func() { c.run("", "lb", "delete", name) })
}

func (c *cli) lbShow(name string) lbStatus {
	c.t.Helper()
	var st lbStatus
	out := c.must("lb", "show", name, "--format", "json")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		c.t.Fatalf("lb show %s --format json: %v\n%s", name, err, out)
	}
	return st
}

// The seed README's lb walkthrough, output for output.
func TestLBSeedOutputs(t *testing.T) {
	c := lbStart(t)
	const (
		header = "NAME                ADDR                 PROTOCOL            SCHEDULER\n"
		demo   = "demo                10.220.60.20:80      tcp                 rr\n"
		wrr    = "demo-wrr            10.220.60.21:80      tcp                 wrr\n"
	)
	c.lbService("demo", "10.220.60.20:80")
	// The flag between the arguments, as in the seed.
	c.lbService("demo-wrr", "--scheduler", "wrr", "10.220.60.21:80")
	c.lbMust(header+demo+wrr, "lb", "list")
	c.lbMust("service demo updated\n", "lb", "add", "demo", "10.220.50.196:80")
	c.lbMust(header+demo+"  -> 10.220.50.196:80\n"+wrr, "lb", "list", "--details")
	// Without --details the targets stay hidden.
	c.lbMust(header+demo+wrr, "lb", "list")

	st := c.lbShow("demo")
	wantBackend := "nftables"
	if kernelHasIPVS() {
		wantBackend = "ipvs"
	}
	if st.Backend != wantBackend || st.Address != "10.220.60.20:80" || len(st.Targets) != 1 || st.Targets[0].Address != "10.220.50.196:80" {
		t.Errorf("lb show demo: %+v; want backend %s (auto), address 10.220.60.20:80, one target 10.220.50.196:80", st, wantBackend)
	}
	if wantBackend == "nftables" {
		tbl := mustNft(t, "list", "table", "inet", "circuit")
		// Elements only: each service a counter and an entry of the
		// services map, each target an entry of the targets map.
		for _, s := range []string{"counter svc-demo {", "counter svc-demo-wrr {", "10.220.60.20 . tcp . 80 : goto pick-", "10.220.60.21 . tcp . 80 : goto pick-", ": 10.220.50.196 . 80 . "} {
			if !strings.Contains(tbl, s) {
				t.Errorf("table inet circuit lacks %q:\n%s", s, tbl)
			}
		}
	}

	c.lbMust("service demo updated\n", "lb", "remove", "demo", "10.220.50.196:80")
	c.lbMust(header+demo+wrr, "lb", "list", "--details")
	if wantBackend == "nftables" {
		if tbl := mustNft(t, "list", "table", "inet", "circuit"); strings.Contains(tbl, "10.220.50.196") {
			t.Errorf("the removed target is still in the table:\n%s", tbl)
		}
	}
	c.lbMust("service demo removed\n", "lb", "delete", "demo")
	c.lbMust(header+wrr, "lb", "list")
	c.lbMust("service demo-wrr removed\n", "lb", "delete", "demo-wrr")
	c.lbMust(header, "lb", "list")
	if circuitTable() {
		t.Errorf("table inet circuit still exists after the last service was deleted")
	}
}

// Bad input: one line on stderr, non-zero exit, nothing changed (neither
// the records nor the kernel).
func TestLBErrors(t *testing.T) {
	c := lbStart(t)
	c.lbService("keep", "--backend", "nftables", "10.220.60.30:80")
	c.lbMust("service keep updated\n", "lb", "add", "keep", "10.220.50.30:80")

	list := func() string { return c.must("lb", "list", "--format", "json") }
	dummy := func() bool { return exec.Command("ip", "link", "show", "circuit-lb0").Run() == nil }
	beforeList, beforeRules, beforeDummy := list(), ruleset(t), dummy()
	if !strings.Contains(beforeRules, "10.220.60.30 . tcp . 80 : goto pick-") {
		t.Fatalf("service keep is not in the ruleset:\n%s", beforeRules)
	}

	cases := []struct {
		name string
		args []string
		want []string // substrings of the error line
	}{
		{"addr-no-port", []string{"lb", "create", "bad", "10.0.0.1"}, []string{"10.0.0.1"}},
		{"addr-port-0", []string{"lb", "create", "bad", "10.0.0.1:0"}, []string{"10.0.0.1:0", "port"}},
		{"addr-hostname", []string{"lb", "create", "bad", "host:80"}, []string{"host:80"}},
		{"target-malformed", []string{"lb", "add", "keep", "10.220.50.31"}, []string{"10.220.50.31"}},
		{"add-unknown-service", []string{"lb", "add", "nope", "10.220.50.31:80"}, []string{"nope", "not found"}},
		{"remove-unknown-service", []string{"lb", "remove", "nope", "10.220.50.30:80"}, []string{"nope", "not found"}},
		{"delete-unknown-service", []string{"lb", "delete", "nope"}, []string{"nope", "not found"}},
		{"show-unknown-service", []string{"lb", "show", "nope"}, []string{"nope", "not found"}},
		{"remove-unknown-target", []string{"lb", "remove", "keep", "10.220.50.99:80"}, []string{"10.220.50.99:80"}},
		{"duplicate-target", []string{"lb", "add", "keep", "10.220.50.30:80"}, []string{"10.220.50.30:80", "already"}},
		{"duplicate-target-in-one-add", []string{"lb", "add", "keep", "10.220.50.31:80", "10.220.50.31:80"}, []string{"10.220.50.31:80", "already"}},
		{"unknown-scheduler", []string{"lb", "create", "bad", "--scheduler", "foo", "10.220.60.31:80"}, []string{`"foo"`, "wrr"}},
		{"lc-on-nftables", []string{"lb", "create", "bad", "--scheduler", "lc", "--backend", "nftables", "10.220.60.31:80"}, []string{"nftables", "least-connection", "lc"}},
		{"dr-on-nftables", []string{"lb", "add", "keep", "--forward", "dr", "10.220.50.31:80"}, []string{"nftables", "dr", "nat"}},
		{"ipvs-without-ipvs", []string{"lb", "create", "bad", "--backend", "ipvs", "10.220.60.31:80"}, []string{"IPVS"}},
		{"duplicate-name", []string{"lb", "create", "keep", "10.220.60.32:80"}, []string{"keep", "already exists"}},
		{"duplicate-address", []string{"lb", "create", "bad", "10.220.60.30:80"}, []string{"10.220.60.30:80", "keep"}},
		{"weight-out-of-range", []string{"lb", "add", "keep", "--weight", "70000", "10.220.50.31:80"}, []string{"70000"}},
		{"unknown-backend", []string{"lb", "create", "bad", "--backend", "magic", "10.220.60.31:80"}, []string{"magic"}},
		{"unknown-forward", []string{"lb", "add", "keep", "--forward", "magic", "10.220.50.31:80"}, []string{"magic"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "ipvs-without-ipvs" && kernelHasIPVS() {
				t.Skip("this kernel has IPVS")
			}
			out, stderr, err := c.run("", tc.args...)
			cmd := "circuit " + strings.Join(tc.args, " ")
			if err == nil {
				t.Fatalf("%s succeeded:\n%s", cmd, out)
			}
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() <= 0 {
				t.Errorf("%s: %v, want a non-zero exit", cmd, err)
			}
			if out != "" {
				t.Errorf("%s printed on stdout: %q", cmd, out)
			}
			if strings.Count(stderr, "\n") != 1 || !strings.HasSuffix(stderr, "\n") || !strings.HasPrefix(stderr, "circuit: ") {
				t.Errorf("%s: stderr %q, want one line starting \"circuit: \"", cmd, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("%s: stderr %q does not say %q", cmd, stderr, w)
				}
			}
		})
	}

	if got := list(); got != beforeList {
		t.Errorf("lb list changed:\nbefore:\n%s\nafter:\n%s", beforeList, got)
	}
	if got := ruleset(t); got != beforeRules {
		t.Errorf("nft list ruleset changed:\nbefore:\n%s\nafter:\n%s", beforeRules, got)
	}
	if got := dummy(); got != beforeDummy {
		t.Errorf("circuit-lb0 present: %v before, %v after", beforeDummy, got)
	}
	c.lbMust("service keep removed\n", "lb", "delete", "keep")
	if circuitTable() {
		t.Errorf("table inet circuit still exists after the last service was deleted")
	}
}

// lbBackend is one runc container running busybox httpd whose page names it.
type lbBackend struct {
	ctr  *testutil.Container
	ip   string
	page string
}

func (c *cli) httpdContainer(network, name string) *lbBackend {
	t := c.t
	t.Helper()
	b := testutil.NewBundle(t, "httpd", "-f", "-p", "80", "-h", "/www")
	id := testutil.RandName(name + "-")
	page := "served by " + id
	if err := os.WriteFile(filepath.Join(b.Dir, "rootfs", "www", "index.html"), []byte(page+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// /cgi-bin/ip answers with the client address the target sees.
	cgi := filepath.Join(b.Dir, "rootfs", "www", "cgi-bin")
	os.MkdirAll(cgi, 0o755)
	script := "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n%s\\n' \"$REMOTE_ADDR\"\n"
	if err := os.WriteFile(filepath.Join(cgi, "ip"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	ctr := b.MustStart(t, id)
	c.must("--runc-root", b.Root, "network", "connect", ctr.ID, network)
	return &lbBackend{ctr: ctr, ip: containerIP(t, ctr), page: page}
}

// hostRequests makes n HTTP requests from the host, each on a new
// connection, and counts the answers by page; any failure fails the test.
func hostRequests(t *testing.T, addr string, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for i := range n {
		body, err := testutil.HTTPGet("http://"+addr+"/", 10*time.Second)
		if err != nil {
			t.Fatalf("request %d of %d to %s from the host: %v (so far %v)", i+1, n, addr, err, got)
		}
		got[body]++
	}
	return got
}

// ncRequest fetches path from addr inside a container with busybox nc (its
// wget crashes here) and returns the body.
func ncRequest(ctr *testutil.Container, addr, path string) (string, error) {
	host, port, _ := strings.Cut(addr, ":")
	// A backstop for a hung runc exec; nc itself gives up after 2s.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	script := fmt.Sprintf(`printf 'GET %s HTTP/1.0\r\n\r\n' | nc -w 2 %s %s`, path, host, port)
	out, err := exec.CommandContext(ctx, "runc", "--root", ctr.Bundle.Root, "exec", ctr.ID, "sh", "-c", script).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("nc %s in %s: %v\n%s", addr, ctr.ID, err, out)
	}
	head, body, ok := strings.Cut(string(out), "\r\n\r\n")
	if !ok || !strings.HasPrefix(head, "HTTP/1.") || !strings.Contains(strings.SplitN(head, "\r\n", 2)[0], " 200 ") {
		return "", fmt.Errorf("nc %s in %s: not an HTTP 200 answer:\n%q", addr, ctr.ID, out)
	}
	return strings.TrimSpace(body), nil
}

// catchAll reports whether something on this host's default route accepts
// any TCP connection (a sandbox's egress proxy does): then "nobody
// answers" can only mean "none of our httpds answers".
func catchAll() bool {
	return testutil.DialTCP("10.220.60.254:80", time.Second) == nil
}

// localAddrFor is the source address the host picks to reach addr.
func localAddrFor(t *testing.T, addr string) string {
	t.Helper()
	conn, err := net.Dial("udp", addr) // sends nothing
	if err != nil {
		t.Fatalf("route to %s: %v", addr, err)
	}
	defer conn.Close()
	return conn.LocalAddr().(*net.UDPAddr).IP.String()
}

// unmap turns httpd's REMOTE_ADDR ("[::ffff:10.0.0.1]") into 10.0.0.1.
func unmap(remote string) string {
	a, err := netip.ParseAddr(strings.Trim(remote, "[]"))
	if err != nil {
		return remote
	}
	return a.Unmap().String()
}

// noAnswer checks that the service at addr is gone: within a second the
// connection is refused or times out, or (behind a catch-all proxy) what
// answers is none of our httpds.
func noAnswer(t *testing.T, addr, when string, proxied bool, pages ...string) {
	t.Helper()
	body, err := testutil.HTTPGet("http://"+addr+"/", time.Second)
	switch {
	case err == nil && slices.Contains(pages, body):
		t.Errorf("%s still serves %q %s", addr, body, when)
	case proxied:
	case err == nil:
		t.Errorf("%s answers %q %s, want no connection", addr, body, when)
	case !testutil.IsNoAnswer(err):
		t.Errorf("%s %s: %v, want connection refused or a timeout", addr, when, err)
	}
}

// Two runc containers running busybox httpd behind nftables services:
// rr from the host and from a container on the same bridge (hairpin), wrr,
// restore after a flush, remove, delete; a foreign table is never touched.
func TestLBRuncHTTPD(t *testing.T) {
	c := lbStart(t)
	const (
		vipRR  = "10.220.60.1:80"
		vipWRR = "10.220.60.2:80"
	)

	// A foreign table with a set, a base chain traversed by forwarded
	// traffic and a regular chain, none of whose rules ever match here.
	const foreign = `table inet foreigntest {
	set blocked {
		type ipv4_addr
		elements = { 10.220.59.250 }
	}
	chain forward {
		type filter hook forward priority 10; policy accept;
		ip daddr @blocked counter drop
	}
	chain aside {
		tcp dport 8080 ip saddr 10.220.59.251 counter accept
	}
}
`
	nft("delete", "table", "inet", "foreigntest")
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(foreign)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft -f (foreign table): %v\n%s", err, out)
	}
	t.Cleanup(func() { nft("delete", "table", "inet", "foreigntest") })
	foreignBefore := mustNft(t, "list", "table", "inet", "foreigntest")

	c.must("network", "create", c.conf("lbnet", "10.220.50.0/24"))
	a := c.httpdContainer("lbnet", "lba")
	b := c.httpdContainer("lbnet", "lbb")
	client := testutil.NewBundle(t)
	cl := client.MustStart(t, testutil.RandName("lbc-"))
	c.must("--runc-root", client.Root, "network", "connect", cl.ID, "lbnet")
	for _, s := range []*lbBackend{a, b} {
		if !strings.HasPrefix(s.ip, "10.220.50.") {
			t.Fatalf("container %s got %s, not in 10.220.50.0/24", s.ctr.ID, s.ip)
		}
		// Directly, each answers with its own page.
		if body := testutil.WaitHTTP(t, "http://"+s.ip+"/", 60*time.Second); body != s.page {
			t.Fatalf("%s answered %q, want %q", s.ip, body, s.page)
		}
	}
	targetA, targetB := a.ip+":80", b.ip+":80"
	// Nothing of ours answers on the service address before the service
	// exists.
	proxied := catchAll()
	if proxied {
		t.Logf("a catch-all on the default route accepts every TCP connection: checking only that our httpds stop answering")
	}
	noAnswer(t, vipRR, "before lb create", proxied, a.page, b.page)

	// rr: 20 requests from the host split exactly 10/10.
	c.lbService("lbrr", "--backend", "nftables", vipRR)
	c.lbMust("service lbrr updated\n", "lb", "add", "lbrr", targetA, targetB)
	if got := hostRequests(t, vipRR, 20); got[a.page] != 10 || got[b.page] != 10 {
		t.Errorf("rr: 20 requests from the host gave %v, want 10 each for %q and %q", got, a.page, b.page)
	}

	// A container on the same bridge reaches both targets through the
	// service address (the hairpin path: DNAT back out of the bridge).
	fromClient := map[string]int{}
	for i := range 4 {
		body, err := ncRequest(cl, vipRR, "/")
		if err != nil {
			t.Fatalf("client request %d: %v", i+1, err)
		}
		fromClient[body]++
	}
	if fromClient[a.page] != 2 || fromClient[b.page] != 2 {
		t.Errorf("rr: 4 requests from a container gave %v, want 2 each for %q and %q", fromClient, a.page, b.page)
	}

	// The kernel counted them: 24 new connections, over both targets.
	st := c.lbShow("lbrr")
	if st.Backend != "nftables" {
		t.Errorf("lb show lbrr: backend %q, want nftables", st.Backend)
	}
	if st.Stats.Connections < 24 {
		t.Errorf("lb show lbrr: %d connections, want at least the 24 made", st.Stats.Connections)
	}
	for _, tg := range []string{targetA, targetB} {
		if n := st.TargetStats[tg].Connections; n < 12 {
			t.Errorf("lb show lbrr: target %s has %d connections, want at least 12 (stats %+v)", tg, n, st.TargetStats)
		}
	}

	// Who the targets see. The host is not masqueraded: they see the
	// address it sends from. A client on the targets' own bridge is
	// masqueraded by circuit's hairpin rule (else the target would answer
	// it directly, bypassing the un-DNAT), unless br_netfilter makes the
	// bridge un-NAT the replies itself: then they see the client.
	hostSrc := localAddrFor(t, vipRR)
	wantClient, path := "10.220.50.1", "circuit's hairpin masquerade"
	if brnf, err := os.ReadFile("/proc/sys/net/bridge/bridge-nf-call-iptables"); err == nil && strings.TrimSpace(string(brnf)) == "1" {
		wantClient, path = containerIP(t, cl), "br_netfilter (bridge-nf-call-iptables=1 on this host)"
	}
	t.Logf("hairpin replies go through %s", path)
	for i := range 2 { // rr: once to each target
		if seen, err := testutil.HTTPGet("http://"+vipRR+"/cgi-bin/ip", 10*time.Second); err != nil || unmap(seen) != hostSrc {
			t.Errorf("host request %d: target saw %q (%v), want the host's own %s", i+1, seen, err, hostSrc)
		}
		if seen, err := ncRequest(cl, vipRR, "/cgi-bin/ip"); err != nil || unmap(seen) != wantClient {
			t.Errorf("client request %d: target saw %q (%v), want %s (%s)", i+1, seen, err, wantClient, path)
		}
	}

	// wrr 3:1 over 40 requests.
	c.lbService("lbwrr", "--backend", "nftables", "--scheduler", "wrr", vipWRR)
	c.lbMust("service lbwrr updated\n", "lb", "add", "lbwrr", "--weight", "3", targetA)
	c.lbMust("service lbwrr updated\n", "lb", "add", "lbwrr", targetB)
	details := c.must("lb", "list", "--details")
	for _, l := range []string{"  -> " + targetA + "  weight 3\n", "  -> " + targetB + "\n"} {
		if !strings.Contains(details, l) {
			t.Errorf("lb list --details lacks %q:\n%s", l, details)
		}
	}
	got := hostRequests(t, vipWRR, 40)
	if got[a.page] < 24 || got[a.page] > 36 || got[a.page]+got[b.page] != 40 {
		t.Errorf("wrr 3:1: 40 requests gave %v, want 24-36 for %q and the rest for %q", got, a.page, b.page)
	}
	t.Logf("wrr 3:1 over 40 requests: %d / %d", got[a.page], got[b.page])

	// A flush (reboot, `nft flush ruleset`), simulated: restore brings both
	// services back and says so; a second restore has nothing to do.
	mustNft(t, "delete", "table", "inet", "circuit")
	noAnswer(t, vipRR, "after its table was deleted", proxied, a.page, b.page)
	out := c.must("restore")
	want := []string{
		fmt.Sprintf("restored service lbrr (%s, 2 targets) with nftables", vipRR),
		fmt.Sprintf("restored service lbwrr (%s, 2 targets) with nftables", vipWRR),
		"restore: 2 action(s)",
	}
	if lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n"); !slices.Equal(lines, want) {
		t.Errorf("restore printed:\n%s\nwant:\n%s", out, strings.Join(want, "\n"))
	}
	if got := hostRequests(t, vipRR, 20); got[a.page] != 10 || got[b.page] != 10 {
		t.Errorf("rr after restore: 20 requests gave %v, want 10 each", got)
	}
	if got := hostRequests(t, vipWRR, 40); got[a.page] < 24 || got[a.page] > 36 || got[a.page]+got[b.page] != 40 {
		t.Errorf("wrr after restore: 40 requests gave %v, want 24-36 for %q", got, a.page)
	}
	if out := c.must("restore"); out != "restore: nothing to do\n" {
		t.Errorf("second restore printed:\n%s", out)
	}

	// remove: everything goes to the remaining target.
	c.lbMust("service lbrr updated\n", "lb", "remove", "lbrr", targetB)
	elemB, keptB := fmt.Sprintf("10.220.60.1 . tcp . 80 . %s . 80", b.ip), fmt.Sprintf("10.220.60.2 . tcp . 80 . %s . 80", b.ip)
	if tbl := mustNft(t, "list", "table", "inet", "circuit"); strings.Contains(tbl, elemB) || !strings.Contains(tbl, keptB) {
		t.Errorf("after lb remove, want %s gone and lbwrr's %s kept:\n%s", elemB, keptB, tbl)
	}
	if got := hostRequests(t, vipRR, 10); got[a.page] != 10 {
		t.Errorf("after removing %s: 10 requests gave %v, want all %q", targetB, got, a.page)
	}
	if body, err := ncRequest(cl, vipRR, "/"); err != nil || body != a.page {
		t.Errorf("client after remove: %q, %v; want %q", body, err, a.page)
	}

	// delete: the address stops answering and no rule names it; the
	// other service is untouched until it goes too, with the table.
	c.lbMust("service lbrr removed\n", "lb", "delete", "lbrr")
	noAnswer(t, vipRR, "after lb delete", proxied, a.page, b.page)
	if rs := ruleset(t); strings.Contains(rs, "10.220.60.1 ") || strings.Contains(rs, "svc-lbrr") {
		t.Errorf("the ruleset still names lbrr or %s after lb delete:\n%s", vipRR, rs)
	}
	if got := hostRequests(t, vipWRR, 4); got[a.page]+got[b.page] != 4 {
		t.Errorf("lbwrr after deleting lbrr: %v", got)
	}
	c.lbMust("service lbwrr removed\n", "lb", "delete", "lbwrr")
	noAnswer(t, vipWRR, "after lb delete", proxied, a.page, b.page)
	if out, err := nft("list", "table", "inet", "circuit"); err == nil {
		t.Errorf("table inet circuit still exists after the last lb delete:\n%s", out)
	}
	if rs := ruleset(t); strings.Contains(rs, "10.220.60.1 ") || strings.Contains(rs, "10.220.60.2 ") || strings.Contains(rs, "svc-lb") {
		t.Errorf("the ruleset still names a service or its address:\n%s", rs)
	}
	if out := c.must("lb", "list", "-q"); out != "" {
		t.Errorf("lb list -q after deleting everything: %q", out)
	}

	if after := mustNft(t, "list", "table", "inet", "foreigntest"); after != foreignBefore {
		t.Errorf("the foreign table changed:\nbefore:\n%s\nafter:\n%s", foreignBefore, after)
	}
}
