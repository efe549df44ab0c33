// Command circuit-agent is circuit's node agent: one per host of a
// cluster. It holds the etcd client (the circuit binary never links it),
// registers its node, shares cluster networks, address blocks and
// load-balancer services through etcd, and keeps a replica of what its
// node needs in the node's own datastore, where circuit reads it. See
// docs/multihost.md.
//
// Build information comes from the linker, as circuit's:
//
//	go build -ldflags "-X main.version=v1.2.3 -X main.commit=$(git rev-parse HEAD)" ./circuit-agent
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/urfave/cli/v3"

	"github.com/circuit-cni/circuit/agent"
	"github.com/circuit-cni/circuit/api"
)

// Set with -X main.version=... and -X main.commit=...
var (
	version = "dev"
	commit  = "unknown"
)

func main() {
	// The first signal ends the agent cleanly (its lease revoked, its
	// socket removed); a second is not caught and kills it.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() { <-ctx.Done(); stop() }()
	code := run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is the whole program but for the process: its exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	err := newCommand(stdout, stderr).Run(ctx, args)
	if err != nil {
		fmt.Fprintf(stderr, "circuit-agent: %s\n", strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	return exitCode(err)
}

// usageError is a mistake in the command line: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

func exitCode(err error) int {
	var u *usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &u):
		return 2
	}
	return 1
}

func newCommand(stdout, stderr io.Writer) *cli.Command {
	return &cli.Command{
		Name:  "circuit-agent",
		Usage: "circuit's node agent: cluster networks, address blocks and services through etcd",
		Description: `Runs in the foreground, one per host. circuit talks to it over a unix
socket in the state dir; containers never wait on etcd: the agent keeps
what this node needs in its local datastore. See docs/multihost.md.`,
		Writer:      stdout,
		ErrWriter:   stderr,
		HideVersion: true,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "store", Usage: "etcd at `URL`: etcd://HOST:PORT[,HOST:PORT...] or https://HOST:PORT[,...], optionally with user:password@"},
			&cli.StringFlag{Name: "store-cacert", Usage: "verify etcd's certificate with the CA in `FILE` (PEM)"},
			&cli.StringFlag{Name: "store-cert", Usage: "authenticate to etcd with the client certificate in `FILE` (PEM)"},
			&cli.StringFlag{Name: "store-key", Usage: "the client certificate's key `FILE` (PEM)"},
			&cli.StringFlag{Name: "store-prefix", Usage: "keep the cluster's keys under `PREFIX`", Value: agent.DefaultPrefix},
			&cli.StringFlag{Name: "node", Usage: "this node's `NAME` in the cluster (default: the host name)"},
			&cli.StringFlag{Name: "state", Usage: "circuit's state `DIR` on this node (its datastore, the agent's socket)", Value: agent.DefaultStateDir, Sources: cli.EnvVars("CIRCUIT_STATE")},
			&cli.StringFlag{Name: "advertise-addr", Usage: "this node's `IP` for the others (default: the source address of the route to the first etcd endpoint)"},
			&cli.DurationFlag{Name: "lease-ttl", Usage: "the node shows lost this long after its agent last reached etcd", Value: agent.DefaultLeaseTTL},
			&cli.DurationFlag{Name: "request-timeout", Usage: "bound of each request to etcd (below circuit's 5s)", Value: agent.DefaultRequestTimeout},
			&cli.DurationFlag{Name: "resync", Usage: "list everything and reconcile this often, whatever the watch says", Value: agent.DefaultResync},
			&cli.StringFlag{Name: "metrics-addr", Usage: "serve Prometheus metrics on `HOST:PORT` (/metrics); none by default"},
			&cli.BoolFlag{Name: "debug", Usage: "log debug messages"},
			&cli.BoolFlag{Name: "version", Aliases: []string{"v"}, Usage: "print the version"},
		},
		OnUsageError: func(_ context.Context, _ *cli.Command, err error, _ bool) error {
			return usagef("%v", err)
		},
		ExitErrHandler: func(context.Context, *cli.Command, error) {},
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if cmd.Bool("version") {
				fmt.Fprintf(stdout, "circuit-agent %s (commit %s)\n", version, commit)
				return nil
			}
			if cmd.Args().Present() {
				return usagef("unexpected argument %q", cmd.Args().First())
			}
			cfg, err := config(ctx, cmd, stderr)
			if err != nil {
				return err
			}
			a, err := agent.New(cfg)
			if errors.Is(err, api.ErrInvalid) {
				return usagef("%v", err)
			}
			if err != nil {
				return err
			}
			return a.Run(ctx)
		},
	}
}

// config turns the flags into the agent's Config.
func config(ctx context.Context, cmd *cli.Command, stderr io.Writer) (agent.Config, error) {
	var cfg agent.Config
	if cmd.String("store") == "" {
		return cfg, usagef("--store is required (etcd://HOST:PORT or https://HOST:PORT)")
	}
	st, err := agent.ParseStore(cmd.String("store"))
	if err != nil {
		return cfg, usagef("--store: %v", err)
	}
	cacert, cert, key := cmd.String("store-cacert"), cmd.String("store-cert"), cmd.String("store-key")
	if !st.Secure && (cacert != "" || cert != "" || key != "") {
		return cfg, usagef("--store-cacert, --store-cert and --store-key need an https:// --store")
	}
	if st.Secure {
		if cfg.TLS, err = agent.LoadTLS(cacert, cert, key); err != nil {
			if errors.Is(err, api.ErrInvalid) {
				return cfg, usagef("%v", err)
			}
			return cfg, err
		}
	}
	node := cmd.String("node")
	if node == "" {
		if node, err = os.Hostname(); err != nil {
			return cfg, fmt.Errorf("--node not given and no host name: %w", err)
		}
	}
	if err := api.ValidNodeName(node); err != nil {
		return cfg, usagef("--node: %v", err)
	}
	if m := cmd.String("metrics-addr"); m != "" {
		if _, _, err := net.SplitHostPort(m); err != nil {
			return cfg, usagef("--metrics-addr %q: want HOST:PORT", m)
		}
	}
	for _, f := range []string{"lease-ttl", "request-timeout", "resync"} {
		if cmd.Duration(f) <= 0 {
			return cfg, usagef("--%s %s: must be positive", f, cmd.Duration(f))
		}
	}
	addr := cmd.String("advertise-addr")
	if addr == "" {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		addr, err = agent.AdvertiseAddr(rctx, st.Endpoints[0])
		cancel()
		if err != nil {
			return cfg, err
		}
	}
	log := logrus.New()
	log.SetOutput(stderr)
	log.SetFormatter(&logrus.TextFormatter{FullTimestamp: true})
	if cmd.Bool("debug") {
		log.SetLevel(logrus.DebugLevel)
	}
	return agent.Config{
		Endpoints: st.Endpoints, TLS: cfg.TLS, Username: st.Username, Password: st.Password,
		Prefix: cmd.String("store-prefix"), Node: node, StateDir: cmd.String("state"), AdvertiseAddr: addr,
		LeaseTTL: cmd.Duration("lease-ttl"), RequestTimeout: cmd.Duration("request-timeout"), Resync: cmd.Duration("resync"),
		MetricsAddr: cmd.String("metrics-addr"), Log: log,
	}, nil
}
