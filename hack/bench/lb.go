package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"
)

// lbPoint is one service count of the lb run.
type lbPoint struct {
	services  int
	add       sample // ms, `circuit lb add` of one target (20 times)
	remove    sample // ms, `circuit lb remove` of it
	addRSS    int64  // KiB, peak of one `lb add`
	rewrite   sample // ms, `nft -f` of the whole equivalent ruleset
	rewriteMB float64
	rules     int   // ruleset size, lines of `nft list table`
	nftRSS    int64 // KiB, peak of one `nft -f`
}

type lbResult struct {
	targets int
	points  []lbPoint
}

// lbScale grows nftables services (each with its targets) in a network
// namespace of its own and, at each size, times adding and removing one
// target against writing the whole ruleset again, which is what a
// full-resync load balancer does on every change (kube-proxy's nftables
// mode writes its ruleset through `nft -f`).
func (b *bench) lbScale(ctx context.Context, r *report) error {
	if _, err := exec.LookPath("nft"); err != nil {
		return fmt.Errorf("nft is not installed (make deps): it writes the full-resync ruleset")
	}
	lbns, err := b.netns("cbl")
	if err != nil {
		return err
	}
	resyncns, err := b.netns("cbr")
	if err != nil {
		return err
	}
	state := filepath.Join(b.work, "lbstate")
	lb := func(args ...string) (result, error) {
		var res result
		err := inNetns(lbns, func() error {
			var err error
			res, err = execTimed(ctx, nil, nil, b.cfg.circuit, append([]string{"--state", state, "lb"}, args...)...)
			return err
		})
		return res, err
	}
	vip := netip.MustParseAddr("10.211.64.0")
	targets := make([]string, b.cfg.targets)
	t := netip.MustParseAddr("10.211.80.0")
	for i := range targets {
		t = t.Next()
		targets[i] = t.String() + ":8080"
	}
	const extra = "10.211.81.1:8080"
	sizes := slices.Sorted(slices.Values(b.cfg.services))
	if sizes[len(sizes)-1] > 1000 {
		return fmt.Errorf("at most 1000 services fit 10.211.64.0/22")
	}
	res := &lbResult{targets: b.cfg.targets}
	r.lb = res
	n := 0
	for _, size := range sizes {
		for ; n < size; n++ {
			if err := ctx.Err(); err != nil {
				return err
			}
			vip = vip.Next()
			name := "s" + strconv.Itoa(n)
			if _, err := lb("create", name, vip.String()+":80", "--backend", "nftables"); err != nil {
				return err
			}
			if _, err := lb(append([]string{"add", name}, targets...)...); err != nil {
				return err
			}
		}
		pt := lbPoint{services: size}
		for range 20 {
			a, err := lb("add", "s0", extra)
			if err != nil {
				return err
			}
			rm, err := lb("remove", "s0", extra)
			if err != nil {
				return err
			}
			pt.add = append(pt.add, ms(a.took))
			pt.remove = append(pt.remove, ms(rm.took))
		}
		// The equivalent ruleset, as the kernel holds it after a change;
		// that change once more under time(1) for its memory.
		if err := inNetns(lbns, func() error {
			var err error
			pt.addRSS, err = peakRSS(ctx, nil, b.cfg.circuit, "--state", state, "lb", "add", "s0", extra)
			return err
		}); err != nil {
			return err
		}
		var dump result
		if err := inNetns(lbns, func() error {
			var err error
			dump, err = execTimed(ctx, nil, nil, "nft", "list", "table", "inet", "circuit")
			return err
		}); err != nil {
			return err
		}
		if _, err := lb("remove", "s0", extra); err != nil {
			return err
		}
		file := filepath.Join(b.work, "ruleset.nft")
		// One transaction that replaces the table with all it should hold.
		full := append([]byte("add table inet circuit\ndelete table inet circuit\n"), dump.out...)
		if err := os.WriteFile(file, full, 0o600); err != nil {
			return err
		}
		pt.rewriteMB = float64(len(full)) / (1 << 20)
		pt.rules = lines(dump.out)
		for range 5 {
			var w result
			if err := inNetns(resyncns, func() error {
				var err error
				w, err = execTimed(ctx, nil, nil, "nft", "-f", file)
				return err
			}); err != nil {
				return err
			}
			pt.rewrite = append(pt.rewrite, ms(w.took))
		}
		if err := inNetns(resyncns, func() error {
			var err error
			pt.nftRSS, err = peakRSS(ctx, nil, "nft", "-f", file)
			return err
		}); err != nil {
			return err
		}
		res.points = append(res.points, pt)
		logf("lb: %d services: add %s ms, full rewrite %s ms", size, f(pt.add.median()), f(pt.rewrite.median()))
	}
	return nil
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

func lines(b []byte) int {
	n := 0
	for _, c := range b {
		if c == '\n' {
			n++
		}
	}
	return n
}
