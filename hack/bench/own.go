package main

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// ownSet is circuit measured against one set of plugins: each operation
// against the bridge plugin's ADD or DEL by hand, round by round.
type ownSet struct {
	name       string // "pinned", "debian"
	dir        string // the plugins
	cniVersion string // of the confs
	version    string // of the plugins, as far as known
	skipped    string // why the set was not measured, "" if it was
	rounds     int
	warmup     int

	connect, add      sample // ms
	disconnect, del   sample // ms
	prestart, preAdd  sample // ms: the prestart hook, the ADD beside it
	poststop, postDel sample // ms
}

// ownOp is one row of a set's table: circuit's side and the plugin's.
type ownOp struct {
	name            string
	circuit, plugin sample
}

func (s *ownSet) ops() []ownOp {
	return []ownOp{
		{"connect", s.connect, s.add},
		{"disconnect", s.disconnect, s.del},
		{"prestart", s.prestart, s.preAdd},
		{"poststop", s.poststop, s.postDel},
	}
}

// ownResult is circuit's own cost: its share of each container start and
// stop, its process start against an empty Go binary, its package init,
// and the syncs it makes.
type ownResult struct {
	sets []*ownSet

	startRounds, startWarmup  int
	empty, version, hookStart sample // ms
	emptyWhy                  string // why the empty binary is missing
	hookStartMode             string // which hook invocation hookStart is
	emptyGo, circuitGo        string // Go versions
	emptySize, size           int64  // bytes

	initRuns  int
	initSums  sample // ms, the "ms clock" of every init line, per run
	initCount int    // packages with an init line
	initTop   []initPkg
	initWhy   string

	syscalls    []ownSyscalls
	syscallsWhy string
}

// initPkg is one package's init time, the median over the runs.
type initPkg struct {
	name string
	ms   float64
}

// ownSyscalls is what one run of an operation asked of the disk.
type ownSyscalls struct {
	op               string
	fdatasync, fsync int
	synced           map[string]int // file base name -> fdatasync+fsync
	dbOpens, dbRW    int            // successful opens of circuit.db, read-write ones
	children         int            // fdatasync+fsync by the processes circuit started
}

// Subnets and links of the own section: the pinned set on 10.211.32.0/23,
// Debian's on 10.211.34.0/23; circuit's network first, the plugin's second.
var ownNets = map[string]struct{ circuitNet, pluginNet, circuitLink, pluginLink string }{
	"pinned": {"10.211.32.0/24", "10.211.33.0/24", "cbe", "cbf"},
	"debian": {"10.211.34.0/24", "10.211.35.0/24", "cbd", "cbg"},
}

// ownCost is section "own".
func (b *bench) ownCost(ctx context.Context, r *report) error {
	res := &ownResult{}
	bundle, err := b.ownBundle()
	if err != nil {
		return err
	}
	pinned := &ownSet{name: "pinned", dir: b.cfg.cniPath, cniVersion: "1.0.0", version: pluginsVersion(b.cfg.cniPath)}
	debian := &ownSet{name: "debian", dir: b.cfg.debian, cniVersion: "0.4.0"}
	debian.version, debian.skipped = b.debianPlugins(ctx)
	res.sets = []*ownSet{pinned, debian}
	for _, s := range res.sets {
		if s.skipped != "" {
			logf("own: %s plugins not measured: %s", s.name, s.skipped)
			continue
		}
		if err := b.ownPairs(ctx, s, bundle); err != nil {
			return fmt.Errorf("%s plugins (%s): %w", s.name, s.dir, err)
		}
	}
	if err := b.ownSyscalls(ctx, res, bundle); err != nil {
		return err
	}
	if err := b.ownStartup(ctx, res, bundle); err != nil {
		return err
	}
	if err := b.ownInit(ctx, res); err != nil {
		return err
	}
	r.own = res
	return nil
}

// ownBundle is the bundle directory the hooks are told about (and run
// in, as runc runs them): a config.json and nothing else.
func (b *bench) ownBundle() (string, error) {
	dir := filepath.Join(b.work, "bundle-own")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	spec := `{"ociVersion":"1.0.2","process":{"args":["sleep","3600"],"cwd":"/"},"root":{"path":"rootfs"}}` + "\n"
	return dir, os.WriteFile(filepath.Join(dir, "config.json"), []byte(spec), 0o644)
}

// ownConf is the README's bridge with the set's cniVersion.
func (b *bench) ownConf(s *ownSet, name, bridge, subnet string) []byte {
	var c map[string]any
	json.Unmarshal(b.bridgeConf(name, bridge, subnet), &c)
	c["cniVersion"] = s.cniVersion
	raw, _ := json.Marshal(c)
	return raw
}

// ociState is what runc writes on a hook's stdin.
func ociState(id, status string, pid int, bundle string) []byte {
	raw, _ := json.Marshal(struct {
		OCIVersion  string            `json:"ociVersion"`
		ID          string            `json:"id"`
		Status      string            `json:"status"`
		PID         int               `json:"pid,omitempty"`
		Bundle      string            `json:"bundle"`
		Annotations map[string]string `json:"annotations"`
	}{"1.0.2", id, status, pid, bundle, map[string]string{}})
	return raw
}

// hookRun runs circuit as runc runs a hook: no arguments, the OCI state on
// stdin, only the entry's environment, in the bundle directory.
func (b *bench) hookRun(ctx context.Context, network, cniPath, bundle, id, status string, pid int) (result, error) {
	r, err := execIn(ctx, bundle, b.hookEnv(network, cniPath), ociState(id, status, pid, bundle), b.cfg.circuit)
	if err != nil {
		what := "prestart"
		if status == "stopped" {
			what = "poststop"
		}
		return r, fmt.Errorf("%s hook (container %s): %w", what, id, err)
	}
	return r, nil
}

// ownPairs measures connect, disconnect and the two hooks against the
// plugin's ADD and DEL on a network of the set's own.
func (b *bench) ownPairs(ctx context.Context, s *ownSet, bundle string) error {
	nets := ownNets[s.name]
	net := "bench-own-" + s.name
	cl, pl := nets.circuitLink+b.tag, nets.pluginLink+b.tag
	if err := b.createNetworkIn(ctx, s.dir, net, b.ownConf(s, net, cl, nets.circuitNet), cl); err != nil {
		return err
	}
	p := b.newPluginIn(s.dir, b.ownConf(s, net+"-plain", pl, nets.pluginNet), pl)
	s.rounds, s.warmup = b.cfg.rounds, 2
	if b.cfg.smoke {
		s.warmup = 0 // the numbers mean little; that it runs is what counts
	}
	for i := range s.warmup + s.rounds {
		if err := ctx.Err(); err != nil {
			return err
		}
		circuitFirst := i%2 == 0
		pair := func(circuit, plugin func() error) error {
			for _, step := range order(circuitFirst, circuit, plugin) {
				if err := step(); err != nil {
					return fmt.Errorf("round %d: %w", i, err)
				}
			}
			return nil
		}
		// connect and disconnect, a fresh namespace for each side
		a, sl, err := b.sleeperPair()
		if err != nil {
			return err
		}
		pid, id := strconv.Itoa(a.PID), fmt.Sprintf("bo-%s-%s-%d", b.tag, s.name, i)
		var conn, add, disc, del result
		err = pair(func() (err error) { conn, err = b.circuitIn(ctx, s.dir, "network", "connect", pid, net); return err },
			func() (err error) { add, err = p.call(ctx, "ADD", id, sl.PID); return err })
		if err == nil {
			err = pair(func() (err error) { disc, err = b.circuitIn(ctx, s.dir, "network", "disconnect", pid, net); return err },
				func() (err error) { del, err = p.call(ctx, "DEL", id, sl.PID); return err })
		}
		b.kill(a)
		b.kill(sl)
		if err != nil {
			return err
		}
		// the hooks, on fresh namespaces again
		a, sl, err = b.sleeperPair()
		if err != nil {
			return err
		}
		hid, id := fmt.Sprintf("bo-%s-%s-h%d", b.tag, s.name, i), fmt.Sprintf("bo-%s-%s-p%d", b.tag, s.name, i)
		var pre, preAdd, post, postDel result
		err = pair(func() (err error) { pre, err = b.hookRun(ctx, net, s.dir, bundle, hid, "creating", a.PID); return err },
			func() (err error) { preAdd, err = p.call(ctx, "ADD", id, sl.PID); return err })
		if err == nil && i == 0 {
			err = b.ownCheckPeers(ctx, s, net, 1)
		}
		if err == nil {
			err = pair(func() (err error) { post, err = b.hookRun(ctx, net, s.dir, bundle, hid, "stopped", 0); return err },
				func() (err error) { postDel, err = p.call(ctx, "DEL", id, sl.PID); return err })
		}
		if err == nil && i == 0 {
			err = b.ownCheckPeers(ctx, s, net, 0)
		}
		b.kill(a)
		b.kill(sl)
		if err != nil {
			return err
		}
		if i < s.warmup {
			continue
		}
		s.connect = append(s.connect, ms(conn.took))
		s.add = append(s.add, ms(add.took))
		s.disconnect = append(s.disconnect, ms(disc.took))
		s.del = append(s.del, ms(del.took))
		s.prestart = append(s.prestart, ms(pre.took))
		s.preAdd = append(s.preAdd, ms(preAdd.took))
		s.poststop = append(s.poststop, ms(post.took))
		s.postDel = append(s.postDel, ms(postDel.took))
	}
	return nil
}

// ownCheckPeers makes sure the hooks driven by hand did their work: a hook
// that exits 0 having done nothing would look cheap.
func (b *bench) ownCheckPeers(ctx context.Context, s *ownSet, net string, want int) error {
	out, err := b.circuitIn(ctx, s.dir, "network", "inspect", net, "--format", "{{len .Peers}}")
	if err != nil {
		return err
	}
	if n, _ := strconv.Atoi(strings.TrimSpace(string(out.out))); n != want {
		return fmt.Errorf("after the hook by hand network %s has %d peers, want %d", net, n, want)
	}
	return nil
}

// debianPlugins finds Debian's plugins in -cni-debian or, on a full run,
// fetches them there: apt-get download and dpkg-deb -x, never installed
// (in /usr/lib/cni circuit's default plugin path would find them). It
// returns their version, or why they cannot be had.
func (b *bench) debianPlugins(ctx context.Context) (version, why string) {
	dir := b.cfg.debian
	have := func() bool {
		for _, p := range []string{"bridge", "host-local"} {
			if st, err := os.Stat(filepath.Join(dir, p)); err != nil || !st.Mode().IsRegular() {
				return false
			}
		}
		return true
	}
	versionFile := filepath.Join(dir, "containernetworking-plugins.version")
	if have() {
		if v, err := os.ReadFile(versionFile); err == nil {
			return "containernetworking-plugins " + strings.TrimSpace(string(v)), ""
		}
		return pluginsVersion(dir), ""
	}
	if b.cfg.smoke {
		return "", fmt.Sprintf("no plugins in %s, and a smoke run does not download them (a full run does)", filepath.Base(dir))
	}
	for _, tool := range []string{"apt-get", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			return "", fmt.Sprintf("no plugins in %s and no %s to fetch Debian's", filepath.Base(dir), tool)
		}
	}
	logf("own: fetching Debian's containernetworking-plugins into %s", dir)
	tmp, err := os.MkdirTemp(b.work, "debian.")
	if err != nil {
		return "", err.Error()
	}
	defer os.RemoveAll(tmp)
	run := func(dir string, name string, args ...string) ([]byte, error) {
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, lastLine(append(stderr.Bytes(), out...)))
		}
		return out, nil
	}
	if _, err := run(tmp, "apt-get", "download", "-q", "containernetworking-plugins"); err != nil {
		return "", err.Error()
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "containernetworking-plugins_*.deb"))
	if len(debs) != 1 {
		return "", fmt.Sprintf("apt-get download containernetworking-plugins left %d packages", len(debs))
	}
	v, err := run(tmp, "dpkg-deb", "-f", debs[0], "Version")
	if err != nil {
		return "", err.Error()
	}
	x := filepath.Join(tmp, "x")
	if _, err := run(tmp, "dpkg-deb", "-x", debs[0], x); err != nil {
		return "", err.Error()
	}
	files, _ := os.ReadDir(filepath.Join(x, "usr/lib/cni"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err.Error()
	}
	// bridge last: a copy cut short is not taken for a whole one.
	slices.SortStableFunc(files, func(a, b os.DirEntry) int {
		return boolInt(a.Name() == "bridge") - boolInt(b.Name() == "bridge")
	})
	for _, fi := range files {
		if !fi.Type().IsRegular() {
			continue
		}
		dst := filepath.Join(dir, fi.Name())
		if err := copyFile(filepath.Join(x, "usr/lib/cni", fi.Name()), dst+".tmp", 0o755); err != nil {
			return "", err.Error()
		}
		if err := os.Rename(dst+".tmp", dst); err != nil {
			return "", err.Error()
		}
	}
	version = strings.TrimSpace(string(v))
	os.WriteFile(versionFile, []byte(version+"\n"), 0o644)
	if !have() {
		return "", fmt.Sprintf("Debian's containernetworking-plugins %s has no bridge or host-local in usr/lib/cni", version)
	}
	return "containernetworking-plugins " + version, ""
}

func boolInt(v bool) int {
	if v {
		return 1
	}
	return 0
}

// pluginsVersion is the containernetworking/plugins module the bridge
// plugin in dir was built from, as its build information says.
func pluginsVersion(dir string) string {
	bi, err := buildinfo.ReadFile(filepath.Join(dir, "bridge"))
	if err != nil {
		return "version unknown"
	}
	const mod = "github.com/containernetworking/plugins"
	if bi.Main.Path == mod && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return "containernetworking/plugins " + bi.Main.Version
	}
	for _, d := range bi.Deps {
		if d.Path == mod {
			return "containernetworking/plugins " + d.Version
		}
	}
	return "built with " + bi.GoVersion
}

// ownStartup times the start and exit of an empty static Go binary,
// `circuit version` and circuit's hook mode doing nothing, in turn.
func (b *bench) ownStartup(ctx context.Context, res *ownResult, bundle string) error {
	res.startRounds, res.startWarmup = 200, 5
	if b.cfg.smoke {
		res.startRounds, res.startWarmup = 20, 2
	}
	res.size = fileSize(b.cfg.circuit)
	if bi, err := buildinfo.ReadFile(b.cfg.circuit); err == nil {
		res.circuitGo = bi.GoVersion
	}
	empty, err := b.emptyBinary(ctx)
	if err != nil {
		res.emptyWhy = err.Error()
		logf("own: no empty Go binary: %v", err)
	} else {
		res.emptySize = fileSize(empty)
		if bi, err := buildinfo.ReadFile(empty); err == nil {
			res.emptyGo = bi.GoVersion
		}
	}
	hook, err := b.hookStartProbe(ctx, res, bundle)
	if err != nil {
		return err
	}
	steps := []func() error{
		func() error {
			if empty == "" {
				return nil
			}
			r, err := execTimed(ctx, nil, nil, empty)
			res.empty = append(res.empty, ms(r.took))
			return err
		},
		func() error {
			r, err := b.circuit(ctx, "version")
			res.version = append(res.version, ms(r.took))
			return err
		},
		func() error {
			r, err := hook()
			res.hookStart = append(res.hookStart, ms(r.took))
			return err
		},
	}
	for i := range res.startWarmup + res.startRounds {
		if err := ctx.Err(); err != nil {
			return err
		}
		for k := range steps {
			if err := steps[(i+k)%len(steps)](); err != nil {
				return err
			}
		}
		if i < res.startWarmup {
			res.empty, res.version, res.hookStart = res.empty[:0], res.version[:0], res.hookStart[:0]
		}
	}
	return nil
}

// hookStartProbe picks the hook invocation to time for the hook mode's
// start: a prestart with no network in the entry's environment if circuit
// takes that as nothing to do, else the cheapest one that succeeds, a
// poststop of a container on no network.
func (b *bench) hookStartProbe(ctx context.Context, res *ownResult, bundle string) (func() (result, error), error) {
	s, err := b.sleeper()
	if err != nil {
		return nil, err
	}
	b.atExit(func() { b.kill(s) })
	id := fmt.Sprintf("bo-%s-start", b.tag)
	prestart := func() (result, error) {
		return execIn(ctx, bundle, b.hookEnv("", b.cfg.cniPath), ociState(id, "creating", s.PID, bundle), b.cfg.circuit)
	}
	_, perr := prestart()
	if perr == nil {
		res.hookStartMode = "prestart (`creating`, the container's pid) with no network in the entry's environment: circuit exits 0 having done nothing"
		return prestart, nil
	}
	poststop := func() (result, error) {
		return execIn(ctx, bundle, b.hookEnv("", b.cfg.cniPath), ociState(id, "stopped", 0, bundle), b.cfg.circuit)
	}
	if _, err := poststop(); err != nil {
		return nil, fmt.Errorf("hook start: prestart with no network failed (%v), and so did poststop of a container on no network: %w", perr, err)
	}
	msg := perr.Error()
	if i := strings.Index(msg, "circuit: "); i >= 0 {
		msg = msg[i+len("circuit: "):]
	}
	res.hookStartMode = fmt.Sprintf("poststop (`stopped`) of a container on no network: it opens the datastore, finds nothing to do and appends a line to hook.log. A prestart with no network in the entry's environment is no valid invocation: it exits 1 (%q)", strings.TrimSpace(msg))
	return poststop, nil
}

// emptyBinary builds `package main; func main() {}` as circuit is built
// (static, -trimpath, -s -w) with the go in PATH.
func (b *bench) emptyBinary(ctx context.Context) (string, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", errors.New("no go in PATH to build it")
	}
	dir := filepath.Join(b.work, "empty")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module empty\n\ngo 1.21\n"), 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte("package main\n\nfunc main() {}\n"), 0o644); err != nil {
		return "", err
	}
	out := filepath.Join(dir, "empty")
	cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-ldflags", "-s -w", "-o", out, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=", "GOWORK=off", "GOTOOLCHAIN=local")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v: %s", err, strings.TrimSpace(string(msg)))
	}
	return out, nil
}

var initLine = regexp.MustCompile(`^init (\S+) @\S+ ms, ([0-9.]+) ms clock`)

// parseInittrace sums the "ms clock" of GODEBUG=inittrace=1's lines.
func parseInittrace(stderr []byte) (total float64, pkgs map[string]float64) {
	pkgs = map[string]float64{}
	for _, l := range strings.Split(string(stderr), "\n") {
		m := initLine.FindStringSubmatch(strings.TrimSpace(l))
		if m == nil {
			continue
		}
		v, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			continue
		}
		total += v
		pkgs[m[1]] += v
	}
	return total, pkgs
}

// ownInit runs `circuit version` with GODEBUG=inittrace=1 a few times.
func (b *bench) ownInit(ctx context.Context, res *ownResult) error {
	res.initRuns = 5
	per := map[string]sample{}
	for range res.initRuns {
		cmd := exec.CommandContext(ctx, b.cfg.circuit, b.circuitArgs("version")...)
		cmd.Env = append(os.Environ(), "GODEBUG=inittrace=1")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("GODEBUG=inittrace=1 circuit version: %v: %s", err, lastLine(stderr.Bytes()))
		}
		total, pkgs := parseInittrace(stderr.Bytes())
		if len(pkgs) == 0 {
			res.initWhy = "GODEBUG=inittrace=1 printed no init lines"
			return nil
		}
		res.initSums = append(res.initSums, total)
		res.initCount = max(res.initCount, len(pkgs))
		for p, v := range pkgs {
			per[p] = append(per[p], v)
		}
	}
	for p, v := range per {
		res.initTop = append(res.initTop, initPkg{p, v.median()})
	}
	slices.SortFunc(res.initTop, func(a, b initPkg) int {
		if a.ms != b.ms {
			if a.ms > b.ms {
				return -1
			}
			return 1
		}
		return strings.Compare(a.name, b.name)
	})
	res.initTop = res.initTop[:min(5, len(res.initTop))]
	return nil
}

// ownSyscalls runs connect, disconnect and the two hooks once each under
// strace on the pinned set's network, and counts the syncs circuit made.
func (b *bench) ownSyscalls(ctx context.Context, res *ownResult, bundle string) error {
	straceBin, err := exec.LookPath("strace")
	if err != nil {
		res.syscallsWhy = "strace is not installed (make deps)"
		return nil
	}
	net := "bench-own-pinned"
	a, err := b.sleeper()
	if err != nil {
		return err
	}
	defer b.kill(a)
	h, err := b.sleeper()
	if err != nil {
		return err
	}
	defer b.kill(h)
	pid, hid := strconv.Itoa(a.PID), fmt.Sprintf("bo-%s-strace", b.tag)
	trace := filepath.Join(b.work, "strace.out")
	straced := func(env []string, dir string, stdin []byte, args ...string) ([]string, error) {
		os.Remove(trace)
		sargs := append([]string{"-f", "-y", "-qq", "-o", trace, "-e", "trace=execve,clone,clone3,fork,vfork,fdatasync,fsync,openat", b.cfg.circuit}, args...)
		if _, err := execIn(ctx, dir, env, stdin, straceBin, sargs...); err != nil {
			return nil, err
		}
		raw, err := os.ReadFile(trace)
		if err != nil {
			return nil, err
		}
		return strings.Split(string(raw), "\n"), nil
	}
	for _, op := range []struct {
		name  string
		env   []string
		dir   string
		stdin []byte
		args  []string
	}{
		{"`network connect`", os.Environ(), "", nil, b.circuitArgs("network", "connect", pid, net)},
		{"`network disconnect`", os.Environ(), "", nil, b.circuitArgs("network", "disconnect", pid, net)},
		{"prestart hook", b.hookEnv(net, b.cfg.cniPath), bundle, ociState(hid, "creating", h.PID, bundle), nil},
		{"poststop hook", b.hookEnv(net, b.cfg.cniPath), bundle, ociState(hid, "stopped", 0, bundle), nil},
	} {
		lines, err := straced(op.env, op.dir, op.stdin, op.args...)
		if err != nil {
			return fmt.Errorf("%s under strace: %w", op.name, err)
		}
		sc, err := countSyncs(lines, filepath.Join(b.state, "circuit.db"))
		if err != nil {
			return fmt.Errorf("%s under strace: %w", op.name, err)
		}
		sc.op = op.name
		res.syscalls = append(res.syscalls, sc)
	}
	return nil
}

var (
	straceLine  = regexp.MustCompile(`^(\d+) +(.*)$`)
	straceCall  = regexp.MustCompile(`^(\w+)\((.*)\) += (-?\d+)`)
	straceFD    = regexp.MustCompile(`^\d+<(.*)>`)
	straceOpen  = regexp.MustCompile(`^[^,]*, "((?:[^"\\]|\\.)*)"`)
	unfinished  = " <unfinished ...>"
	resumedHead = regexp.MustCompile(`^<\.\.\. \w+ resumed>`)
)

// countSyncs reads `strace -f -y` output: the process strace started
// (its first execve) and the threads it made (clone with CLONE_THREAD)
// are circuit; the processes it started, and their threads, are not.
func countSyncs(lines []string, db string) (ownSyscalls, error) {
	type call struct {
		tid   int
		name  string
		args  string
		ret   int
		whole string
	}
	var calls []call
	pending := map[int]string{}
	for _, l := range lines {
		m := straceLine.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		tid, _ := strconv.Atoi(m[1])
		text := m[2]
		if strings.HasSuffix(text, unfinished) {
			pending[tid] = strings.TrimSuffix(text, unfinished)
			continue
		}
		if loc := resumedHead.FindStringIndex(text); loc != nil {
			text = pending[tid] + text[loc[1]:]
			delete(pending, tid)
		}
		c := straceCall.FindStringSubmatch(text)
		if c == nil {
			continue
		}
		ret, _ := strconv.Atoi(c[3])
		calls = append(calls, call{tid, c[1], c[2], ret, text})
	}
	root := -1
	for _, c := range calls {
		if c.name == "execve" && c.ret == 0 {
			root = c.tid
			break
		}
	}
	if root < 0 {
		return ownSyscalls{}, errors.New("no execve in strace's output")
	}
	mine := map[int]bool{root: true}
	// A thread's clone may show after the thread's first calls: go over
	// the clones until no thread is added.
	for changed := true; changed; {
		changed = false
		for _, c := range calls {
			if strings.HasPrefix(c.name, "clone") && mine[c.tid] && c.ret > 0 && !mine[c.ret] && strings.Contains(c.args, "CLONE_THREAD") {
				mine[c.ret], changed = true, true
			}
		}
	}
	sc := ownSyscalls{synced: map[string]int{}}
	for _, c := range calls {
		switch c.name {
		case "fdatasync", "fsync":
			if !mine[c.tid] {
				sc.children++
				continue
			}
			if c.name == "fdatasync" {
				sc.fdatasync++
			} else {
				sc.fsync++
			}
			file := "?"
			if m := straceFD.FindStringSubmatch(c.args); m != nil {
				file = filepath.Base(m[1])
			}
			sc.synced[file]++
		case "openat":
			if m := straceOpen.FindStringSubmatch(c.args); m != nil && mine[c.tid] && m[1] == db && c.ret >= 0 {
				sc.dbOpens++
				if strings.Contains(c.args, "O_RDWR") {
					sc.dbRW++
				}
			}
		}
	}
	return sc, nil
}
