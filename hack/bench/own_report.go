package main

import (
	_ "embed"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"
)

// Goals of the own section, as the targets table states them.
const (
	ownShareGoal = 5.0  // ms of circuit's own per operation
	ownRatioGoal = 1.10 // connect against the plugin's ADD
	ownStartGoal = 2.0  // ms over an empty Go binary
)

var ownOpNames = map[string]string{
	"connect":    "`network connect` vs ADD",
	"disconnect": "`network disconnect` vs DEL",
	"prestart":   "prestart hook vs ADD",
	"poststop":   "poststop hook vs DEL",
}

// ownTargets adds the own section's rows to the targets table.
func (r *report) ownTargets(p printer, row func(name, goal, measured string, ok bool)) {
	o := r.own
	if o == nil {
		return
	}
	unmet := func(name, goal, measured string) { p("| %s | %s | %s | - |", name, goal, measured) }
	for _, s := range o.sets {
		share := fmt.Sprintf("circuit's own share of connect/disconnect/prestart/poststop (%s)", s.name)
		vsADD := fmt.Sprintf("connect vs ADD (%s)", s.name)
		if s.skipped != "" {
			unmet(share, fmt.Sprintf("<= %.0f ms", ownShareGoal), "not measured: "+s.skipped)
			unmet(vsADD, fmt.Sprintf("ratio <= %.2f", ownRatioGoal), "not measured: "+s.skipped)
			continue
		}
		var shares []string
		ok := true
		for _, op := range s.ops() {
			v := paired(op.circuit, op.plugin, minus).median()
			shares = append(shares, f(v))
			ok = ok && v <= ownShareGoal
		}
		row(share, fmt.Sprintf("<= %.0f ms", ownShareGoal), fmt.Sprintf("%s ms (medians of %d paired differences)", strings.Join(shares, " / "), s.rounds), ok)
		cr := paired(s.connect, s.add, ratio).median()
		row(vsADD, fmt.Sprintf("ratio <= %.2f", ownRatioGoal), fmt.Sprintf("%s (median of %d paired ratios)", f2(cr), s.rounds), cr <= ownRatioGoal)
	}
	for _, c := range []struct {
		name string
		s    sample
	}{{"`circuit version` vs an empty Go binary", o.version}, {"hook start vs an empty Go binary", o.hookStart}} {
		goal := fmt.Sprintf("within %.0f ms", ownStartGoal)
		if len(o.empty) == 0 {
			unmet(c.name, goal, fmt.Sprintf("%s ms; no empty binary: %s", f(c.s.median()), o.emptyWhy))
			continue
		}
		d := paired(c.s, o.empty, minus).median()
		row(c.name, goal, fmt.Sprintf("%+.1f ms (%s ms vs %s ms)", d, f(c.s.median()), f(o.empty.median())), d <= ownStartGoal)
	}
}

// ownProfile is the section's part a run cannot write: where the time goes
// and each lead's before and after, measured by hand.
//
//go:embed own_profile.md
var ownProfile string

func (r *report) ownSection(p printer) {
	o := r.own
	if o == nil {
		return
	}
	// After the measured part, whichever way it ends.
	defer func() {
		if !r.cfg.smoke {
			p("%s", strings.TrimSpace(ownProfile))
			p("")
		}
	}()
	p("## 8. circuit's own cost")
	p("")
	warmup := 0
	for _, s := range o.sets {
		warmup = max(warmup, s.warmup)
	}
	p("What circuit adds to a container's start and stop on its own. Each operation runs against the bridge plugin's ADD or DEL run by hand (the conf on stdin, `CNI_*` in the environment) on the same conf shape (the README's bridge, host-local, `ipMasq`, `isGateway`, default route), each on its own bridge and /24, with each set of plugins: %d rounds after %s; in each round connect and disconnect get a fresh network namespace per side, the two hooks fresh ones again, and the order of each pair alternates between rounds. circuit's share is circuit's time minus the plugin's and the ratio circuit's time over the plugin's, each taken per round; the table gives their medians. The hooks are circuit run as runc runs a hook, by hand: no arguments, the OCI state on stdin (`creating` with the container's pid; `stopped`), only the hook entry's environment (`CIRCUIT_NETWORK`, `CIRCUIT_STATE`, `CNI_PATH`, `PATH`), in a bundle directory.", r.cfg.rounds, plural(warmup, "warm-up round"))
	p("")
	for _, s := range o.sets {
		title := "Pinned plugins"
		if s.name == "debian" {
			title = "Debian's plugins"
		}
		if s.version != "" {
			p("### %s: `%s` (%s), cniVersion %s", title, filepath.Base(s.dir), s.version, s.cniVersion)
		} else {
			p("### %s: `%s`, cniVersion %s", title, filepath.Base(s.dir), s.cniVersion)
		}
		p("")
		if s.skipped != "" {
			p("Not measured: %s.", strings.TrimSuffix(s.skipped, "."))
			p("")
			continue
		}
		p("| operation | circuit (median) | plugin (median) | circuit's share (median) | ratio (median) | rounds |")
		p("| --- | --- | --- | --- | --- | --- |")
		for _, op := range s.ops() {
			p("| %s | %s ms | %s ms | %s ms | %s | %d |", ownOpNames[op.name], f(op.circuit.median()), f(op.plugin.median()),
				f(paired(op.circuit, op.plugin, minus).median()), f2(paired(op.circuit, op.plugin, ratio).median()), len(op.circuit))
		}
		p("")
	}
	p("### Process start")
	p("")
	emptyDesc := "an empty static Go binary (`package main; func main() {}`, CGO_ENABLED=0, `-trimpath -ldflags '-s -w'`"
	if o.emptyGo != "" {
		emptyDesc += ", " + o.emptyGo
	}
	emptyDesc += ")"
	p("Start to exit, %d rounds after %s, the three in turn (which goes first rotating); the differences are taken per round. The hook's start is %s.", o.startRounds, plural(o.startWarmup, "warm-up round"), o.hookStartMode)
	p("")
	p("| process | median | p90 | minus the empty binary (median) | size |")
	p("| --- | --- | --- | --- | --- |")
	if len(o.empty) > 0 {
		p("| %s | %s ms | %s ms | | %s |", emptyDesc, f(o.empty.median()), f(o.empty.p90()), bytesMiB(o.emptySize))
	} else {
		p("| %s | not measured: %s | | | |", emptyDesc, o.emptyWhy)
	}
	diff := func(s sample) string {
		if len(o.empty) == 0 {
			return "-"
		}
		return fmt.Sprintf("%+.1f ms", paired(s, o.empty, minus).median())
	}
	p("| `circuit version` | %s ms | %s ms | %s | %s |", f(o.version.median()), f(o.version.p90()), diff(o.version), bytesMiB(o.size))
	p("| circuit's hook start | %s ms | %s ms | %s | |", f(o.hookStart.median()), f(o.hookStart.p90()), diff(o.hookStart))
	p("")
	built := ""
	if o.circuitGo != "" {
		built = ", built with " + o.circuitGo
		if o.emptyGo != "" && o.emptyGo != o.circuitGo {
			built += fmt.Sprintf(" (the empty binary with %s: the comparison is not like for like)", o.emptyGo)
		}
	}
	p("The circuit binary: %d bytes (%s)%s.", o.size, bytesMiB(o.size), built)
	p("")
	if o.initWhy != "" {
		p("Package init: not measured: %s.", o.initWhy)
	} else {
		var top []string
		for _, t := range o.initTop {
			top = append(top, fmt.Sprintf("%s %.3f ms", t.name, t.ms))
		}
		p("Package init (`GODEBUG=inittrace=1 circuit version`, the `ms clock` of every `init` line summed; median of %d runs): %.3f ms over %d packages (min-max %.3f-%.3f ms). The largest: %s.",
			o.initRuns, o.initSums.median(), o.initCount, o.initSums.quantile(0), o.initSums.quantile(1), strings.Join(top, ", "))
	}
	p("")
	p("### Syncs to disk")
	p("")
	if o.syscallsWhy != "" {
		p("Not measured: %s.", o.syscallsWhy)
		p("")
		return
	}
	p("One run of each on the pinned set's network under `strace -f -y -e trace=execve,clone,clone3,fork,vfork,fdatasync,fsync,openat`. circuit is the process strace started and the threads it cloned (`CLONE_THREAD`); the plugin processes it started, and theirs, are counted apart.")
	p("")
	p("| operation | fdatasync | fsync | files synced | circuit.db opened (of them read-write) | the plugins' fdatasync + fsync |")
	p("| --- | --- | --- | --- | --- | --- |")
	for _, sc := range o.syscalls {
		p("| %s | %d | %d | %s | %d (%d) | %d |", sc.op, sc.fdatasync, sc.fsync, synced(sc.synced), sc.dbOpens, sc.dbRW, sc.children)
	}
	p("")
}

// synced is "circuit.db 3, hook.log 1".
func synced(m map[string]int) string {
	if len(m) == 0 {
		return "-"
	}
	var names []string
	for n := range m {
		names = append(names, n)
	}
	slices.Sort(names)
	var out []string
	for _, n := range names {
		out = append(out, fmt.Sprintf("%s %d", n, m[n]))
	}
	return strings.Join(out, ", ")
}

func bytesMiB(v int64) string {
	if v <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f MiB", math.Round(float64(v)/(1<<20)*10)/10)
}

// plural is "1 warm-up round", "2 warm-up rounds".
func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
