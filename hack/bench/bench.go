package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/circuit-cni/circuit/pkg/testutil"
)

// bench holds what the sections share and everything to undo.
type bench struct {
	cfg   config
	work  string // temporary directory, removed at the end
	state string // circuit's --state
	tag   string // makes bridge and netns names unique to this run

	bundleSet *bundleSet // made on first use

	mu       sync.Mutex
	undo     []func()
	sleepers map[*testutil.Sleeper]bool
}

func newBench(cfg config) (*bench, error) {
	for _, p := range []string{cfg.circuit, filepath.Join(cfg.cniPath, "bridge"), filepath.Join(cfg.cniPath, "host-local")} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("%v (run `make build cni` first)", err)
		}
	}
	work, err := os.MkdirTemp("", "circuit-bench.")
	if err != nil {
		return nil, err
	}
	// A copy, so that a rebuild elsewhere cannot swap the binary mid-run.
	bin := filepath.Join(work, "circuit")
	if err := copyFile(cfg.circuit, bin, 0o755); err != nil {
		os.RemoveAll(work)
		return nil, err
	}
	cfg.circuit = bin
	b := &bench{
		cfg:      cfg,
		work:     work,
		state:    filepath.Join(work, "state"),
		tag:      strconv.FormatInt(int64(os.Getpid())%0xffff, 16),
		sleepers: map[*testutil.Sleeper]bool{},
	}
	return b, nil
}

// atExit registers fn to run at cleanup, last registered first.
func (b *bench) atExit(fn func()) {
	b.mu.Lock()
	b.undo = append(b.undo, fn)
	b.mu.Unlock()
}

func (b *bench) cleanup() {
	b.mu.Lock()
	undo := b.undo
	b.undo = nil
	sl := b.sleepers
	b.sleepers = map[*testutil.Sleeper]bool{}
	b.mu.Unlock()
	for i := len(undo) - 1; i >= 0; i-- {
		undo[i]()
	}
	for s := range sl {
		s.Kill()
	}
	// Pins are bind mounts: a run cut short may leave some.
	pins, _ := filepath.Glob(filepath.Join(b.state, "netns", "*"))
	for _, p := range pins {
		syscall.Unmount(p, syscall.MNT_DETACH)
	}
	os.RemoveAll(b.work)
}

func (b *bench) sleeper() (*testutil.Sleeper, error) {
	s, err := testutil.StartSleeper()
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.sleepers[s] = true
	b.mu.Unlock()
	return s, nil
}

// sleeperPair starts two sleepers: one for circuit, one for the plugin run by hand.
func (b *bench) sleeperPair() (forCircuit, forPlugin *testutil.Sleeper, err error) {
	if forCircuit, err = b.sleeper(); err != nil {
		return nil, nil, err
	}
	if forPlugin, err = b.sleeper(); err != nil {
		b.kill(forCircuit)
		return nil, nil, err
	}
	return forCircuit, forPlugin, nil
}

func (b *bench) kill(s *testutil.Sleeper) {
	b.mu.Lock()
	delete(b.sleepers, s)
	b.mu.Unlock()
	s.Kill()
}

// result is one timed process run.
type result struct {
	took time.Duration // fork to exit, as a shell would time it
	out  []byte        // stdout
}

// execTimed runs a command with env added to the bench's own, stdin from
// in, and times it from start to exit. stderr goes into the error.
func execTimed(ctx context.Context, env []string, in []byte, name string, args ...string) (result, error) {
	return execIn(ctx, "", append(os.Environ(), env...), in, name, args...)
}

// execIn is execTimed with exactly env (none of the bench's own) and dir
// as the working directory ("" for the bench's): as runc runs a hook.
func execIn(ctx context.Context, dir string, env []string, in []byte, name string, args ...string) (result, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env, cmd.Dir = env, dir
	if in != nil {
		cmd.Stdin = bytes.NewReader(in)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	t0 := time.Now()
	err := cmd.Run()
	r := result{took: time.Since(t0), out: out.Bytes()}
	if err != nil {
		return r, fmt.Errorf("%s %s: %v: %s", filepath.Base(name), strings.Join(args, " "), err, strings.TrimSpace(errb.String()+" "+out.String()))
	}
	return r, nil
}

// peakRSS runs a command once more under GNU time for its peak resident
// set size (KiB). Not ru_maxrss of our own child: Go starts children with
// vfork, and the kernel carries the parent's peak across the exec into the
// child's. time forks for real, from a small process.
func peakRSS(ctx context.Context, env []string, name string, args ...string) (int64, error) {
	f, err := os.CreateTemp("", "circuit-bench-rss.")
	if err != nil {
		return 0, err
	}
	f.Close()
	defer os.Remove(f.Name())
	if _, err := execTimed(ctx, env, nil, "/usr/bin/time", append([]string{"-f", "%M", "-o", f.Name(), name}, args...)...); err != nil {
		return 0, err
	}
	raw, err := os.ReadFile(f.Name())
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(lastLine(raw)), 10, 64)
}

func lastLine(b []byte) string {
	l := strings.Split(strings.TrimSpace(string(b)), "\n")
	return l[len(l)-1]
}

func (b *bench) circuitArgs(args ...string) []string {
	return b.circuitArgsIn(b.cfg.cniPath, args...)
}

// circuitArgsIn is circuitArgs with the plugins in cniPath.
func (b *bench) circuitArgsIn(cniPath string, args ...string) []string {
	return append([]string{"--state", b.state, "--cni-path", cniPath}, args...)
}

// circuit runs the measured binary with the bench's state dir and plugins.
func (b *bench) circuit(ctx context.Context, args ...string) (result, error) {
	return b.circuitIn(ctx, b.cfg.cniPath, args...)
}

// circuitIn is circuit with the plugins in cniPath.
func (b *bench) circuitIn(ctx context.Context, cniPath string, args ...string) (result, error) {
	return execTimed(ctx, nil, nil, b.cfg.circuit, b.circuitArgsIn(cniPath, args...)...)
}

// bridgeConf is the README's example network (bridge, host-local, ipMasq,
// default route) on a bridge and subnet of the bench's own.
func (b *bench) bridgeConf(name, bridge, subnet string) []byte {
	return b.conf(name, subnet, map[string]any{"type": "bridge", "bridge": bridge, "ipMasq": true, "isGateway": true})
}

// macvlanConf puts containers on a macvlan of master: a plugin whose own
// work does not grow with the containers already attached.
func (b *bench) macvlanConf(name, master, subnet string) []byte {
	return b.conf(name, subnet, map[string]any{"type": "macvlan", "master": master, "mode": "bridge"})
}

func (b *bench) conf(name, subnet string, plugin map[string]any) []byte {
	plugin["cniVersion"] = "1.0.0"
	plugin["name"] = name
	plugin["ipam"] = map[string]any{
		"type":    "host-local",
		"subnet":  subnet,
		"dataDir": filepath.Join(b.work, "ipam"),
		"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
	}
	raw, _ := json.Marshal(plugin)
	return raw
}

// master makes a link for macvlans to hang off (one end of a veth pair;
// this host's kernel has no dummy links) and removes it at exit.
func (b *bench) master(name string) error {
	if out, err := exec.Command("ip", "link", "add", name, "type", "veth", "peer", "name", name+"p").CombinedOutput(); err != nil {
		return fmt.Errorf("ip link add %s: %v: %s", name, err, out)
	}
	b.atExit(func() { deleteLink(name) })
	return exec.Command("ip", "link", "set", name, "up").Run()
}

// createNetwork defines a network in circuit and, at exit, deletes it and
// the links its plugin made (a bridge).
func (b *bench) createNetwork(ctx context.Context, name string, conf []byte, links ...string) error {
	return b.createNetworkIn(ctx, b.cfg.cniPath, name, conf, links...)
}

// createNetworkIn is createNetwork with the plugins in cniPath.
func (b *bench) createNetworkIn(ctx context.Context, cniPath, name string, conf []byte, links ...string) error {
	file := filepath.Join(b.work, name+".conf")
	if err := os.WriteFile(file, conf, 0o600); err != nil {
		return err
	}
	if _, err := b.circuitIn(ctx, cniPath, "network", "create", file); err != nil {
		return err
	}
	b.atExit(func() {
		b.circuitIn(context.Background(), cniPath, "network", "delete", "--force", name)
		for _, l := range links {
			deleteLink(l)
		}
	})
	return nil
}

// plugin runs a network's plugin by hand, as cnitool or a runtime without
// circuit would: the conf on stdin, the CNI_* variables in the environment.
type plugin struct {
	b    *bench
	typ  string
	conf []byte
	path string // the plugins' dir

	mu   sync.Mutex
	live map[string]int // container ID -> sleeper PID, ADDed and not yet DELeted
}

// newPlugin sets up a network that is only ever driven by hand. Addresses
// and iptables rules go with each DEL; the links named go at exit.
func (b *bench) newPlugin(conf []byte, links ...string) *plugin {
	return b.newPluginIn(b.cfg.cniPath, conf, links...)
}

// newPluginIn is newPlugin with the plugins in cniPath.
func (b *bench) newPluginIn(cniPath string, conf []byte, links ...string) *plugin {
	var c struct {
		Type string `json:"type"`
	}
	json.Unmarshal(conf, &c)
	p := &plugin{b: b, typ: c.Type, conf: conf, path: cniPath, live: map[string]int{}}
	b.atExit(func() {
		// A run cut short: DEL what is still attached, so the plugin takes
		// back its iptables rules too.
		p.mu.Lock()
		live := p.live
		p.mu.Unlock()
		for id, pid := range live {
			p.call(context.Background(), "DEL", id, pid)
		}
		for _, l := range links {
			deleteLink(l)
		}
	})
	return p
}

func (p *plugin) call(ctx context.Context, command, id string, pid int) (result, error) {
	env := []string{
		"CNI_COMMAND=" + command,
		"CNI_CONTAINERID=" + id,
		"CNI_NETNS=/proc/" + strconv.Itoa(pid) + "/ns/net",
		"CNI_IFNAME=eth0",
		"CNI_PATH=" + p.path,
	}
	r, err := execTimed(ctx, env, p.conf, filepath.Join(p.path, p.typ))
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case command == "ADD":
		p.live[id] = pid // even a failed ADD may have left something for DEL
	case command == "DEL" && err == nil:
		delete(p.live, id)
	}
	return r, err
}

// deleteLink removes a link by name; the bench may shell out, circuit may not.
func deleteLink(name string) {
	exec.Command("ip", "link", "del", name).Run()
}

func copyFile(src, dst string, mode os.FileMode) error {
	raw, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, raw, mode)
}

func ints(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%q is not a positive number", f)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no values")
	}
	return out, nil
}
