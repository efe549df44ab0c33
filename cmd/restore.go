package cmd

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/urfave/cli/v3"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/controller"
)

func restoreCommand(a *app) *cli.Command {
	return &cli.Command{
		Name:  "restore",
		Usage: "re-program the kernel from the datastore (after a reboot)",
		Flags: []cli.Flag{formatFlag("table")},
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if err := checkArgs(cmd, 0, 0); err != nil {
				return err
			}
			out, err := parseFormat(cmd)
			if err != nil {
				return err
			}
			return a.withController(ctx, func(c controller.Controller) error {
				r, err := c.Restore(ctx)
				if err != nil {
					// Say what was done before the failure, then the failure.
					if r != nil && len(r.Actions) > 0 {
						printReport(a.stdout, out, r, "restore", false)
					}
					return err
				}
				return printReport(a.stdout, out, r, "restore", false)
			})
		},
	}
}

// printReport prints a restore or gc report: its actions as the controller
// phrased them, then a summary line; or the Report as JSON or a template.
func printReport(w io.Writer, out output, r *api.Report, what string, dryRun bool) error {
	if r.Actions == nil {
		r.Actions = []string{}
	}
	if out.kind != "table" {
		return printOne(w, out, *r, nil)
	}
	var b strings.Builder
	for _, a := range r.Actions {
		b.WriteString(a + "\n")
	}
	switch n := len(r.Actions); {
	case dryRun:
		fmt.Fprintf(&b, "%s: dry run, %d action(s), nothing changed\n", what, n)
	case n == 0:
		fmt.Fprintf(&b, "%s: nothing to do\n", what)
	default:
		fmt.Fprintf(&b, "%s: %d action(s)\n", what, n)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
