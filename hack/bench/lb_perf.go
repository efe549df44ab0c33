package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"time"

	"github.com/circuit-cni/circuit/pkg/lb"
)

// perfShare is where the bench process's time went (perf record -a -g)
// while it changed targets of one layout at the largest size: for each
// kernel function of interest, the share of its samples spent in it and
// what it calls.
type perfShare struct {
	layout  string
	changes int
	samples int
	shares  map[string]float64 // symbol -> % of the process's samples
}

// perfSymbols are the functions the report shows: the commit, the jump
// graph validation the old layout triggers, and adding set elements.
var perfSymbols = []string{"nf_tables_commit", "nf_tables_validate", "nft_table_validate", "nft_chain_validate",
	"nf_tables_newsetelem", "nf_tables_newrule"}

// perfWindow is how long each layout's changes run under perf.
const perfWindow = 4 * time.Second

func (l *lbLab) profile(ctx context.Context, dir string) ([]perfShare, error) {
	if _, err := exec.LookPath("perf"); err != nil {
		return nil, fmt.Errorf("perf is not installed")
	}
	s1 := l.service(1)
	with := s1
	with.Targets = append(slices.Clone(s1.Targets), lb.Target{Address: lbExtra, Weight: 1})
	extra := lb.Target{Address: lbExtra, Weight: 1}
	var out []perfShare
	for _, layout := range []struct {
		name    string
		add, rm func() error
	}{
		{"new", func() error { return l.newB.AddTarget(with, extra) }, func() error { return l.newB.RemoveTarget(s1, extra) }},
		{"old", func() error { return l.oldB.AddTarget(with, extra) }, func() error { return l.oldB.RemoveTarget(s1, extra) }},
	} {
		file := filepath.Join(dir, "perf-"+layout.name+".data")
		n, err := perfRecord(ctx, file, func() (int, error) {
			n := 0
			for t0 := time.Now(); time.Since(t0) < perfWindow; n += 2 {
				if err := layout.add(); err != nil {
					return n, err
				}
				if err := layout.rm(); err != nil {
					return n, err
				}
			}
			return n, nil
		})
		if err != nil {
			return nil, err
		}
		p, err := perfReport(ctx, file)
		if err != nil {
			return nil, err
		}
		p.layout, p.changes = layout.name, n
		out = append(out, p)
		os.Remove(file)
	}
	return out, nil
}

// perfRecord runs fn under `perf record -a -g`.
func perfRecord(ctx context.Context, file string, fn func() (int, error)) (int, error) {
	var errb bytes.Buffer
	cmd := exec.CommandContext(ctx, "perf", "record", "-a", "-g", "-o", file)
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	// perf writes its header once it samples; fn must not start before.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if st, err := os.Stat(file); err == nil && st.Size() > 0 {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			return 0, fmt.Errorf("perf record did not start: %s", errb.String())
		}
	}
	n, ferr := fn()
	cmd.Process.Signal(os.Interrupt)
	if err := cmd.Wait(); err != nil && ferr == nil && !bytes.Contains(errb.Bytes(), []byte("Captured and wrote")) {
		return n, fmt.Errorf("perf record: %v: %s", err, errb.String())
	}
	return n, ferr
}

var (
	perfLine   = regexp.MustCompile(`^\s+([\d.]+)%\s+[\d.]+%\s+\[k\]\s+(\S+)`)
	perfSample = regexp.MustCompile(`^\s+[\d.]+%\s+(\d+)\s+bench\s*$`)
)

// perfReport reads the bench process's samples: how many, and the
// children share of perfSymbols.
func perfReport(ctx context.Context, file string) (perfShare, error) {
	p := perfShare{shares: map[string]float64{}}
	out, err := exec.CommandContext(ctx, "perf", "report", "-i", file, "--stdio", "-n", "--no-children", "-g", "none",
		"--sort", "comm").Output()
	if err != nil {
		return p, fmt.Errorf("perf report: %w", err)
	}
	for _, line := range bytes.Split(out, []byte("\n")) {
		if m := perfSample.FindSubmatch(line); m != nil {
			p.samples, _ = strconv.Atoi(string(m[1]))
		}
	}
	out, err = exec.CommandContext(ctx, "perf", "report", "-i", file, "--stdio", "--children", "--comm", "bench",
		"--percentage", "relative", "--sort", "symbol", "-g", "none", "--percent-limit", "0.01").Output()
	if err != nil {
		return p, fmt.Errorf("perf report: %w", err)
	}
	for _, line := range bytes.Split(out, []byte("\n")) {
		m := perfLine.FindSubmatch(line)
		if m == nil || !slices.Contains(perfSymbols, string(m[2])) {
			continue
		}
		v, _ := strconv.ParseFloat(string(m[1]), 64)
		p.shares[string(m[2])] = v
	}
	return p, nil
}
