package main

import (
	_ "embed"
	"fmt"
	"image/color"
	"os"
	"runtime"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// lbProfile is what perf showed when measured by hand: the part of the lb
// section a run cannot write.
//
//go:embed lb_profile.md
var lbProfile string

// spread is "median (p10-p90)".
func spread(s sample) string {
	if len(s) == 0 {
		return "-"
	}
	return fmt.Sprintf("%s (%s-%s)", f(s.median()), f(s.quantile(0.1)), f(s.p90()))
}

// lbTargets adds the lb rows to the table of targets: the same change at
// the largest size against the smallest, circuit-side and as a command.
func (r *report) lbTargets(row func(name, goal, measured string, ok bool)) {
	l := r.lb
	if l == nil || len(l.points) < 2 {
		return
	}
	lo, hi := l.points[0], l.points[len(l.points)-1]
	for _, c := range []struct {
		what   string
		lo, hi sample
		ratios sample // largest over smallest; its median is the figure
		how    string
		ms     float64 // limit, 0 for none
	}{
		{"lb target add, circuit-side (Backend call)", l.pairLo.add, l.pairHi.add,
			sample{l.pairHi.add.median() / l.pairLo.add.median()}, fmt.Sprintf("%d adjacent pairs", len(l.pairLo.add)), 10},
		{"lb target remove, circuit-side (Backend call)", l.pairLo.remove, l.pairHi.remove,
			sample{l.pairHi.remove.median() / l.pairLo.remove.median()}, fmt.Sprintf("%d adjacent pairs", len(l.pairLo.remove)), 10},
		{"`circuit lb add` (the whole command)", lo.cli.add, hi.cli.add, paired(hi.cli.add, lo.cli.add, ratio),
			fmt.Sprintf("median of %d rounds' ratios", len(lo.cli.add)), 0},
		{"`circuit lb remove` (the whole command)", lo.cli.remove, hi.cli.remove, paired(hi.cli.remove, lo.cli.remove, ratio),
			fmt.Sprintf("median of %d rounds' ratios", len(lo.cli.remove)), 0},
	} {
		g := c.ratios.median()
		goal, ok := "within 1.2x", g <= 1.2
		if c.ms > 0 {
			goal += fmt.Sprintf(", under %.0f ms", c.ms)
			ok = ok && c.hi.median() < c.ms
		}
		row(fmt.Sprintf("%s, %d vs %d services", c.what, lo.services, hi.services), goal,
			fmt.Sprintf("%s ms vs %s ms (medians); x%s (%s)", f(c.lo.median()), f(c.hi.median()), f2(g), c.how), ok)
	}
}

func (r *report) lbSection(p printer) {
	l := r.lb
	if l == nil || len(l.points) == 0 {
		return
	}
	p("## 5. Load balancer: one target change among many services")
	p("")
	p("nftables services with %d targets each, in the layout circuit writes now (new) and in the one it wrote before (old, a frozen copy: `pkg/lb/nftables/legacy`), in a network namespace per size and layout, all filled first (new: `Backend.Load`, 1,000 services to a transaction; old: 100 to a transaction). Then one target is added to one service and removed again, timed three ways: the Backend call in the benchmark's process (circuit-side), one process that opens the backend, makes that call and exits (the benchmark in its `__lb-op` mode, for both layouts), and `circuit lb add`/`lb remove` (the new layout only: today's circuit cannot write the old one). %d rounds after one warm-up; a round goes through every size, and within it every way, in turn, starting one further along each round, so that load elsewhere on the machine falls on all alike (the new layout's in-process change, below a millisecond, %d times a round). Cells are median (p10-p90) in ms. The targets above compare the smallest size with the largest: for the Backend call by the medians of %d more pairs of changes made right after one another, each size first half the time (rounds put seconds of other work between the sizes, and a change right after one to the other namespace's table is slower, whichever the size); for the command, by the median of each round's ratio.", l.targets, l.rounds, newReps, newPairs)
	p("")
	p("Measured %s on %d CPUs (%s), Linux %s. The machine is shared with other engineers' test runs: the load average was %s when the section started and %s when it ended.",
		l.when.Format("2006-01-02 15:04 UTC"), runtime.NumCPU(), cpuModel(), kernelRelease(), l.loadStart, l.loadEnd)
	p("")
	for _, op := range []string{"add", "remove"} {
		p("| services | %s: new, circuit-side | old, circuit-side | new, one process | old, one process | `circuit lb %s` |", op, op)
		p("| --- | --- | --- | --- | --- | --- |")
		for _, pt := range l.points {
			pick := func(t lbTimes) sample {
				if op == "add" {
					return t.add
				}
				return t.remove
			}
			p("| %d | %s | %s | %s | %s | %s |", pt.services, spread(pick(pt.newIn)), spread(pick(pt.oldIn)),
				spread(pick(pt.newProc)), spread(pick(pt.oldProc)), spread(pick(pt.cli)))
		}
		p("")
	}
	var fills []string
	for _, pt := range l.points {
		fills = append(fills, fmt.Sprintf("%d: %.1fs new, %.1fs old", pt.services, pt.newFill.Seconds(), pt.oldFill.Seconds()))
	}
	hi := l.points[len(l.points)-1]
	p("Filling the tables took %s. `circuit lb add` peaks at %s with %d services.", strings.Join(fills, "; "), kib(hi.addRSS), hi.services)
	p("")
	if r.cfg.out != "" {
		p("![time to add one target against the number of services](%s)", lbPlot)
		p("")
	}
	if len(l.perf) > 0 {
		p("`perf record -a -g` while the benchmark changed targets for %s with %d services, per layout; the share of the benchmark process's samples spent in each kernel function and what it calls:", perfWindow, hi.services)
		p("")
		head, sep := "| layout | changes | ms each | samples |", "| --- | --- | --- | --- |"
		for _, s := range perfSymbols {
			head += " `" + s + "` |"
			sep += " --- |"
		}
		p("%s", head)
		p("%s", sep)
		for _, s := range l.perf {
			line := fmt.Sprintf("| %s | %d | %s | %d |", s.layout, s.changes, f2(float64(perfWindow.Milliseconds())/float64(max(s.changes, 1))), s.samples)
			for _, sym := range perfSymbols {
				line += fmt.Sprintf(" %.1f%% |", s.shares[sym])
			}
			p("%s", line)
		}
		p("")
	}
	if !r.cfg.smoke {
		p("%s", strings.TrimSpace(lbProfile))
		p("")
	}
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "model name") {
			return strings.TrimSpace(l[strings.Index(l, ":")+1:])
		}
	}
	return "?"
}

func kernelRelease() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}

// plotLB draws the time to add one target against the number of services,
// on log scales: both layouts, circuit-side and as a process.
func plotLB(l *lbResult, file string) error {
	p := plot.New()
	p.Title.Text = "Adding one load-balancer target (nftables)"
	p.X.Label.Text = "services (each with its targets)"
	p.Y.Label.Text = "ms (median)"
	p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
	p.X.Tick.Marker, p.Y.Tick.Marker = plot.LogTicks{Prec: -1}, plot.LogTicks{Prec: -1}
	series := []struct {
		name string
		pick func(pt lbPoint) sample
		c    color.Color
		dash bool
	}{
		{"new layout, circuit-side", func(pt lbPoint) sample { return pt.newIn.add }, circuitColor, false},
		{"new layout, circuit lb add", func(pt lbPoint) sample { return pt.cli.add }, circuitColor, true},
		{"old layout, circuit-side", func(pt lbPoint) sample { return pt.oldIn.add }, otherColor, false},
		{"old layout, one process", func(pt lbPoint) sample { return pt.oldProc.add }, otherColor, true},
	}
	for _, s := range series {
		var xys plotter.XYs
		for _, pt := range l.points {
			xys = append(xys, plotter.XY{X: float64(pt.services), Y: s.pick(pt).median()})
		}
		line, dots, err := plotter.NewLinePoints(xys)
		if err != nil {
			return err
		}
		line.Color, line.Width = s.c, vg.Points(2)
		if s.dash {
			line.Dashes = []vg.Length{vg.Points(6), vg.Points(3)}
		}
		dots.Color = s.c
		p.Add(line, dots)
		p.Legend.Add(s.name, line, dots)
	}
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.YOffs = -vg.Points(4)
	p.Add(plotter.NewGrid())
	return p.Save(7*vg.Inch, 4*vg.Inch, file)
}
