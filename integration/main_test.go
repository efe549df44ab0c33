// Package integration drives the circuit binary the way users and runc do:
// real runc containers from a busybox rootfs, real CNI plugins, real packets.
// Every test needs root and cleans up what it made.
package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/circuit-cni/circuit/pkg/netns"
	"github.com/circuit-cni/circuit/pkg/testutil"
)

// cli is one test's circuit: its own state dir, plugins and bridge.
type cli struct {
	t      *testing.T
	bin    string
	state  string
	cniDir string
	ipam   string
	bridge string
}

func newCLI(t *testing.T) *cli {
	t.Helper()
	testutil.RequireRoot(t)
	c := &cli{t: t, bin: testutil.CircuitBin(t), state: t.TempDir(), cniDir: testutil.CNIPath(t), ipam: t.TempDir(), bridge: testutil.RandName("cbr")}
	t.Cleanup(func() {
		// A failed test may leave peers: tear them down the proper way.
		out, _, _ := c.run("", "network", "list", "-q")
		for _, n := range strings.Fields(out) {
			c.run("", "network", "delete", "--force", n)
		}
		exec.Command("ip", "link", "del", c.bridge).Run()
		pins, _ := filepath.Glob(filepath.Join(c.state, "netns", "*"))
		for _, p := range pins {
			netns.Unpin(p)
		}
	})
	return c
}

// run runs circuit and returns stdout, stderr and the error.
func (c *cli) run(stdin string, args ...string) (string, string, error) {
	full := append([]string{"--state", c.state, "--cni-path", c.cniDir}, args...)
	cmd := exec.Command(c.bin, full...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

// stdin runs circuit with input on stdin and fails the test unless it
// succeeds.
func (c *cli) stdin(in string, args ...string) string {
	c.t.Helper()
	out, stderr, err := c.run(in, args...)
	if err != nil {
		c.t.Fatalf("circuit %s: %v\nstderr: %s", strings.Join(args, " "), err, stderr)
	}
	return out
}

// must runs circuit and fails the test unless it succeeds.
func (c *cli) must(args ...string) string {
	c.t.Helper()
	out, stderr, err := c.run("", args...)
	if err != nil {
		c.t.Fatalf("circuit %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, stderr)
	}
	return out
}

// conf writes the seed's example network, on this test's bridge and subnet.
func (c *cli) conf(name, subnet string) string {
	path := filepath.Join(c.t.TempDir(), name+".conf")
	body := fmt.Sprintf(`{
    "cniVersion": "0.2.0",
    "name": %q,
    "type": "bridge",
    "bridge": %q,
    "ipMasq": true,
    "isGateway": true,
    "ipam": {
        "type": "host-local",
        "subnet": %q,
        "dataDir": %q,
        "routes": [{"dst": "0.0.0.0/0"}]
    }
}`, name, c.bridge, subnet, c.ipam)
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		c.t.Fatal(err)
	}
	return path
}

func (c *cli) reservations(network string) []string {
	return testutil.Reservations(c.ipam, network)
}

func (c *cli) pins() []string {
	p, _ := filepath.Glob(filepath.Join(c.state, "netns", "*"))
	return p
}

// natRulesFor lists NAT rules that name a container (plugins put its ID in
// a rule comment), through iptables and nft alike, without counters:
// traffic moves them, and callers compare rules.
func natRulesFor(id string) string {
	ipt, _ := exec.Command("iptables-save", "-t", "nat").CombinedOutput()
	nft, _ := exec.Command("nft", "-s", "list", "ruleset").CombinedOutput()
	var hits []string
	for _, l := range strings.Split(string(ipt)+string(nft), "\n") {
		if strings.Contains(l, id) && !strings.HasPrefix(l, ":") && !strings.HasPrefix(l, "#") { // policy counters, a timestamp
			hits = append(hits, l)
		}
	}
	return strings.Join(hits, "\n")
}

// dropRebootNAT removes the bridge plugin's masquerade rules in nat's
// POSTROUTING for the container id, and the chains they jump to: what a
// reboot flushes, for tests that fake one and so leave them (the plugin's
// DEL cannot find them without the container's namespace).
func dropRebootNAT(t *testing.T, id string) {
	t.Helper()
	out, err := exec.Command("iptables", "-w", "-t", "nat", "-L", "POSTROUTING", "--line-numbers", "-n").Output()
	if err != nil {
		t.Errorf("list nat POSTROUTING: %v", err)
		return
	}
	var nums, chains []string
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) > 1 && strings.Contains(l, `id: "`+id+`"`) {
			nums = append([]string{f[0]}, nums...) // the last first: numbers shift
			chains = append(chains, f[1])
		}
	}
	for _, n := range nums {
		if out, err := exec.Command("iptables", "-w", "-t", "nat", "-D", "POSTROUTING", n).CombinedOutput(); err != nil {
			t.Errorf("delete POSTROUTING rule %s: %v: %s", n, err, out)
		}
	}
	for _, c := range chains {
		if strings.HasPrefix(c, "CNI-") {
			_ = exec.Command("iptables", "-w", "-t", "nat", "-F", c).Run()
			_ = exec.Command("iptables", "-w", "-t", "nat", "-X", c).Run()
		}
	}
}

// assertReleased checks that nothing of a container's attachment is left.
func (c *cli) assertReleased(network, id string) {
	c.t.Helper()
	if r := c.reservations(network); len(r) != 0 {
		c.t.Errorf("host-local reservations left on %s: %v", network, r)
	}
	if r := natRulesFor(id); r != "" {
		c.t.Errorf("masquerade rules left for %s:\n%s", id, r)
	}
	if p := c.pins(); len(p) != 0 {
		c.t.Errorf("netns pins left: %v", p)
	}
}

// containerIP reads the IPv4 address of eth0 inside a container.
func containerIP(t *testing.T, ctr *testutil.Container) string {
	t.Helper()
	out, err := ctr.Exec("ip", "-4", "-o", "addr", "show", "eth0")
	if err != nil {
		t.Fatalf("ip addr in %s: %v\n%s", ctr.ID, err, out)
	}
	f := strings.Fields(string(out))
	for i := range f {
		if f[i] == "inet" && i+1 < len(f) {
			return strings.SplitN(f[i+1], "/", 2)[0]
		}
	}
	t.Fatalf("no IPv4 address on eth0 in %s:\n%s", ctr.ID, out)
	return ""
}

func ping(ctr *testutil.Container, addr string) error {
	out, err := ctr.Exec("ping", "-c", "2", "-W", "3", addr)
	if err != nil {
		return fmt.Errorf("ping %s from %s: %v\n%s", addr, ctr.ID, err, out)
	}
	return nil
}

// skipStressInVM skips a concurrency stress test in the VM tier: it needs
// nothing of the VM's kernel, and emulated CPUs make it slow (minutes) and
// its lock waits a matter of luck.
func skipStressInVM(t *testing.T) {
	t.Helper()
	if testutil.InVM() {
		t.Skip("a concurrency stress test that needs no kernel the host lacks: the host tier runs it")
	}
}
