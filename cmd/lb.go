package cmd

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/controller"
)

func lbCommand(a *app) *cli.Command {
	return &cli.Command{
		Name:  "lb",
		Usage: "manage load-balanced services (IPVS or nftables)",
		Commands: []*cli.Command{
			lbCreateCommand(a),
			lbAddCommand(a),
			lbSetCommand(a),
			lbRemoveCommand(a),
			lbDeleteCommand(a),
			lbListCommand(a),
			lbShowCommand(a),
		},
	}
}

func lbCreateCommand(a *app) *cli.Command {
	return &cli.Command{
		Name:      "create",
		Usage:     "create a service on a virtual address",
		ArgsUsage: "NAME ADDR:PORT",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "scheduler", Value: "rr", Usage: "load-balancing `SCHEDULER`: rr, wrr, lc, wlc, sh, dh, mh, ..."},
			&cli.StringFlag{Name: "protocol", Value: "tcp", Usage: "`PROTOCOL`: tcp, udp or sctp"},
			&cli.DurationFlag{Name: "persistence", Usage: "keep a client on one target for `DURATION`"},
			&cli.StringFlag{Name: "backend", Value: "auto", Usage: "`BACKEND`: auto, ipvs or nftables"},
			&cli.BoolFlag{Name: "cluster", Usage: "balance the service on every cluster node (through circuit-agent)"},
			&cli.DurationFlag{Name: "drain", Value: api.DefaultDrain, Usage: "how long drains circuit starts itself (a target whose container went) wait for open connections, `DURATION`"},
		},
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if err := checkArgs(cmd, 2, 2); err != nil {
				return err
			}
			svc := api.Service{
				Name:        cmd.Args().Get(0),
				Address:     cmd.Args().Get(1),
				Protocol:    cmd.String("protocol"),
				Scheduler:   cmd.String("scheduler"),
				Persistence: cmd.Duration("persistence"),
				Backend:     cmd.String("backend"),
				Cluster:     cmd.Bool("cluster"),
				Drain:       cmd.Duration("drain"),
			}
			// What flags say is judged here, by the controller's rules.
			if err := api.ValidProtocol(svc.Protocol); err != nil {
				return usageErrorf(cmd, "--protocol: %v", err)
			}
			if err := api.ValidBackend(svc.Backend); err != nil {
				return usageErrorf(cmd, "--backend: %v", err)
			}
			if err := api.ValidPersistence(svc.Persistence); err != nil {
				return usageErrorf(cmd, "--persistence: %v", err)
			}
			if err := api.ValidDrain(svc.Drain); err != nil {
				return usageErrorf(cmd, "--drain: %v", err)
			}
			return a.withController(ctx, func(c controller.Controller) error {
				if _, err := c.CreateService(ctx, svc); err != nil {
					return err
				}
				_, err := fmt.Fprintf(a.stdout, "service %s created\n", svc.Name)
				return err
			})
		},
	}
}

func lbAddCommand(a *app) *cli.Command {
	return &cli.Command{
		Name:      "add",
		Usage:     "add targets to a service",
		ArgsUsage: "NAME TARGET...",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "weight", Value: 1, Usage: "relative `WEIGHT` of the targets, 1-65535"},
			&cli.StringFlag{Name: "forward", Value: "nat", Usage: "forwarding `METHOD`: nat, dr or tunnel"},
		},
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if err := checkArgs(cmd, 2, -1); err != nil {
				return err
			}
			fwd := cmd.String("forward")
			if err := api.ValidForward(fwd); err != nil {
				return usageErrorf(cmd, "--forward: %v", err)
			}
			if err := api.ValidWeight(cmd.Int("weight")); err != nil {
				return usageErrorf(cmd, "--weight: %v", err)
			}
			name := cmd.Args().First()
			var targets []api.Target
			for _, t := range cmd.Args().Tail() {
				targets = append(targets, api.Target{Address: t, Weight: cmd.Int("weight"), Forward: fwd})
			}
			return a.withController(ctx, func(c controller.Controller) error {
				if err := c.AddTargets(ctx, name, targets); err != nil {
					return err
				}
				_, err := fmt.Fprintf(a.stdout, "service %s updated\n", name)
				return err
			})
		},
	}
}

func lbSetCommand(a *app) *cli.Command {
	return &cli.Command{
		Name:      "set",
		Usage:     "change a target's weight or forwarding method in place",
		ArgsUsage: "NAME TARGET",
		Description: `Open connections stay where they are; IPVS edits the destination, the
nftables backend changes only set and map elements. A weight given to a
draining target ends its drain: it takes new connections again.`,
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "weight", Usage: "relative `WEIGHT`, 1-65535"},
			&cli.StringFlag{Name: "forward", Usage: "forwarding `METHOD`: nat, dr or tunnel"},
		},
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if err := checkArgs(cmd, 2, 2); err != nil {
				return err
			}
			ch := api.TargetChange{Address: cmd.Args().Get(1)}
			if !cmd.IsSet("weight") && !cmd.IsSet("forward") {
				return usageErrorf(cmd, "give --weight or --forward")
			}
			if cmd.IsSet("weight") {
				if err := api.ValidWeight(cmd.Int("weight")); err != nil {
					return usageErrorf(cmd, "--weight: %v", err)
				}
				ch.Weight = cmd.Int("weight")
			}
			if cmd.IsSet("forward") {
				if err := api.ValidForward(cmd.String("forward")); err != nil {
					return usageErrorf(cmd, "--forward: %v", err)
				}
				ch.Forward = cmd.String("forward")
			}
			name := cmd.Args().First()
			return a.withController(ctx, func(c controller.Controller) error {
				if err := c.SetTarget(ctx, name, ch); err != nil {
					return err
				}
				_, err := fmt.Fprintf(a.stdout, "service %s updated\n", name)
				return err
			})
		},
	}
}

func lbRemoveCommand(a *app) *cli.Command {
	return &cli.Command{
		Name:      "remove",
		Usage:     "remove targets from a service, at once or after draining them",
		ArgsUsage: "NAME TARGET...",
		Description: `With --drain, the targets get no new connections (weight 0) and each is
removed when its open connections have ended or DURATION has passed,
whichever comes first; the command waits. Interrupted, the targets stay
draining until the next lb command on the service, gc or restore, which
remove them on the same terms.`,
		Flags: []cli.Flag{
			&cli.DurationFlag{Name: "drain", Usage: "let open connections end first, for at most `DURATION`"},
		},
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if err := checkArgs(cmd, 2, -1); err != nil {
				return err
			}
			name := cmd.Args().First()
			if cmd.IsSet("drain") {
				if err := api.ValidDrain(cmd.Duration("drain")); err != nil {
					return usageErrorf(cmd, "--drain: %v", err)
				}
				return a.withController(ctx, func(c controller.Controller) error {
					req := api.DrainRequest{Service: name, Targets: cmd.Args().Tail(), Timeout: cmd.Duration("drain"),
						Progress: func(line string) { fmt.Fprintln(a.stdout, line) }}
					r, err := c.DrainTargets(ctx, req)
					if r != nil {
						for _, l := range r.Actions {
							fmt.Fprintln(a.stdout, l)
						}
					}
					if err != nil {
						return err
					}
					_, err = fmt.Fprintf(a.stdout, "service %s updated\n", name)
					return err
				})
			}
			return a.withController(ctx, func(c controller.Controller) error {
				if err := c.RemoveTargets(ctx, name, cmd.Args().Tail()); err != nil {
					return err
				}
				_, err := fmt.Fprintf(a.stdout, "service %s updated\n", name)
				return err
			})
		},
	}
}

func lbDeleteCommand(a *app) *cli.Command {
	return &cli.Command{
		Name:      "delete",
		Aliases:   []string{"rm"},
		Usage:     "delete a service and its targets",
		ArgsUsage: "NAME",
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if err := checkArgs(cmd, 1, 1); err != nil {
				return err
			}
			name := cmd.Args().First()
			return a.withController(ctx, func(c controller.Controller) error {
				if err := c.DeleteService(ctx, name); err != nil {
					return err
				}
				_, err := fmt.Fprintf(a.stdout, "service %s removed\n", name)
				return err
			})
		},
	}
}

// serviceColumns copy the original README, where ADDR is one wider.
var serviceColumns = []column{{"NAME", 20}, {"ADDR", 21}, {"PROTOCOL", 20}, {"SCHEDULER", 0}}

func serviceRow(s api.Service) []string {
	return []string{s.Name, s.Address, s.Protocol, s.Scheduler}
}

// targetLines are --details' `  -> ADDR:PORT` lines; weight and forwarding
// method appear only when not the defaults, so the README's example holds.
func targetLines(targets []api.Target) []string {
	var out []string
	for _, t := range sortedTargets(targets) {
		l := "  -> " + t.Address
		if t.Weight != 1 {
			l += "  weight " + strconv.Itoa(t.Weight)
		}
		if t.Forward != "" && t.Forward != "nat" {
			l += "  " + t.Forward
		}
		if t.Draining() {
			l += "  draining"
		}
		out = append(out, l)
	}
	return out
}

// sortedTargets orders targets by address, numerically when they parse.
func sortedTargets(targets []api.Target) []api.Target {
	targets = slices.Clone(targets)
	slices.SortFunc(targets, func(a, b api.Target) int { return compareAddrPort(a.Address, b.Address) })
	return targets
}

func compareAddrPort(a, b string) int {
	ap, aerr := netip.ParseAddrPort(a)
	bp, berr := netip.ParseAddrPort(b)
	if aerr == nil && berr == nil {
		return ap.Compare(bp)
	}
	return strings.Compare(a, b)
}

func lbListCommand(a *app) *cli.Command {
	return &cli.Command{
		Name:    "list",
		Aliases: []string{"ls"},
		Usage:   "list services",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "details", Usage: "list each service's targets"},
			formatFlag("table"),
			quietFlag(),
		},
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if err := checkArgs(cmd, 0, 0); err != nil {
				return err
			}
			out, err := parseFormat(cmd)
			if err != nil {
				return err
			}
			t := table[api.Service]{columns: serviceColumns, row: serviceRow}
			if cmd.Bool("details") {
				t.details = func(s api.Service) []string { return targetLines(s.Targets) }
			}
			return a.withController(ctx, func(c controller.Controller) error {
				svcs, err := c.ListServices(ctx)
				if err != nil {
					return err
				}
				slices.SortFunc(svcs, func(a, b api.Service) int { return strings.Compare(a.Name, b.Name) })
				if cmd.Bool("quiet") {
					return printNames(a.stdout, svcs, func(s api.Service) string { return s.Name })
				}
				return printList(a.stdout, out, svcs, t)
			})
		},
	}
}

// showTargetTable lists a service's targets with their live counters.
var showTargetTable = table[targetStatus]{
	columns: []column{{"TARGET", 24}, {"WEIGHT", 8}, {"FORWARD", 9}, {"ACTIVE", 8}, {"CONNECTIONS", 13}, {"PACKETS", 13}, {"BYTES", 0}},
	row: func(t targetStatus) []string {
		weight := strconv.Itoa(t.Weight)
		if t.Draining() {
			weight = "0"
		}
		return []string{t.Address, weight, dash(t.Forward), strconv.FormatUint(t.Active, 10),
			strconv.FormatUint(t.Stats.Connections, 10), strconv.FormatUint(t.Stats.Packets, 10), strconv.FormatUint(t.Stats.Bytes, 10)}
	},
}

type targetStatus struct {
	api.Target
	Stats  api.Counters
	Active uint64
}

// drainLines say which targets drain, and for how long at most.
func drainLines(s api.ServiceStatus, now time.Time) []string {
	var out []string
	for _, t := range sortedTargets(s.Service.Targets) {
		if !t.Draining() {
			continue
		}
		left := max(t.DrainUntil.Sub(now).Round(time.Second), 0)
		out = append(out, fmt.Sprintf("%s is draining: removed when its %d open connection(s) end, at the latest in %s (weight %d before)",
			t.Address, s.Active[t.Address], left, t.Weight))
	}
	return out
}

// writeServiceStatus is lb show's table view: the service as lb list shows
// it, its settings and counters, then its targets.
func writeServiceStatus(w io.Writer, s api.ServiceStatus) error {
	var b strings.Builder
	if err := (table[api.Service]{columns: serviceColumns, row: serviceRow}).write(&b, []api.Service{s.Service}); err != nil {
		return err
	}
	persistence := "-"
	if s.Persistence > 0 {
		persistence = s.Persistence.String()
	}
	drain := "-"
	if s.Drain > 0 {
		drain = s.Drain.String()
	}
	fmt.Fprintf(&b, "\nbackend:      %s\npersistence:  %s\ndrain:        %s\nconnections:  %d\npackets:      %d\nbytes:        %d\n\n",
		dash(s.Backend), persistence, drain, s.Stats.Connections, s.Stats.Packets, s.Stats.Bytes)
	if len(s.Service.Targets) == 0 {
		b.WriteString("no targets\n")
	} else {
		var ts []targetStatus
		for _, t := range sortedTargets(s.Service.Targets) {
			ts = append(ts, targetStatus{Target: t, Stats: s.Targets[t.Address], Active: s.Active[t.Address]})
		}
		if err := showTargetTable.write(&b, ts); err != nil {
			return err
		}
		if lines := drainLines(s, time.Now()); len(lines) > 0 {
			b.WriteString("\n" + strings.Join(lines, "\n") + "\n")
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func lbShowCommand(a *app) *cli.Command {
	return &cli.Command{
		Name:      "show",
		Usage:     "show a service with live counters per target",
		ArgsUsage: "NAME",
		Flags:     []cli.Flag{formatFlag("table")},
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if err := checkArgs(cmd, 1, 1); err != nil {
				return err
			}
			out, err := parseFormat(cmd)
			if err != nil {
				return err
			}
			return a.withController(ctx, func(c controller.Controller) error {
				st, err := c.ShowService(ctx, cmd.Args().First())
				if err != nil {
					return err
				}
				if st.Targets == nil {
					st.Targets = map[string]api.Counters{}
				}
				if st.Active == nil {
					st.Active = map[string]uint64{}
				}
				if st.Service.Targets == nil {
					st.Service.Targets = []api.Target{}
				}
				return printOne(a.stdout, out, *st, writeServiceStatus)
			})
		},
	}
}
