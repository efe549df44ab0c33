package cmd

import (
	"context"

	"github.com/urfave/cli/v3"

	"github.com/circuit-cni/circuit/controller"
)

func gcCommand(a *app) *cli.Command {
	return &cli.Command{
		Name:  "gc",
		Usage: "remove what dead containers and interrupted operations left behind",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "dry-run", Usage: "print what would be removed, change nothing"},
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
			return a.withController(ctx, func(c controller.Controller) error {
				r, err := c.GC(ctx, cmd.Bool("dry-run"))
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
