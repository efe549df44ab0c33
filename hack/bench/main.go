// Command bench measures circuit against what it stands on: the CNI
// plugins called by hand, runc without a hook, and a full nftables
// rewrite. It runs as root against the real kernel, prints a report and,
// with -out, writes it (with its plots next to it) as markdown.
//
//	go build -o bin/bench ./hack/bench && bin/bench -out docs/benchmarks.md
//
// Everything it makes is removed before it exits: sleepers, containers,
// bridges, network namespaces and its state directory. Its addresses are
// 10.211.0.0/16. It reports numbers; it never fails on a timing.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

type config struct {
	circuit  string // the binary measured
	cniPath  string
	debian   string // Debian's plugins, fetched there if missing (own)
	out      string // markdown report, "" for stdout only
	smoke    bool
	rounds   int   // paired rounds of connect vs plugin ADD, hook vs none
	peers    int   // peers for the scale run
	storm    int   // containers started at once
	services []int // lb sizes
	targets  int   // targets per lb service
	rates    []int // qos rates, Mbit/s
	only     map[string]bool
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == hookTimerArg {
		os.Exit(hookTimer(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == lbOpArg {
		os.Exit(lbOp(os.Args[2:]))
	}
	cfg := config{only: map[string]bool{}}
	flag.StringVar(&cfg.circuit, "circuit", "bin/circuit", "circuit `binary` to measure")
	flag.StringVar(&cfg.cniPath, "cni-path", "bin/cni", "`dir` of the CNI plugins")
	flag.StringVar(&cfg.debian, "cni-debian", "bin/cni-debian", "`dir` of Debian's CNI plugins (containernetworking-plugins), for the own section; a full run fetches them there with apt-get download if missing")
	flag.StringVar(&cfg.out, "out", "", "write the report to `file` (markdown; plots go next to it)")
	flag.BoolVar(&cfg.smoke, "smoke", false, "a few rounds of everything, to check the benchmark works (numbers mean little)")
	flag.IntVar(&cfg.rounds, "rounds", 30, "paired `rounds` for connect/disconnect, hook and own")
	flag.IntVar(&cfg.peers, "peers", 500, "`peers` on one network for the scale run")
	flag.IntVar(&cfg.storm, "storm", 50, "containers started at once")
	services := flag.String("services", "10,100,1000,10000", "lb service `counts` measured")
	flag.IntVar(&cfg.targets, "targets", 10, "targets per lb service")
	rates := flag.String("rates", "1,10,100", "qos `rates` in Mbit/s")
	only := flag.String("only", "", "run only these `sections` (comma separated: connect,hook,storm,scale,lb,qos,cluster,own)")
	flag.Parse()
	var err error
	if cfg.services, err = ints(*services); err != nil {
		fatal("-services: %v", err)
	}
	if cfg.rates, err = ints(*rates); err != nil {
		fatal("-rates: %v", err)
	}
	for _, s := range strings.Split(*only, ",") {
		if s != "" {
			if !knownSection(s) {
				fatal("-only: no section %q", s)
			}
			cfg.only[s] = true
		}
	}
	if cfg.smoke {
		cfg.rounds, cfg.peers, cfg.storm, cfg.targets = 3, 10, 5, 3
		cfg.services, cfg.rates = []int{10}, []int{10}
	}
	if os.Geteuid() != 0 {
		fatal("run as root: the benchmark creates network namespaces, bridges and containers")
	}
	for _, p := range []*string{&cfg.circuit, &cfg.cniPath, &cfg.debian} {
		if *p, err = filepath.Abs(*p); err != nil {
			fatal("%v", err)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	r, err := run(ctx, cfg)
	if r != nil {
		md := r.markdown()
		fmt.Print(md)
		if cfg.out != "" {
			if werr := r.write(cfg.out, md); werr != nil {
				fatal("%v", werr)
			}
		}
	}
	if err != nil {
		fatal("%v", err)
	}
}

var sections = []string{"connect", "hook", "storm", "scale", "lb", "qos", "cluster", "own"}

func knownSection(s string) bool {
	for _, k := range sections {
		if k == s {
			return true
		}
	}
	return false
}

func (c config) wants(section string) bool { return len(c.only) == 0 || c.only[section] }

// run measures every section asked for. A section that fails ends the run
// (its error says which), but what was measured before is still reported.
func run(ctx context.Context, cfg config) (*report, error) {
	b, err := newBench(cfg)
	if err != nil {
		return nil, err
	}
	defer b.cleanup()
	r := &report{cfg: cfg, started: time.Now()}
	r.machine = machine(cfg.circuit)
	steps := []struct {
		name string
		fn   func(context.Context, *report) error
	}{
		{"connect", b.connectVsPlugin},
		{"hook", b.hookOverhead},
		{"storm", b.hookStorm},
		{"scale", b.scale},
		{"lb", b.lbScale},
		{"qos", b.qosRates},
		{"cluster", b.clusterBench},
		{"own", b.ownCost},
	}
	for _, s := range steps {
		if !cfg.wants(s.name) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return r, err
		}
		logf("%s ...", s.name)
		t0 := time.Now()
		if err := s.fn(ctx, r); err != nil {
			return r, fmt.Errorf("%s: %w", s.name, err)
		}
		logf("%s done in %s", s.name, time.Since(t0).Round(time.Second))
	}
	r.finished = time.Now()
	r.loadEnd = loadavg()
	return r, nil
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

func fatal(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	os.Exit(1)
}
