package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/circuit-cni/circuit/pkg/testutil"
)

// hookResult is `runc run -d` with circuit as prestart hook against the
// same container without it, round by round.
type hookResult struct {
	rounds                    int
	withHook, without         sample // ms, runc run -d
	deleteWith, deleteWithout sample // ms, runc delete -f (poststop disconnects)
	addedRun, addedDelete     sample // ms, paired differences
}

// stormResult is many containers started at once, each with the hook.
type stormResult struct {
	containers   int
	wall         time.Duration // first start to last `runc run -d` returning
	prestart     sample        // ms, each hook as runc waited for it
	distinct     int           // distinct addresses recorded
	deleteWall   time.Duration // every container deleted at once
	poststop     sample        // ms
	left, leased int           // peers recorded and addresses reserved after the deletes
}

// bundleSet makes OCI bundles that share one busybox rootfs and one runc
// state root: a plain one and, per hook setup, one with hooks.
type bundleSet struct {
	b        *bench
	rootfs   string
	runcRoot string
	mu       sync.Mutex
	live     map[string]bool // containers to delete at exit
}

func (b *bench) bundles() (*bundleSet, error) {
	if b.bundleSet != nil {
		return b.bundleSet, nil
	}
	if _, err := exec.LookPath("runc"); err != nil {
		return nil, fmt.Errorf("runc is not installed (make deps)")
	}
	dir := filepath.Join(b.work, "rootfs")
	for _, d := range []string{"bin", "proc", "sys", "dev", "tmp", "etc"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	if err := copyFile(testutil.Busybox(), filepath.Join(dir, "bin", "busybox"), 0o755); err != nil {
		return nil, fmt.Errorf("busybox: %w", err)
	}
	for _, a := range []string{"sh", "sleep"} {
		os.Symlink("busybox", filepath.Join(dir, "bin", a))
	}
	bs := &bundleSet{b: b, rootfs: dir, runcRoot: filepath.Join(b.work, "runc"), live: map[string]bool{}}
	b.atExit(bs.deleteAll)
	b.bundleSet = bs
	return bs, nil
}

// bundle writes a bundle whose container sleeps in a network namespace of
// its own, with the given hooks (nil for none).
func (bs *bundleSet) bundle(name string, hooks map[string]any) (string, error) {
	dir := filepath.Join(bs.b.work, "bundle-"+name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if out, err := exec.Command("runc", "spec", "--bundle", dir).CombinedOutput(); err != nil {
		return "", fmt.Errorf("runc spec: %v: %s", err, out)
	}
	path := filepath.Join(dir, "config.json")
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	var spec map[string]any
	if err := json.Unmarshal(raw, &spec); err != nil {
		return "", err
	}
	proc := spec["process"].(map[string]any)
	proc["terminal"] = false
	proc["args"] = []string{"sleep", "3600"}
	spec["root"] = map[string]any{"path": bs.rootfs, "readonly": true}
	if hooks != nil {
		spec["hooks"] = hooks
	}
	raw, _ = json.MarshalIndent(spec, "", "  ")
	return dir, os.WriteFile(path, raw, 0o644)
}

// hooks is the prestart + poststop pair that runs path (circuit, or the
// timing wrapper around it) for network.
func (b *bench) hooks(network string, args ...string) map[string]any {
	h := map[string]any{
		"path": args[0],
		"args": args,
		"env":  b.hookEnv(network, b.cfg.cniPath),
	}
	return map[string]any{"prestart": []any{h}, "poststop": []any{h}}
}

// hookEnv is the environment of the bench's hook entries: the network
// (none if ""), circuit's state dir and the plugins' dir.
func (b *bench) hookEnv(network, cniPath string) []string {
	var env []string
	if network != "" {
		env = append(env, "CIRCUIT_NETWORK="+network)
	}
	return append(env,
		"CIRCUIT_STATE="+b.state,
		"CNI_PATH="+cniPath,
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	)
}

// runc runs runc with the set's state root. Its output goes to a file: a
// detached container keeps the descriptors it was given, and a pipe would
// hold the wait until the container exits.
func (bs *bundleSet) runc(ctx context.Context, args ...string) (time.Duration, error) {
	out, err := os.CreateTemp(bs.b.work, "runc-out.")
	if err != nil {
		return 0, err
	}
	defer os.Remove(out.Name())
	defer out.Close()
	cmd := exec.CommandContext(ctx, "runc", append([]string{"--root", bs.runcRoot}, args...)...)
	cmd.Stdout, cmd.Stderr = out, out
	t0 := time.Now()
	err = cmd.Run()
	took := time.Since(t0)
	if err != nil {
		msg, _ := os.ReadFile(out.Name())
		return took, fmt.Errorf("runc %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(msg)))
	}
	return took, nil
}

func (bs *bundleSet) start(ctx context.Context, bundle, id string) (time.Duration, error) {
	bs.mu.Lock()
	bs.live[id] = true
	bs.mu.Unlock()
	return bs.runc(ctx, "run", "-d", "--bundle", bundle, id)
}

func (bs *bundleSet) delete(ctx context.Context, id string) (time.Duration, error) {
	took, err := bs.runc(ctx, "delete", "-f", id)
	if err == nil {
		bs.mu.Lock()
		delete(bs.live, id)
		bs.mu.Unlock()
	}
	return took, err
}

func (bs *bundleSet) deleteAll() {
	bs.mu.Lock()
	ids := make([]string, 0, len(bs.live))
	for id := range bs.live {
		ids = append(ids, id)
	}
	bs.mu.Unlock()
	parallel(8, len(ids), func(i int) { bs.delete(context.Background(), ids[i]) })
}

// hookOverhead times `runc run -d` and `runc delete -f` of one container
// with circuit as its prestart/poststop hook and one without, in turn.
func (b *bench) hookOverhead(ctx context.Context, r *report) error {
	const net = "bench-hook"
	if err := b.createNetwork(ctx, net, b.bridgeConf(net, "cbh"+b.tag, "10.211.16.0/24"), "cbh"+b.tag); err != nil {
		return err
	}
	bs, err := b.bundles()
	if err != nil {
		return err
	}
	plain, err := bs.bundle("plain", nil)
	if err != nil {
		return err
	}
	hooked, err := bs.bundle("hook", b.hooks(net, b.cfg.circuit))
	if err != nil {
		return err
	}
	res := &hookResult{rounds: b.cfg.rounds}
	const warmup = 2
	for i := range warmup + b.cfg.rounds {
		if err := ctx.Err(); err != nil {
			return err
		}
		withID, withoutID := fmt.Sprintf("bh-%s-%d", b.tag, i), fmt.Sprintf("bn-%s-%d", b.tag, i)
		var with, without, delWith, delWithout time.Duration
		var err error
		for _, step := range order(i%2 == 0,
			func() error { with, err = bs.start(ctx, hooked, withID); return err },
			func() error { without, err = bs.start(ctx, plain, withoutID); return err }) {
			if err := step(); err != nil {
				return err
			}
		}
		for _, step := range order(i%2 == 0,
			func() error { delWith, err = bs.delete(ctx, withID); return err },
			func() error { delWithout, err = bs.delete(ctx, withoutID); return err }) {
			if err := step(); err != nil {
				return err
			}
		}
		if i < warmup {
			continue
		}
		res.withHook = append(res.withHook, ms(with))
		res.without = append(res.without, ms(without))
		res.deleteWith = append(res.deleteWith, ms(delWith))
		res.deleteWithout = append(res.deleteWithout, ms(delWithout))
	}
	res.addedRun = paired(res.withHook, res.without, minus)
	res.addedDelete = paired(res.deleteWith, res.deleteWithout, minus)
	r.hook = res
	return nil
}

// hookStorm starts every container at once, each with the hook (through
// a wrapper that times it), then deletes them all at once.
func (b *bench) hookStorm(ctx context.Context, r *report) error {
	const net = "bench-storm"
	if b.cfg.storm > 250 {
		return fmt.Errorf("at most 250 containers fit the storm's /24")
	}
	if err := b.createNetwork(ctx, net, b.bridgeConf(net, "cbt"+b.tag, "10.211.17.0/24"), "cbt"+b.tag); err != nil {
		return err
	}
	bs, err := b.bundles()
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	timings := filepath.Join(b.work, "hook-times")
	bundle, err := bs.bundle("storm", b.hooks(net, self, hookTimerArg, timings, b.cfg.circuit))
	if err != nil {
		return err
	}
	n := b.cfg.storm
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("bs-%s-%d", b.tag, i)
	}
	errs := make([]error, n)
	release := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-release
			_, errs[i] = bs.start(ctx, bundle, ids[i])
		}()
	}
	t0 := time.Now()
	close(release)
	wg.Wait()
	res := &stormResult{containers: n, wall: time.Since(t0)}
	r.storm = res
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	var peers []struct {
		IPs []string `json:"ips"`
	}
	out, err := b.circuit(ctx, "network", "inspect", net, "--format", "{{json .Peers}}")
	if err != nil {
		return err
	}
	if err := json.Unmarshal(out.out, &peers); err != nil {
		return fmt.Errorf("network inspect: %w", err)
	}
	seen := map[string]bool{}
	for _, p := range peers {
		for _, ip := range p.IPs {
			seen[ip] = true
		}
	}
	res.distinct = len(seen)

	t0 = time.Now()
	parallel(n, n, func(i int) { _, errs[i] = bs.delete(ctx, ids[i]) })
	res.deleteWall = time.Since(t0)
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	times, err := readHookTimes(timings)
	if err != nil {
		return err
	}
	// runc hands prestart hooks a "creating" (older runc: "created") state.
	for status, v := range times {
		if status == "stopped" {
			res.poststop = append(res.poststop, v...)
		} else {
			res.prestart = append(res.prestart, v...)
		}
	}
	out, err = b.circuit(ctx, "network", "inspect", net, "--format", "{{len .Peers}}")
	if err != nil {
		return err
	}
	res.left, _ = strconv.Atoi(strings.TrimSpace(string(out.out)))
	res.leased = len(testutil.Reservations(filepath.Join(b.work, "ipam"), net))
	return nil
}

// hookTimerArg makes the bench binary a hook wrapper: it runs circuit with
// the hook's stdin and appends "<status> <ms>" to a file.
const hookTimerArg = "__hook-timer"

func hookTimer(args []string) int {
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: bench "+hookTimerArg+" FILE CIRCUIT [ARGS...]")
		return 2
	}
	state, _ := io.ReadAll(os.Stdin)
	var st struct {
		Status string `json:"status"`
	}
	json.Unmarshal(state, &st)
	cmd := exec.Command(args[1], args[2:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(state), os.Stdout, os.Stderr
	t0 := time.Now()
	err := cmd.Run()
	took := time.Since(t0)
	if f, ferr := os.OpenFile(args[0], os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); ferr == nil {
		fmt.Fprintf(f, "%s %.3f\n", st.Status, ms(took))
		f.Close()
	}
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func readHookTimes(path string) (map[string]sample, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("hook timings: %w", err)
	}
	defer f.Close()
	out := map[string]sample{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var status string
		var v float64
		if _, err := fmt.Sscanf(sc.Text(), "%s %f", &status, &v); err == nil {
			out[status] = append(out[status], v)
		}
	}
	return out, sc.Err()
}

// parallel runs fn(0..n-1), at most width at a time.
func parallel(width, n int, fn func(i int)) {
	sem := make(chan struct{}, max(1, width))
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			fn(i)
		}()
	}
	wg.Wait()
}
