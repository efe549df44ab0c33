package cmd

import (
	"context"
	"fmt"
	"strconv"

	"github.com/urfave/cli/v3"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/controller"
)

func qosCommand(a *app) *cli.Command {
	return &cli.Command{
		Name:  "qos",
		Usage: "shape a network's (or one container's) traffic",
		Commands: []*cli.Command{
			qosSetCommand(a),
			qosResetCommand(a),
			qosShowCommand(a),
		},
	}
}

func containerFlag() *cli.StringFlag {
	return &cli.StringFlag{Name: "container", Usage: "apply to one `CONTAINER` (runc ID or PID) instead of the whole network"}
}

func qosSetCommand(a *app) *cli.Command {
	return &cli.Command{
		Name:      "set",
		Usage:     "set rate limits and network emulation",
		ArgsUsage: "NETWORK",
		Description: `Rates are kbit/s when plain (--rate 5000 is 5 Mbit/s) or take tc's units
(bit, kbit, mbit, gbit; bps, kbps, mbps are bytes). Delay and jitter are Go
durations (50ms) or plain milliseconds. Loss is a percentage (0.5%).

A second "qos set" changes what it names and keeps the rest: the rate pair
(--rate, --ceiling) and the emulation trio (--delay, --jitter, --loss) are
each replaced as a whole, so "--delay 50ms" after "--rate 5000" keeps the
rate. Egress is the container's outgoing traffic, ingress its incoming
traffic (through an IFB device in its namespace). "qos reset" removes it all.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "rate", Usage: "guaranteed `RATE`"},
			&cli.StringFlag{Name: "ceiling", Usage: "`RATE` to borrow up to (needs --rate)"},
			&cli.StringFlag{Name: "delay", Usage: "added latency `DURATION`"},
			&cli.StringFlag{Name: "jitter", Usage: "latency variation `DURATION` (needs --delay)"},
			&cli.StringFlag{Name: "loss", Usage: "random packet loss `PERCENT`"},
			&cli.StringFlag{Name: "direction", Usage: "shape `DIRECTION`: egress, ingress or both (default: egress, or the direction already set)"},
			containerFlag(),
		},
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if err := checkArgs(cmd, 1, 1); err != nil {
				return err
			}
			p, err := parsePolicy(cmd)
			if err != nil {
				return err
			}
			network := cmd.Args().First()
			return a.withController(ctx, func(c controller.Controller) error {
				if err := c.SetQoS(ctx, network, cmd.String("container"), p); err != nil {
					return err
				}
				_, err := fmt.Fprintf(a.stdout, "qos configured for %s\n", network)
				return err
			})
		},
	}
}

// parsePolicy turns qos set's flags into a policy and judges it by the
// same rule as the controller and the shaper (api.ValidatePolicy), before
// the controller is even opened.
func parsePolicy(cmd *cli.Command) (api.QoSPolicy, error) {
	var p api.QoSPolicy
	var err error
	if cmd.IsSet("rate") {
		if p.Rate, err = api.ParseRate(cmd.String("rate")); err != nil {
			return p, usageErrorf(cmd, "--rate: %v", err)
		}
	}
	if cmd.IsSet("ceiling") {
		if p.Ceiling, err = api.ParseRate(cmd.String("ceiling")); err != nil {
			return p, usageErrorf(cmd, "--ceiling: %v", err)
		}
	}
	if cmd.IsSet("delay") {
		if p.Delay, err = api.ParseDuration(cmd.String("delay")); err != nil {
			return p, usageErrorf(cmd, "--delay: %v", err)
		}
	}
	if cmd.IsSet("jitter") {
		if p.Jitter, err = api.ParseDuration(cmd.String("jitter")); err != nil {
			return p, usageErrorf(cmd, "--jitter: %v", err)
		}
	}
	if cmd.IsSet("loss") {
		if p.Loss, err = api.ParsePercent(cmd.String("loss")); err != nil {
			return p, usageErrorf(cmd, "--loss: %v", err)
		}
	}
	p.Direction = api.Direction(cmd.String("direction"))
	if err := api.ValidatePolicy(p); err != nil {
		return p, usageErrorf(cmd, "%v", err)
	}
	return p, nil
}

func qosResetCommand(a *app) *cli.Command {
	return &cli.Command{
		Name:      "reset",
		Usage:     "remove a network's (or one container's) policy",
		ArgsUsage: "NETWORK",
		Flags:     []cli.Flag{containerFlag()},
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if err := checkArgs(cmd, 1, 1); err != nil {
				return err
			}
			network := cmd.Args().First()
			return a.withController(ctx, func(c controller.Controller) error {
				if err := c.ResetQoS(ctx, network, cmd.String("container")); err != nil {
					return err
				}
				_, err := fmt.Fprintf(a.stdout, "qos reset for %s\n", network)
				return err
			})
		},
	}
}

var qosTable = table[api.PeerQoS]{
	columns: []column{
		{"CONTAINER", 20}, {"PID", 8}, {"IFNAME", 8}, {"SOURCE", 11},
		{"RATE", 10}, {"CEILING", 10}, {"DELAY", 8}, {"JITTER", 8}, {"LOSS", 7}, {"DIRECTION", 11},
		{"EGRESS-BYTES", 14}, {"EGRESS-DROPS", 14}, {"INGRESS-BYTES", 15}, {"INGRESS-DROPS", 0},
	},
	row: func(q api.PeerQoS) []string {
		p := api.QoSPolicy{}
		if q.Policy != nil {
			p = *q.Policy
		}
		cells := []string{q.ContainerID, strconv.Itoa(q.PID), q.IfName, q.Source.String(),
			rateCell(p.Rate), rateCell(p.Ceiling), durationCell(p.Delay), durationCell(p.Jitter), lossCell(p.Loss), dash(p.Direction.String())}
		for _, c := range []*api.QoSCounters{q.Egress, q.Ingress} {
			if c == nil {
				cells = append(cells, "-", "-")
				continue
			}
			cells = append(cells, strconv.FormatUint(c.Bytes, 10), strconv.FormatUint(c.Drops, 10))
		}
		return cells
	},
	details: func(q api.PeerQoS) []string {
		if q.Error == "" {
			return nil
		}
		return []string{"  error: " + q.Error}
	},
}

func rateCell(bps uint64) string {
	if bps == 0 {
		return "-"
	}
	return api.FormatRate(bps)
}

func durationCell[D interface{ String() string }](d D) string {
	if s := d.String(); s != "0s" {
		return s
	}
	return "-"
}

func lossCell(p float64) string {
	if p == 0 {
		return "-"
	}
	return strconv.FormatFloat(p, 'f', -1, 64) + "%"
}

func qosShowCommand(a *app) *cli.Command {
	return &cli.Command{
		Name:      "show",
		Usage:     "show each peer's effective policy and counters",
		ArgsUsage: "NETWORK",
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
				peers, err := c.ShowQoS(ctx, cmd.Args().First())
				if err != nil {
					return err
				}
				return printList(a.stdout, out, peers, qosTable)
			})
		},
	}
}
