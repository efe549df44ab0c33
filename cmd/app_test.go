package cmd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/urfave/cli/v3"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/controller"
	"github.com/circuit-cni/circuit/controller/fake"
)

// harness runs the CLI in-process against a Fake, with its own environment
// and streams, so tests run in parallel.
type harness struct {
	t        *testing.T
	fake     *fake.Fake
	env      map[string]string
	stdin    string
	terminal bool
	self     string
	factory  error // returned by the controller factory when set

	mu      sync.Mutex
	globals []Globals
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	return &harness{
		t:    t,
		fake: fake.New(),
		// Never the real /var/lib/circuit: hook mode writes a log there.
		env:  map[string]string{"CIRCUIT_STATE": t.TempDir(), "PATH": "/usr/bin:/bin"},
		self: "/usr/local/bin/circuit",
	}
}

type result struct {
	stdout, stderr string
	err            error
}

// line is what main prints for the error.
func (r result) line() string {
	if r.err == nil {
		return ""
	}
	return "circuit: " + r.err.Error()
}

func (h *harness) run(args ...string) result {
	h.t.Helper()
	var stdout, stderr bytes.Buffer
	a := &app{
		newController: func(ctx context.Context, g Globals) (controller.Controller, error) {
			h.mu.Lock()
			h.globals = append(h.globals, g)
			h.mu.Unlock()
			if h.factory != nil {
				return nil, h.factory
			}
			return h.fake, nil
		},
		stdin:  strings.NewReader(h.stdin),
		stdout: &stdout,
		stderr: &stderr,
		lookupEnv: func(k string) (string, bool) {
			v, ok := h.env[k]
			return v, ok
		},
		executable: func() (string, error) { return h.self, nil },
		isTerminal: func(io.Reader) bool { return h.terminal },
		now:        func() time.Time { return time.Date(2016, 10, 12, 18, 45, 27, 0, time.UTC) },
	}
	args = append([]string{"circuit"}, args...)
	err := newApp(a, args).Run(context.Background(), args)
	return result{stdout.String(), stderr.String(), err}
}

// must runs the CLI and returns stdout, failing the test on any error or
// any output on stderr.
func (h *harness) must(args ...string) string {
	h.t.Helper()
	r := h.run(args...)
	if r.err != nil || r.stderr != "" {
		h.t.Fatalf("circuit %s: %v\nstderr: %s", strings.Join(args, " "), r.err, r.stderr)
	}
	return r.stdout
}

// expect runs the CLI and checks stdout exactly.
func (h *harness) expect(want string, args ...string) {
	h.t.Helper()
	if got := h.must(args...); got != want {
		h.t.Errorf("circuit %s printed:\n%q\nwant:\n%q", strings.Join(args, " "), got, want)
	}
}

func (h *harness) lastGlobals() Globals {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.globals) == 0 {
		h.t.Fatal("the controller was never opened")
	}
	return h.globals[len(h.globals)-1]
}

// capsConf writes a chain that takes every setting of a connect: a bridge
// with the ips and mac capabilities, portmap and a plugin for aliases.
func (h *harness) capsConf(name, subnet string) string {
	h.t.Helper()
	body := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %q, "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "capabilities": {"ips": true, "mac": true},
   "ipam": {"type": "host-local", "subnet": %q}},
  {"type": "portmap", "capabilities": {"portMappings": true}},
  {"type": "dnsname", "capabilities": {"aliases": true}}]}`, name, subnet)
	path := filepath.Join(h.t.TempDir(), name+".conflist")
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		h.t.Fatal(err)
	}
	return path
}

// conf writes a CNI config like the README's and returns its path.
func (h *harness) conf(name, typ, subnet string) string {
	h.t.Helper()
	ipam := ""
	if subnet != "" {
		ipam = fmt.Sprintf(`,
    "ipam": {"type": "host-local", "subnet": %q, "routes": [{"dst": "0.0.0.0/0"}]}`, subnet)
	}
	body := fmt.Sprintf(`{
    "cniVersion": "0.2.0",
    "name": %q,
    "type": %q,
    "bridge": "cni0",
    "ipMasq": true,
    "isGateway": true%s
}`, name, typ, ipam)
	path := filepath.Join(h.t.TempDir(), name+".conf")
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		h.t.Fatal(err)
	}
	return path
}

// TestSeedWalkthrough runs the original README's examples and compares
// every output line byte for byte.
func TestSeedWalkthrough(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()

	h.expect("local created\n", "network", "create", h.conf("local", "ipvlan", ""))
	h.expect("sandbox created\n", "network", "create", h.conf("sandbox", "bridge", "10.100.10.0/24"))
	h.expect("shell created\n", "network", "create", h.conf("shell", "bridge", "10.30.30.0/24"))
	h.expect("connected container 19022 to network shell\n", "network", "connect", "19022", "shell")
	h.expect(`NAME                TYPE                VERSION             PEERS
local               ipvlan              0.2.0
sandbox             bridge              0.2.0
shell               bridge              0.2.0               10.30.30.2 (19022)
`, "network", "list")

	h.expect("connected container 4668 to network sandbox\n", "network", "connect", "4668", "sandbox")

	h.expect("qos configured for sandbox\n", "network", "qos", "set", "--rate", "5000", "--ceiling", "6000", "sandbox")
	n, _ := h.fake.InspectNetwork(ctx, "sandbox")
	if want := (&api.QoSPolicy{Rate: 5_000_000, Ceiling: 6_000_000}); !reflect.DeepEqual(n.QoS, want) {
		t.Errorf("qos after set --rate 5000 --ceiling 6000: %+v, want %+v", n.QoS, want)
	}
	h.expect("qos configured for sandbox\n", "network", "qos", "set", "--delay", "50ms", "sandbox")
	n, _ = h.fake.InspectNetwork(ctx, "sandbox")
	// --delay keeps the rate pair (README: "a second qos set changes what it names").
	if want := (&api.QoSPolicy{Rate: 5_000_000, Ceiling: 6_000_000, Delay: 50 * time.Millisecond}); !reflect.DeepEqual(n.QoS, want) {
		t.Errorf("qos after set --delay 50ms: %+v, want %+v", n.QoS, want)
	}
	h.expect("qos reset for sandbox\n", "network", "qos", "reset", "sandbox")
	if n, _ = h.fake.InspectNetwork(ctx, "sandbox"); n.QoS != nil {
		t.Errorf("qos after reset: %+v", n.QoS)
	}

	h.expect("service demo created\n", "lb", "create", "demo", "192.168.100.235:80")
	h.expect(`NAME                ADDR                 PROTOCOL            SCHEDULER
demo                192.168.100.235:80   tcp                 rr
`, "lb", "list")
	h.expect("service demo updated\n", "lb", "add", "demo", "10.254.1.196:80")
	h.expect(`NAME                ADDR                 PROTOCOL            SCHEDULER
demo                192.168.100.235:80   tcp                 rr
  -> 10.254.1.196:80
`, "lb", "list", "--details")
	h.expect("service demo updated\n", "lb", "remove", "demo", "10.254.1.196:80")
	h.expect("service demo removed\n", "lb", "delete", "demo")
	h.expect("service demo-wrr created\n", "lb", "create", "demo-wrr", "--scheduler", "wrr", "192.168.100.235:80")

	h.expect("disconnected container 4668 from network sandbox\n", "network", "disconnect", "4668", "sandbox")
	h.expect("sandbox deleted\n", "network", "delete", "sandbox")
	h.expect("local\nshell\n", "network", "list", "-q")
}

// TestErrors checks that bad input gives one error line (as main prints
// it), the right exit status, nothing on stdout or stderr, and no change.
func TestErrors(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.must("network", "create", h.conf("sandbox", "bridge", "10.100.10.0/24"))
	h.must("network", "create", h.conf("busy", "bridge", ""))
	h.must("network", "connect", "4668", "busy")
	h.must("lb", "create", "demo", "192.168.100.235:80")
	before := h.must("network", "inspect", "sandbox") + h.must("network", "inspect", "busy") + h.must("lb", "show", "demo", "--format", "json")

	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"bogus"}, 2, `circuit: unknown command "bogus"`},
		{[]string{"--bogus"}, 2, "circuit: flag provided but not defined: -bogus"},
		{[]string{"--state", "", "network", "list"}, 2, "circuit: --state must not be empty"},
		{[]string{"network", "bogus"}, 2, `circuit: network: unknown command "bogus"`},
		{[]string{"network", "list", "--bogus"}, 2, "circuit: network list: flag provided but not defined: -bogus"},
		{[]string{"network", "list", "extra"}, 2, "circuit: network list: too many arguments"},
		{[]string{"network", "list", "--format", "yaml"}, 2, `circuit: network list: unknown --format "yaml": want table, json or a Go template`},
		{[]string{"network", "list", "--format", "{{.Name"}, 2, "circuit: network list: --format: template: format:1: unclosed action"},
		{[]string{"network", "list", "--format", "{{.Nope}}"}, 1, "can't evaluate field Nope"},
		{[]string{"network", "create"}, 2, "circuit: network create: missing arguments: want FILE|-"},
		{[]string{"network", "create", "/no/such/file.conf"}, 1, "circuit: read /no/such/file.conf: no such file or directory"},
		{[]string{"network", "create", t.TempDir()}, 1, "not a regular file"},
		{[]string{"network", "inspect", "nope"}, 1, `circuit: inspect network nope: network "nope": not found`},
		{[]string{"network", "connect", "4668"}, 2, "circuit: network connect: missing arguments: want CONTAINER NETWORK"},
		{[]string{"network", "connect", "4668", "nope"}, 1, `circuit: connect 4668 to nope: network "nope": not found`},
		{[]string{"network", "connect", "4668", "busy"}, 1, `circuit: connect 4668 to busy: container 4668 is already connected to network busy (as eth0)`},
		{[]string{"network", "connect", "1", "2", "3"}, 2, "circuit: network connect: too many arguments: want CONTAINER NETWORK, got 3"},
		{[]string{"network", "disconnect", "1", "sandbox"}, 1, `circuit: disconnect 1 from sandbox: container 1 is not connected to network sandbox`},
		{[]string{"network", "delete", "nope"}, 1, `circuit: delete network nope: network "nope": not found`},
		{[]string{"network", "delete", "busy"}, 1, "in use"},
		{[]string{"network", "qos", "set", "sandbox"}, 2, "circuit: network qos set: invalid qos policy: give at least one of rate, ceiling, delay, jitter or loss"},
		{[]string{"network", "qos", "set", "--rate", "fast", "sandbox"}, 2, `circuit: network qos set: --rate: invalid rate "fast"`},
		{[]string{"network", "qos", "set", "--ceiling", "6000", "sandbox"}, 2, "circuit: network qos set: invalid qos policy: a ceiling needs a rate"},
		{[]string{"network", "qos", "set", "--rate", "6000", "--ceiling", "5000", "sandbox"}, 2, "circuit: network qos set: invalid qos policy: ceiling 5mbit is below rate 6mbit"},
		{[]string{"network", "qos", "set", "--jitter", "5ms", "sandbox"}, 2, "circuit: network qos set: invalid qos policy: jitter needs a delay"},
		{[]string{"network", "qos", "set", "--loss", "120%", "sandbox"}, 2, "--loss: invalid percentage"},
		{[]string{"network", "qos", "set", "--delay", "soon", "sandbox"}, 2, "--delay: invalid duration"},
		{[]string{"network", "qos", "set", "--rate", "1", "--direction", "up", "sandbox"}, 2, `circuit: network qos set: invalid qos policy: direction "up": use egress, ingress or both`},
		{[]string{"network", "qos", "set", "--rate", "5000", "nope"}, 1, `circuit: qos set nope: network "nope": not found`},
		{[]string{"network", "qos", "set", "--rate", "5000", "--container", "9", "sandbox"}, 1, "container 9 is not connected to network sandbox"},
		{[]string{"network", "qos", "reset", "nope"}, 1, `circuit: qos reset nope: network "nope": not found`},
		{[]string{"network", "qos", "show", "nope"}, 1, `circuit: qos show nope: network "nope": not found`},
		{[]string{"lb", "create", "demo"}, 2, "circuit: lb create: missing arguments: want NAME ADDR:PORT"},
		{[]string{"lb", "create", "demo", "192.168.100.235:80"}, 1, `circuit: lb create demo: service demo already exists`},
		{[]string{"lb", "create", "x", "1.2.3.4:80", "--protocol", "icmp"}, 2, `circuit: lb create: --protocol: protocol "icmp": want one of tcp, udp, sctp`},
		{[]string{"lb", "create", "x", "1.2.3.4:80", "--backend", "lvs"}, 2, `--backend: backend "lvs": want one of auto, ipvs, nftables`},
		{[]string{"lb", "create", "x", "1.2.3.4:80", "--persistence", "long"}, 2, `circuit: lb create: invalid value "long" for flag -persistence`},
		{[]string{"lb", "create", "x", "1.2.3.4"}, 1, `address "1.2.3.4": want ip:port or [ipv6]:port`},
		{[]string{"lb", "create", "x", "1.2.3.4:80", "--scheduler", "best"}, 1, `circuit: lb create x: scheduler "best": want one of`},
		{[]string{"lb", "add", "demo"}, 2, "circuit: lb add: missing arguments: want NAME TARGET..."},
		{[]string{"lb", "add", "demo", "10.0.0.1:80", "--forward", "magic"}, 2, `--forward: forwarding method "magic": want one of nat, dr, tunnel`},
		{[]string{"lb", "add", "demo", "10.0.0.1:80", "--weight", "-1"}, 2, "circuit: lb add: --weight: weight -1: use 1 to 65535"},
		{[]string{"lb", "add", "demo", "10.0.0.1:80", "--weight", "heavy"}, 2, `invalid value "heavy" for flag -weight`},
		{[]string{"lb", "add", "nope", "10.0.0.1:80"}, 1, `circuit: lb add nope: service "nope": not found`},
		{[]string{"lb", "add", "demo", "10.0.0.1:80", "bad"}, 1, `circuit: lb add demo: address "bad": want ip:port or [ipv6]:port`},
		{[]string{"lb", "remove", "demo", "10.0.0.9:80"}, 1, "target 10.0.0.9:80 is not in service demo"},
		{[]string{"lb", "delete", "nope"}, 1, `circuit: lb delete nope: service "nope": not found`},
		{[]string{"lb", "show", "nope"}, 1, `circuit: lb show nope: service "nope": not found`},
		{[]string{"lb", "list", "--format", "xml"}, 2, "unknown --format"},
		{[]string{"hook", "config"}, 2, "circuit: hook config: give one of --network or --cni-conf"},
		{[]string{"hook", "install"}, 2, "circuit: hook install: missing arguments: want BUNDLE..."},
		{[]string{"version", "extra"}, 2, "too many arguments"},
		{[]string{"gc", "--format", "csv"}, 2, "unknown --format"},
	} {
		r := h.run(tc.args...)
		if r.err == nil {
			t.Errorf("circuit %q succeeded:\n%s", tc.args, r.stdout)
			continue
		}
		if code := ExitCode(r.err); code != tc.code {
			t.Errorf("circuit %q: exit %d, want %d (%v)", tc.args, code, tc.code, r.err)
		}
		if !strings.Contains(r.line(), tc.want) || strings.Contains(r.line(), "\n") {
			t.Errorf("circuit %q: error line %q, want it to contain %q", tc.args, r.line(), tc.want)
		}
		if r.stderr != "" || (r.stdout != "" && !strings.Contains(strings.Join(tc.args, " "), "{{.Nope}}")) {
			t.Errorf("circuit %q: output besides the error:\nstdout: %s\nstderr: %s", tc.args, r.stdout, r.stderr)
		}
	}

	after := h.must("network", "inspect", "sandbox") + h.must("network", "inspect", "busy") + h.must("lb", "show", "demo", "--format", "json")
	if before != after {
		t.Errorf("refused commands changed state:\n%s\n---\n%s", before, after)
	}
	if h.fake.Closes() != len(h.globals) {
		t.Errorf("controller opened %d times, closed %d times", len(h.globals), h.fake.Closes())
	}
}

func TestControllerErrors(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.factory = fmt.Errorf("%w: circuit must run as root", api.ErrPermission)
	r := h.run("network", "list")
	if r.line() != "circuit: permission denied: circuit must run as root" || ExitCode(r.err) != 1 || r.stdout != "" || r.stderr != "" {
		t.Errorf("got %q (exit %d), stdout %q, stderr %q", r.line(), ExitCode(r.err), r.stdout, r.stderr)
	}

	h = newHarness(t)
	h.fake.SetError("Close", errors.New("datastore: sync failed"))
	if r := h.run("network", "list"); r.line() != "circuit: datastore: sync failed" {
		t.Errorf("close error: %q", r.line())
	}
}

// TestInterspersedFlags: flags may come before, between or after positional
// arguments, as in the README (lb create demo-wrr --scheduler wrr ADDR).
func TestInterspersedFlags(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	h.must("network", "create", h.conf("sandbox", "bridge", "10.100.10.0/24"))

	h.must("lb", "create", "demo-wrr", "--scheduler", "wrr", "192.168.100.235:80")
	h.must("lb", "create", "demo", "10.0.0.1:80", "--scheduler", "wrr", "--protocol=udp")
	h.must("lb", "create", "--persistence", "5m", "demo-sh", "10.0.0.2:80", "--scheduler", "sh")
	svcs, _ := h.fake.ListServices(ctx)
	got := map[string]string{}
	for _, s := range svcs {
		got[s.Name] = s.Address + " " + s.Protocol + " " + s.Scheduler + " " + s.Persistence.String()
	}
	want := map[string]string{
		"demo":     "10.0.0.1:80 udp wrr 0s",
		"demo-sh":  "10.0.0.2:80 tcp sh 5m0s",
		"demo-wrr": "192.168.100.235:80 tcp wrr 0s",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("services: %v, want %v", got, want)
	}

	h.must("lb", "add", "demo", "10.0.1.1:80", "--weight", "3", "10.0.1.2:80", "--forward", "dr")
	st, _ := h.fake.ShowService(ctx, "demo")
	if wantT := []api.Target{{Address: "10.0.1.1:80", Weight: 3, Forward: "dr"}, {Address: "10.0.1.2:80", Weight: 3, Forward: "dr"}}; !reflect.DeepEqual(st.Service.Targets, wantT) {
		t.Errorf("targets: %+v, want %+v", st.Service.Targets, wantT)
	}

	for i, args := range [][]string{
		{"network", "connect", "--ifname", "eth5", "101", "sandbox"},
		{"network", "connect", "102", "--ifname", "eth5", "sandbox"},
		{"network", "connect", "103", "sandbox", "--ifname", "eth5"},
		{"network", "connect", "--ifname=eth5", "--", "104", "sandbox"},
	} {
		h.expect(fmt.Sprintf("connected container %d to network sandbox\n", 101+i), args...)
	}
	n, _ := h.fake.InspectNetwork(ctx, "sandbox")
	for _, p := range n.Peers {
		if p.IfName != "eth5" {
			t.Errorf("peer %s has %s, want eth5", p.ContainerID, p.IfName)
		}
	}

	// After "--" nothing is a flag.
	if r := h.run("network", "connect", "--", "105", "--ifname"); !strings.HasPrefix(r.line(), `circuit: connect 105 to --ifname: network name "--ifname": `) {
		t.Errorf("after --: %q", r.line())
	}

	h.must("network", "qos", "set", "sandbox", "--rate", "5000", "--container", "101")
	n, _ = h.fake.InspectNetwork(ctx, "sandbox")
	if n.QoS != nil || n.Peers[0].QoS == nil || n.Peers[0].QoS.Rate != 5_000_000 {
		t.Errorf("per-container qos: network %+v, peer %+v", n.QoS, n.Peers[0].QoS)
	}

	// Global flags work after the command too.
	dir := t.TempDir()
	if r := h.run("network", "list", "--state", dir, "--debug"); r.err != nil || !strings.Contains(r.stderr, "level=debug") {
		t.Errorf("--debug: %v, stderr %q", r.err, r.stderr)
	}
	if g := h.lastGlobals(); g.StateDir != dir || !g.Debug || g.Log.GetLevel() != logrus.DebugLevel {
		t.Errorf("globals after the command: %+v", g)
	}
}

func TestGlobals(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}

	h.must("network", "list")
	g := h.lastGlobals()
	if g.StateDir != h.env["CIRCUIT_STATE"] || g.RuncRoot != DefaultRuncRoot || g.Debug || g.Log.GetLevel() != logrus.WarnLevel {
		t.Errorf("defaults: %+v", g)
	}
	if want := []string{"/opt/cni/bin", "/usr/libexec/cni", "/usr/lib/cni", "/usr/bin", "/bin"}; !reflect.DeepEqual(g.CNIPath, want) {
		t.Errorf("default CNI path %v, want %v", g.CNIPath, want)
	}

	// Relative paths become absolute; env CNI_PATH and $PATH are searched
	// in order, without duplicates or relative $PATH entries.
	h.env["CNI_PATH"] = "/plugins:rel/plugins::/opt/cni/bin"
	h.env["PATH"] = "/usr/bin:.:bin:/sbin:/usr/bin/"
	h.must("--state", "st", "network", "list", "--runc-root", "runc")
	g = h.lastGlobals()
	if g.StateDir != filepath.Join(wd, "st") || g.RuncRoot != filepath.Join(wd, "runc") {
		t.Errorf("relative paths: %+v", g)
	}
	want := []string{"/plugins", filepath.Join(wd, "rel/plugins"), "/opt/cni/bin", "/usr/libexec/cni", "/usr/lib/cni", "/usr/bin", "/sbin"}
	if !reflect.DeepEqual(g.CNIPath, want) {
		t.Errorf("CNI path %v, want %v", g.CNIPath, want)
	}

	// The flag wins over the environment.
	h.must("--cni-path", "/flag", "network", "list")
	if g = h.lastGlobals(); g.CNIPath[0] != "/flag" || g.CNIPath[1] != "/opt/cni/bin" {
		t.Errorf("flag over env: %v", g.CNIPath)
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	out := h.must("version")
	if !strings.HasPrefix(out, "circuit version "+Version+"\ncommit: "+Commit+"\ngo: go") || strings.Count(out, "\n") != 3 {
		t.Errorf("version: %q", out)
	}
	for _, flag := range []string{"--version", "-v"} {
		if got := h.must(flag); got != out {
			t.Errorf("%s: %q, want %q", flag, got, out)
		}
	}
}

func TestHelp(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.terminal = true
	for _, args := range [][]string{{}, {"--help"}, {"help"}, {"network"}, {"network", "--help"}, {"network", "qos", "set", "--help"}, {"lb", "help", "create"}} {
		out := h.must(args...)
		if !strings.Contains(out, "USAGE") {
			t.Errorf("circuit %q: no help:\n%s", args, out)
		}
	}
	if out := h.must(); !strings.Contains(out, "network") || !strings.Contains(out, "CIRCUIT_STATE") {
		t.Errorf("root help lacks commands or env:\n%s", out)
	}
	// Only the command named is built for a run; circuit's own help, from
	// a terminal or with nothing on stdin (a hook's tree has no command),
	// still lists every one.
	empty := newHarness(t)
	for name, out := range map[string]string{"terminal": h.must(), "empty stdin": empty.must(), "--state first": h.must("--state", "/nonexistent", "--help")} {
		_, commands, _ := strings.Cut(out, "COMMANDS:")
		for _, c := range topCommands {
			if !regexp.MustCompile(`(?m)^\s+` + c.name + `\b`).MatchString(commands) {
				t.Errorf("root help (%s) does not list %s:\n%s", name, c.name, out)
			}
		}
	}
	// "help" is an ordinary argument to a leaf command.
	if r := h.run("network", "inspect", "help"); r.line() != `circuit: inspect network help: network "help": not found` {
		t.Errorf("inspect help: %q", r.line())
	}
}

func TestCompletion(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	for _, shell := range []string{"bash", "zsh", "fish"} {
		if out := h.must("completion", shell); !strings.Contains(out, "circuit") {
			t.Errorf("%s completion:\n%s", shell, out)
		}
	}
	out := h.must("network", "--generate-shell-completion")
	for _, sub := range []string{"create", "list", "connect", "qos"} {
		if !strings.Contains(out, sub) {
			t.Errorf("completion of network lacks %s:\n%s", sub, out)
		}
	}
}

func TestCompletionUsageError(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	if r := h.run("completion", "bash", "--bogus"); r.line() != "circuit: completion bash: flag provided but not defined: -bogus" || r.stderr != "" {
		t.Errorf("got %q, stderr %q", r.line(), r.stderr)
	}
}

func TestCommandAt(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		args []string
		word string
		at   int
		ok   bool
	}{
		{[]string{"circuit"}, "", 0, true},
		{[]string{"circuit", "--state", "/s", "--cni-path=/c", "--debug"}, "", 0, true},
		{[]string{"circuit", "--state", "network", "lb", "list"}, "lb", 3, true},
		{[]string{"circuit", "-runc-root", "/r", "network", "list"}, "network", 3, true},
		{[]string{"circuit", "--state=/s", "version"}, "version", 2, true},
		{[]string{"circuit", "network", "--generate-shell-completion"}, "", 0, false},
		{[]string{"circuit", "--", "network"}, "", 0, false},
		{[]string{"circuit", "--state", "/s", "-h"}, "", 0, false},
		{[]string{"circuit", "network", "--help"}, "network", 1, true},
	} {
		word, at, ok := commandAt(c.args)
		if word != c.word || at != c.at || ok != c.ok {
			t.Errorf("commandAt(%q) = %q, %d, %v; want %q, %d, %v", c.args, word, at, ok, c.word, c.at, c.ok)
		}
	}
}

// A run builds the path of commands its words name and no other; words
// that name none keep their level whole.
func TestCommandsBuiltForArgs(t *testing.T) {
	t.Parallel()
	tree := func(c *cli.Command) string {
		var names []string
		_ = c.Walk(func(c *cli.Command) error { names = append(names, c.Name); return nil })
		return strings.Join(names, " ")
	}
	for args, want := range map[string]string{
		"--state /s network connect 1 web": "circuit network connect",
		"lb rm web 10.0.0.1:80":            "circuit lb delete",
		"--debug":                          "circuit",
	} {
		if got := tree(newApp(&app{}, append([]string{"circuit"}, strings.Fields(args)...))); got != want {
			t.Errorf("circuit %s built %q, want %q", args, got, want)
		}
	}
	for _, args := range []string{"network conect", "network --help connect", "help"} {
		full := tree(newApp(&app{}, nil))
		got := tree(newApp(&app{}, append([]string{"circuit"}, strings.Fields(args)...)))
		if first := strings.Fields(args)[0]; first == "network" {
			if !strings.Contains(got, "connect") || !strings.Contains(got, "inspect") || strings.Contains(got, " lb") {
				t.Errorf("circuit %s built %q: want all of network and nothing else", args, got)
			}
		} else if got != full {
			t.Errorf("circuit %s built %q, want everything", args, got)
		}
	}
}
