package main

import (
	_ "embed"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// report is what the sections measured; nil sections were not run.
type report struct {
	cfg               config
	started, finished time.Time
	machine           string
	loadEnd           string
	connect           *connectResult
	hook              *hookResult
	storm             *stormResult
	scale             []*scaleResult
	lb                *lbResult
	qos               *qosResult
	cluster           *clusterResult
	own               *ownResult
	plots             []string // files written next to the report
}

// method is the part of docs/benchmarks.md that does not change from run to run.
//
//go:embed method.md
var method string

// profile is where circuit's own time goes, measured by hand: the part of
// the page a run cannot produce.
//
//go:embed profile.md
var profile string

const (
	scalePlot = "benchmarks-connect-scale.png"
	lbPlot    = "benchmarks-lb-add.png"
)

func (r *report) write(out, md string) error {
	dir := filepath.Dir(out)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if len(r.scale) > 0 {
		if err := plotScale(r.scale, filepath.Join(dir, scalePlot)); err != nil {
			return fmt.Errorf("plot: %w", err)
		}
	}
	if r.lb != nil && len(r.lb.points) > 0 {
		if err := plotLB(r.lb, filepath.Join(dir, lbPlot)); err != nil {
			return fmt.Errorf("plot: %w", err)
		}
	}
	return os.WriteFile(out, []byte(md), 0o644)
}

func (r *report) markdown() string {
	var w strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&w, format+"\n", args...) }
	p("# Benchmarks")
	p("")
	p("<!-- Written by `make bench` (hack/bench); a new run replaces this file. -->")
	p("")
	if r.cfg.smoke {
		p("**Smoke run** (`-smoke`): a few rounds of each, to check the benchmark works. The numbers mean little.")
		p("")
	}
	p("%s", strings.TrimSpace(method))
	p("")
	p("## This run")
	p("")
	p("%s", r.machine)
	if !r.finished.IsZero() {
		p("- took %s; load average at the end: %s", r.finished.Sub(r.started).Round(time.Second), r.loadEnd)
	}
	p("- command: `%s`", strings.Join(append([]string{"bin/bench"}, redact(os.Args[1:])...), " "))
	p("")
	r.targets(p)
	r.connectSection(p)
	r.hookSection(p)
	r.stormSection(p)
	r.scaleSection(p)
	r.lbSection(p)
	r.qosSection(p)
	r.clusterSection(p)
	r.ownSection(p)
	if !r.cfg.smoke {
		p("%s", strings.TrimSpace(profile))
	}
	return w.String()
}

type printer func(format string, args ...any)

// targets compares each section with the goal set for it.
func (r *report) targets(p printer) {
	p("## Targets")
	p("")
	p("| target | goal | measured | met |")
	p("| --- | --- | --- | --- |")
	row := func(name, goal, measured string, ok bool) {
		p("| %s | %s | %s | %s |", name, goal, measured, yes(ok))
	}
	if c := r.connect; c != nil {
		cr := paired(c.connect, c.add, ratio).median()
		row("connect vs the plugin's own ADD", "ratio <= 1.25 (aim: 1.10)", fmt.Sprintf("%s (median of %d paired ratios)", f2(cr), len(c.connect)), cr <= 1.25)
		dr := paired(c.disconnect, c.del, ratio).median()
		row("disconnect vs the plugin's own DEL", "ratio <= 1.25", f2(dr), dr <= 1.25)
	}
	if h := r.hook; h != nil {
		added := h.addedRun.median()
		if c := r.connect; c != nil {
			limit := c.add.median() + 10
			row("hook overhead on `runc run -d`", "<= plain ADD + 10 ms", fmt.Sprintf("%s ms added (plain ADD %s ms, so <= %s ms)", f(added), f(c.add.median()), f(limit)), added <= limit)
		} else {
			p("| hook overhead on `runc run -d` | <= plain ADD + 10 ms | %s ms added (connect section not run) | - |", f(added))
		}
	}
	if s := r.storm; s != nil {
		ok := s.distinct == s.containers && s.left == 0 && s.leased == 0
		row(fmt.Sprintf("%d containers started at once", s.containers), "all connected with distinct addresses, all released", fmt.Sprintf("%d distinct; %d peers and %d addresses left after delete", s.distinct, s.left, s.leased), ok)
	}
	for _, s := range r.scale {
		if len(s.connect) == 0 {
			continue
		}
		first, last := s.ends()
		growth := last.circuit / first.circuit
		row(fmt.Sprintf("connect with %d peers vs the first, %s", len(s.connect), s.shape), "within 20%", fmt.Sprintf("%s ms vs %s ms: %+.0f%% (the plugin by hand: %+.0f%%)", f(last.circuit), f(first.circuit), (growth-1)*100, (last.plugin/first.plugin-1)*100), growth <= 1.2)
		if first.share <= 0 {
			p("| circuit's share of it (connect minus the plugin's ADD), %s | within 20%% | %s ms vs %s ms: the plugin's noise is larger than the share | - |", s.shape, f(last.share), f(first.share))
			continue
		}
		share := last.share / first.share
		row(fmt.Sprintf("circuit's share of it (connect minus the plugin's ADD), %s", s.shape), "within 20%", fmt.Sprintf("%s ms vs %s ms: %+.0f%%", f(last.share), f(first.share), (share-1)*100), share <= 1.2)
	}
	r.lbTargets(row)
	if q := r.qos; q != nil {
		worst, at := 0.0, 0
		for _, pt := range q.points {
			for _, v := range []float64{pt.egress.median(), pt.ingress.median()} {
				if d := math.Abs(v/float64(pt.rate) - 1); d > worst {
					worst, at = d, pt.rate
				}
			}
		}
		row("measured rate vs set rate", "within 10%", fmt.Sprintf("worst %.1f%% off (at %d Mbit/s)", worst*100, at), worst <= 0.1)
	}
	r.clusterTargets(row)
	r.ownTargets(p, row)
	p("")
}

func (r *report) connectSection(p printer) {
	c := r.connect
	if c == nil {
		return
	}
	p("## 1. Connect and disconnect against the plugin")
	p("")
	p("%d rounds after 2 warm-up rounds; each round a fresh network namespace for each side, the order alternating.", c.rounds)
	p("")
	p("| operation | median | p90 | vs the plugin (median of paired ratios) | added (median of paired differences) |")
	p("| --- | --- | --- | --- | --- |")
	p("| `circuit network connect` | %s ms | %s ms | %s | %s ms |", f(c.connect.median()), f(c.connect.p90()), f2(paired(c.connect, c.add, ratio).median()), f(paired(c.connect, c.add, minus).median()))
	p("| bridge plugin ADD by hand | %s ms | %s ms | | |", f(c.add.median()), f(c.add.p90()))
	p("| `circuit network disconnect` | %s ms | %s ms | %s | %s ms |", f(c.disconnect.median()), f(c.disconnect.p90()), f2(paired(c.disconnect, c.del, ratio).median()), f(paired(c.disconnect, c.del, minus).median()))
	p("| bridge plugin DEL by hand | %s ms | %s ms | | |", f(c.del.median()), f(c.del.p90()))
	p("| `circuit version` (process start and exit) | %s ms | %s ms | | |", f(c.startup.median()), f(c.startup.p90()))
	p("")
	p("Peak RSS: connect %s, disconnect %s.", kib(c.connectRSS), kib(c.disconnectRSS))
	p("")
}

func (r *report) hookSection(p printer) {
	h := r.hook
	if h == nil {
		return
	}
	p("## 2. circuit as a runc hook")
	p("")
	p("`runc run -d` of a busybox container with circuit as its prestart (and poststop) hook, and of the same container without hooks, in turn: %d rounds after 2 warm-up rounds.", h.rounds)
	p("")
	p("| | with the hook | without | added: median | added: p90 |")
	p("| --- | --- | --- | --- | --- |")
	p("| `runc run -d` | %s ms | %s ms | %s ms | %s ms |", f(h.withHook.median()), f(h.without.median()), f(h.addedRun.median()), f(h.addedRun.p90()))
	p("| `runc delete -f` | %s ms | %s ms | %s ms | %s ms |", f(h.deleteWith.median()), f(h.deleteWithout.median()), f(h.addedDelete.median()), f(h.addedDelete.p90()))
	p("")
}

func (r *report) stormSection(p printer) {
	s := r.storm
	if s == nil {
		return
	}
	p("## 3. Storm: %d containers at once", s.containers)
	p("")
	p("Every `runc run -d` started together, each container with the hook; each hook timed as runc waits for it (a wrapper around circuit). Then every `runc delete -f` together.")
	p("")
	p("| | wall time | hook p50 | hook p99 |")
	p("| --- | --- | --- | --- |")
	p("| start (prestart: connect) | %s ms | %s ms | %s ms |", f(ms(s.wall)), f(s.prestart.median()), f(s.prestart.p99()))
	p("| delete (poststop: disconnect) | %s ms | %s ms | %s ms |", f(ms(s.deleteWall)), f(s.poststop.median()), f(s.poststop.p99()))
	p("")
	p("%d containers got %d distinct addresses; after the deletes %d peers were recorded and host-local held %d addresses.", s.containers, s.distinct, s.left, s.leased)
	p("")
}

// scaleEnds is the median connect time at the start and at the end of the
// scale run (a window of 10% of the peers, at least 5), and circuit's share:
// the median of the differences of each pair measured back to back.
type scaleEnds struct{ circuit, plugin, share float64 }

func (s *scaleResult) ends() (first, last scaleEnds) {
	w := max(5, len(s.connect)/10)
	w = min(w, len(s.connect))
	n := len(s.connect)
	at := func(lo, hi int) scaleEnds {
		c, a := s.connect[lo:hi], s.add[lo:hi]
		return scaleEnds{c.median(), a.median(), paired(c, a, minus).median()}
	}
	return at(0, w), at(n-w, n)
}

func (r *report) scaleSection(p printer) {
	if len(r.scale) == 0 || len(r.scale[0].connect) == 0 {
		return
	}
	s0 := r.scale[0]
	w := min(max(5, len(s0.connect)/10), len(s0.connect))
	p("## 4. Scale: %d peers on one network", s0.peers)
	p("")
	p("Peers attached one at a time to one circuit network and, in step, to a network driven by the plugin alone (each on its own bridge or macvlan master and /22): first with the README's bridge, whose plugin does more work as containers accumulate (a masquerade chain per container, bridge ports), then with macvlan, whose plugin does not. \"First\" and \"last\" are the medians of the first and last %d attachments; circuit's share is the median, over the same attachments, of circuit's connect minus the plugin's ADD measured right before or after it.", w)
	p("")
	p("| network | operation | first | last | change |")
	p("| --- | --- | --- | --- | --- |")
	for _, s := range r.scale {
		if len(s.connect) == 0 {
			continue
		}
		first, last := s.ends()
		p("| %s | `circuit network connect` | %s ms | %s ms | %+.0f%% |", s.shape, f(first.circuit), f(last.circuit), (last.circuit/first.circuit-1)*100)
		p("| %s | plugin ADD by hand | %s ms | %s ms | %+.0f%% |", s.shape, f(first.plugin), f(last.plugin), (last.plugin/first.plugin-1)*100)
		p("| %s | circuit's share | %s ms | %s ms | %+.0f%% |", s.shape, f(first.share), f(last.share), (last.share/first.share-1)*100)
	}
	p("")
	p("With %d peers (bridge): `network list` %s ms, `network inspect` %s ms (medians of 10; `list` peaks at %s); the datastore is %s. Disconnecting every peer, 8 at a time, took %s.",
		len(s0.connect), f(s0.list.median()), f(s0.inspect.median()), kib(s0.listRSS), bytesHuman(s0.dbBytes), s0.teardown.Round(100*time.Millisecond))
	p("")
	if r.cfg.out != "" {
		p("![connect latency against peers on the network](%s)", scalePlot)
		p("")
		p("Dots are single attachments; lines are running medians of 25 (solid: bridge, dashed: macvlan).")
		p("")
	}
}

func (r *report) qosSection(p printer) {
	q := r.qos
	if q == nil {
		return
	}
	p("## 6. QoS: measured rate against the set rate")
	p("")
	p("`network qos set --rate R --ceiling R --direction both`, then iperf3 (%d s after %d s left out) from the container to its gateway (egress) and back (ingress, `-R`), 3 times each: TCP, and UDP offered at 1.5 times the rate. iperf3 counts payload; the shaper counts whole frames, so a full-size TCP segment carries at most 1448/1514 = 95.6%% of the rate as payload (UDP: 1448/1490 = 97.2%%). Unshaped, the same path carried %s Mbit/s.", q.seconds, q.omit, f(q.unshaped))
	p("")
	p("| set | TCP egress (median, min-max) | / set | TCP ingress (median, min-max) | / set | UDP egress received | / set |")
	p("| --- | --- | --- | --- | --- | --- | --- |")
	for _, pt := range q.points {
		p("| %d Mbit/s | %s (%s-%s) Mbit/s | %s | %s (%s-%s) Mbit/s | %s | %s Mbit/s | %s |", pt.rate,
			f2(pt.egress.median()), f2(pt.egress.quantile(0)), f2(pt.egress.quantile(1)), f2(pt.egress.median()/float64(pt.rate)),
			f2(pt.ingress.median()), f2(pt.ingress.quantile(0)), f2(pt.ingress.quantile(1)), f2(pt.ingress.median()/float64(pt.rate)),
			f2(pt.udp.median()), f2(pt.udp.median()/float64(pt.rate)))
	}
	p("")
}

func machine(circuit string) string {
	var w strings.Builder
	cpu := "?"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				cpu = strings.TrimSpace(l[strings.Index(l, ":")+1:])
				break
			}
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		fmt.Sscanf(strings.TrimPrefix(strings.SplitN(string(b), "\n", 2)[0], "MemTotal:"), "%d", &kb)
		mem = fmt.Sprintf(", %.1f GiB", float64(kb)/(1<<20))
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	ver, _ := exec.Command(circuit, "version").Output()
	fmt.Fprintf(&w, "- date: %s\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(&w, "- machine: %d CPUs (%s)%s, Linux %s\n", runtime.NumCPU(), cpu, mem, strings.TrimSpace(string(kernel)))
	fmt.Fprintf(&w, "- %s, built with %s; CNI plugins from `bin/cni` (containernetworking/plugins, hack/cni/go.mod's version)\n", firstLine(ver), runtime.Version())
	fmt.Fprintf(&w, "- load average at the start: %s", loadavg())
	return w.String()
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return s
}

// redact keeps absolute paths of this machine out of the published command.
func redact(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if filepath.IsAbs(a) {
			a = filepath.Base(a)
		}
		out[i] = a
	}
	return out
}

func kib(v int64) string {
	if v <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f MiB", float64(v)/1024)
}

func bytesHuman(v int64) string {
	if v >= 1<<20 {
		return fmt.Sprintf("%.1f MiB", float64(v)/(1<<20))
	}
	return strconv.FormatInt(v/1024, 10) + " KiB"
}

func fileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

func yes(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}
