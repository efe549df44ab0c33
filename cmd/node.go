package cmd

import (
	"context"
	"strings"

	"github.com/urfave/cli/v3"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/controller"
)

func nodeCommand(a *app) *cli.Command {
	return &cli.Command{
		Name:  "node",
		Usage: "see the cluster's nodes (through circuit-agent)",
		Commands: []*cli.Command{
			nodeListCommand(a),
		},
	}
}

var nodeTable = table[api.Node]{
	columns: []column{{"NAME", 20}, {"ADDRESS", 20}, {"BLOCKS", 40}, {"STATE", 0}},
	row: func(n api.Node) []string {
		state := n.State.String()
		if len(n.Conflicts) > 0 {
			state += " (conflict: " + strings.Join(n.Conflicts, ",") + ")"
		}
		return []string{n.Name, dash(n.Address), dash(strings.Join(n.Blocks, ",")), state}
	},
}

func nodeListCommand(a *app) *cli.Command {
	return &cli.Command{
		Name:    "list",
		Aliases: []string{"ls"},
		Usage:   "list the cluster's nodes, their addresses, blocks and state (ready or lost)",
		Flags:   []cli.Flag{formatFlag("table"), quietFlag()},
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if err := checkArgs(cmd, 0, 0); err != nil {
				return err
			}
			out, err := parseFormat(cmd)
			if err != nil {
				return err
			}
			return a.withController(ctx, func(c controller.Controller) error {
				nodes, err := c.ListNodes(ctx)
				if err != nil {
					return err
				}
				if cmd.Bool("quiet") {
					return printNames(a.stdout, nodes, func(n api.Node) string { return n.Name })
				}
				return printList(a.stdout, out, nodes, nodeTable)
			})
		},
	}
}
