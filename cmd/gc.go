package cmd

import (
	"context"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/controller"
)

func gcCommand(a *app) *cli.Command {
	return &cli.Command{
		Name:  "gc",
		Usage: "remove what dead containers and interrupted operations left behind",
		Description: `With --cluster, gc gives back (through circuit-agent) the address blocks of
cluster nodes that have been lost longer than --grace and have no container
recorded; never a live node's block.`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "dry-run", Usage: "print what would be removed, change nothing"},
			&cli.BoolFlag{Name: "cluster", Usage: "release the address blocks of lost cluster nodes"},
			&cli.DurationFlag{Name: "grace", Value: time.Hour, Usage: "with --cluster, how long a node must have been lost (`DURATION`)"},
			formatFlag("table"),
		},
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if err := checkArgs(cmd, 0, 0); err != nil {
				return err
			}
			out, err := parseFormat(cmd)
			if err != nil {
				return err
			}
			if cmd.IsSet("grace") && !cmd.Bool("cluster") {
				return usageErrorf(cmd, "--grace needs --cluster")
			}
			if cmd.Duration("grace") < 0 {
				return usageErrorf(cmd, "--grace must not be negative")
			}
			return a.withController(ctx, func(c controller.Controller) error {
				gc := func(ctx context.Context, dryRun bool) (*api.Report, error) { return c.GC(ctx, dryRun) }
				if cmd.Bool("cluster") {
					gc = func(ctx context.Context, dryRun bool) (*api.Report, error) {
						return c.GCCluster(ctx, cmd.Duration("grace"), dryRun)
					}
				}
				r, err := gc(ctx, cmd.Bool("dry-run"))
				if err != nil {
					// Say what was done before the failure, then the failure.
					if r != nil && len(r.Actions) > 0 {
						printReport(a.stdout, out, r, "gc", cmd.Bool("dry-run"))
					}
					return err
				}
				return printReport(a.stdout, out, r, "gc", cmd.Bool("dry-run"))
			})
		},
	}
}
