package main

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/circuit-cni/circuit/pkg/lb"
	"github.com/circuit-cni/circuit/pkg/lb/nftables"
	"github.com/circuit-cni/circuit/pkg/lb/nftables/legacy"
)

// The lb section: one target added to and removed from one service among
// many, in the nftables layout circuit has now (new) and in the one it had
// before (old: a frozen copy, pkg/lb/nftables/legacy), in a network
// namespace per size and layout, all filled first and then measured in
// rounds that go through every size and layout in turn, so that a burst of
// load elsewhere on the machine falls on all of them alike.
//
// Each change is timed three ways:
//   - circuit-side: the Backend call, in this process (what the kernel
//     and circuit's own code cost);
//   - one process: a process that opens the backend, makes the one call,
//     closes and exits (the bench itself, in lbOp mode), as a command
//     would, for both layouts;
//   - `circuit lb add`/`lb remove`: the real command, new layout only
//     (today's circuit cannot write the old layout).

// lbVIPs is where the services' addresses come from (16,384 of them).
var lbVIPs = netip.MustParsePrefix("10.211.64.0/18")

// lbTimes are the samples of one way of timing a change, in ms, reps to
// a round.
type lbTimes struct {
	add, remove sample
	reps        int
}

// lbPoint is one service count of the lb run.
type lbPoint struct {
	services int
	newIn    lbTimes // circuit-side, new layout
	oldIn    lbTimes // circuit-side, old layout
	newProc  lbTimes // one process, new layout
	oldProc  lbTimes // one process, old layout
	cli      lbTimes // circuit lb add/remove (new layout)
	newFill  time.Duration
	oldFill  time.Duration
	addRSS   int64 // KiB, peak of one `lb add`
}

type lbResult struct {
	when      time.Time
	targets   int
	rounds    int
	points    []lbPoint
	loadStart string
	loadEnd   string
	perf      []perfShare // nil when perf did not run
	// pairLo and pairHi are the smallest and largest size's circuit-side
	// times from changes made right after one another (newPairs of each).
	pairLo, pairHi lbTimes
}

// newPairs is how many adjacent pairs of new-layout changes compare the
// largest size with the smallest.
const newPairs = 200

func (b *bench) lbScale(ctx context.Context, r *report) error {
	sizes := slices.Sorted(slices.Values(b.cfg.services))
	if max := 1 << (32 - lbVIPs.Bits()); sizes[len(sizes)-1] >= max {
		return fmt.Errorf("at most %d services fit %s", max-1, lbVIPs)
	}
	rounds := 20
	if b.cfg.smoke {
		rounds = 3
	}
	res := &lbResult{when: time.Now().UTC(), targets: b.cfg.targets, rounds: rounds, loadStart: loadavg()}
	r.lb = res
	var labs []*lbLab
	defer func() {
		for _, l := range labs {
			l.close()
		}
	}()
	for _, size := range sizes {
		l, err := b.newLBLab(size)
		if err != nil {
			return err
		}
		labs = append(labs, l)
		if err := l.fill(ctx); err != nil {
			return fmt.Errorf("%d services: %w", size, err)
		}
		logf("lb: filled %d services: %.1fs new, %.1fs old", size, l.pt.newFill.Seconds(), l.pt.oldFill.Seconds())
	}
	for r := range rounds + 1 { // round 0 warms up
		for k := range labs {
			if err := labs[(k+r)%len(labs)].round(ctx, r); err != nil {
				return err
			}
		}
	}
	if len(labs) > 1 {
		var err error
		if res.pairLo, res.pairHi, err = adjacentPairs(labs[0], labs[len(labs)-1]); err != nil {
			return err
		}
	}
	for _, l := range labs {
		var err error
		if l.pt.addRSS, err = l.rss(ctx); err != nil {
			return err
		}
		res.points = append(res.points, l.pt)
		logf("lb: %d services: add %s ms new, %s ms old (circuit-side medians); `lb add` %s ms", l.size,
			f(l.pt.newIn.add.median()), f(l.pt.oldIn.add.median()), f(l.pt.cli.add.median()))
	}
	if !b.cfg.smoke {
		var err error
		if res.perf, err = labs[len(labs)-1].profile(ctx, b.work); err != nil {
			logf("lb: perf: %v (the report goes on without it)", err)
		}
	}
	res.loadEnd = loadavg()
	return nil
}

// lbLab is one size: a namespace per layout, their backends, and the
// CLI's state for its service s0.
type lbLab struct {
	b          *bench
	size       int
	newNS, old string // netns paths
	state      string // the CLI's state dir
	newB       *nftables.Backend
	oldB       *legacy.Backend
	targets    []string
	ways       []change
	pt         lbPoint
}

func (b *bench) newLBLab(size int) (*lbLab, error) {
	n := strconv.Itoa(size)
	l := &lbLab{b: b, size: size, state: filepath.Join(b.work, "lbstate"+n), pt: lbPoint{services: size}}
	var err error
	if l.newNS, err = b.netns("cbn" + n); err != nil {
		return nil, err
	}
	if l.old, err = b.netns("cbo" + n); err != nil {
		return nil, err
	}
	if l.newB, err = nftables.New(l.newNS); err != nil {
		return nil, err
	}
	if l.oldB, err = legacy.New(l.old); err != nil {
		l.newB.Close()
		return nil, err
	}
	t := netip.MustParseAddr("10.211.128.0")
	for range b.cfg.targets {
		t = t.Next()
		l.targets = append(l.targets, t.String()+":8080")
	}
	return l, nil
}

func (l *lbLab) close() {
	l.newB.Close()
	l.oldB.Close()
}

func (l *lbLab) vip(i int) netip.Addr {
	a := lbVIPs.Addr()
	for range i + 1 {
		a = a.Next()
	}
	return a
}

func (l *lbLab) targetList() []string { return slices.Clone(l.targets) }

// service i has the lab's targets, weight 1.
func (l *lbLab) service(i int) lb.Service {
	s := lb.Service{Name: "s" + strconv.Itoa(i), Address: l.vip(i).String() + ":80"}
	for _, t := range l.targets {
		s.Targets = append(s.Targets, lb.Target{Address: t, Weight: 1})
	}
	return s
}

// fill programs the size's services in both layouts: s0 through the CLI
// (the new layout) or the backend (the old), s1.. through the backends.
func (l *lbLab) fill(ctx context.Context) error {
	if _, err := l.cli(ctx, "create", "s0", l.vip(0).String()+":80", "--backend", "nftables"); err != nil {
		return err
	}
	if _, err := l.cli(ctx, append([]string{"add", "s0"}, l.targetList()...)...); err != nil {
		return err
	}
	svcs := make([]lb.Service, 0, l.size)
	for i := range l.size {
		svcs = append(svcs, l.service(i))
	}
	t0 := time.Now()
	if err := l.newB.Load(svcs[1:]); err != nil {
		return fmt.Errorf("fill the new layout: %w", err)
	}
	l.pt.newFill = time.Since(t0)
	t0 = time.Now()
	if err := l.fillOld(svcs); err != nil {
		return fmt.Errorf("fill the old layout: %w", err)
	}
	l.pt.oldFill = time.Since(t0)
	l.ways = l.changes(ctx)
	return nil
}

// fillOld programs services in the old layout, 100 to a transaction: its
// commits re-validate the table, and a transaction's size is bounded.
func (l *lbLab) fillOld(svcs []lb.Service) error {
	for len(svcs) > 0 {
		n := min(100, len(svcs))
		if err := l.oldB.Fill(svcs[:n]); err != nil {
			return err
		}
		svcs = svcs[n:]
	}
	return nil
}

const lbExtra = "10.211.129.1:8080"

// change is one way of adding and removing the extra target; each step
// reports its own time. reps is how many times a round runs it: a cheap
// in-process change runs more, for a steadier median below a millisecond.
type change struct {
	times   *lbTimes
	add, rm func() (time.Duration, error)
	reps    int
}

// inProcess times a call in this process.
func inProcess(fn func() error) func() (time.Duration, error) {
	return func() (time.Duration, error) {
		t0 := time.Now()
		err := fn()
		return time.Since(t0), err
	}
}

// changes are the ways of changing this size's tables.
func (l *lbLab) changes(ctx context.Context) []change {
	pt := &l.pt
	s1 := l.service(1)
	with := s1
	with.Targets = append(slices.Clone(s1.Targets), lb.Target{Address: lbExtra, Weight: 1})
	extra := lb.Target{Address: lbExtra, Weight: 1}
	proc := func(layout, ns, op string, svc lb.Service) func() (time.Duration, error) {
		return func() (time.Duration, error) { return l.op(ctx, layout, ns, op, svc, extra) }
	}
	return []change{
		{&pt.newIn, inProcess(func() error { return l.newB.AddTarget(with, extra) }),
			inProcess(func() error { return l.newB.RemoveTarget(s1, extra) }), newReps},
		{&pt.oldIn, inProcess(func() error { return l.oldB.AddTarget(with, extra) }),
			inProcess(func() error { return l.oldB.RemoveTarget(s1, extra) }), 1},
		{&pt.newProc, proc("new", l.newNS, "add", with), proc("new", l.newNS, "remove", s1), 1},
		{&pt.oldProc, proc("old", l.old, "add", with), proc("old", l.old, "remove", s1), 1},
		{&pt.cli, func() (time.Duration, error) { return l.cli(ctx, "add", "s0", lbExtra) },
			func() (time.Duration, error) { return l.cli(ctx, "remove", "s0", lbExtra) }, 1},
	}
}

// adjacentPairs changes the smallest and the largest size's new layout
// right after one another, the order alternating: a comparison the rounds,
// whose sizes are seconds apart, blur. (A change right after one to the
// other namespace's table is slower, whichever the size: hence the
// alternation, each size first half the time.)
func adjacentPairs(lo, hi *lbLab) (lbTimes, lbTimes, error) {
	var out [2]lbTimes
	for i := range newPairs {
		for k := range 2 {
			j := (k + i) % 2
			w := []*lbLab{lo, hi}[j].ways[0] // the new layout, in process
			for op, fn := range []func() (time.Duration, error){w.add, w.rm} {
				d, err := fn()
				if err != nil {
					return out[0], out[1], err
				}
				if op == 0 {
					out[j].add = append(out[j].add, ms(d))
				} else {
					out[j].remove = append(out[j].remove, ms(d))
				}
			}
		}
	}
	return out[0], out[1], nil
}

// newReps is how many times a round changes the new layout in process:
// below a millisecond, its median wants many samples.
const newReps = 25

// round times every way of changing once (round 0 only warms up).
func (l *lbLab) round(ctx context.Context, r int) error {
	for k := range l.ways {
		w := l.ways[(k+r)%len(l.ways)]
		w.times.reps = w.reps
		for i, fn := range slices.Repeat([]func() (time.Duration, error){w.add, w.rm}, w.reps) {
			if err := ctx.Err(); err != nil {
				return err
			}
			d, err := fn()
			if err != nil {
				return fmt.Errorf("%d services: %w", l.size, err)
			}
			switch {
			case r == 0:
			case i%2 == 0:
				w.times.add = append(w.times.add, ms(d))
			default:
				w.times.remove = append(w.times.remove, ms(d))
			}
		}
	}
	return nil
}

// cli runs `circuit lb ARGS` in the new layout's namespace; its time is
// the process's from fork to exit.
func (l *lbLab) cli(ctx context.Context, args ...string) (time.Duration, error) {
	var res result
	err := inNetns(l.newNS, func() error {
		var err error
		res, err = execTimed(ctx, nil, nil, l.b.cfg.circuit, append([]string{"--state", l.state, "lb"}, args...)...)
		return err
	})
	return res.took, err
}

// rss is the peak RSS of one `circuit lb add` (then removed again).
func (l *lbLab) rss(ctx context.Context) (int64, error) {
	var kib int64
	err := inNetns(l.newNS, func() error {
		var err error
		kib, err = peakRSS(ctx, nil, l.b.cfg.circuit, "--state", l.state, "lb", "add", "s0", lbExtra)
		return err
	})
	if err != nil {
		return 0, err
	}
	_, err = l.cli(ctx, "remove", "s0", lbExtra)
	return kib, err
}

// netns makes a named network namespace (ip netns, so it shows up where
// people look) and removes it at exit; nftables tables go with it.
func (b *bench) netns(prefix string) (string, error) {
	name := prefix + "-" + b.tag
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return "", fmt.Errorf("ip netns add %s: %v: %s", name, err, out)
	}
	b.atExit(func() { exec.Command("ip", "netns", "del", name).Run() })
	return "/run/netns/" + name, nil
}

// inNetns runs fn on a thread moved into the namespace at path; processes
// fn starts are forked from that thread and so start there. The thread is
// thrown away afterwards.
func inNetns(path string, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			done <- err
			return
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err != nil {
			done <- fmt.Errorf("setns %s: %w", path, err)
			return
		}
		done <- fn()
	}()
	return <-done
}
