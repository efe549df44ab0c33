package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/urfave/cli/v3"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/controller"
	"github.com/circuit-cni/circuit/pkg/cni"
)

// maxConfigSize bounds a network config read from a file or stdin.
const maxConfigSize = 1 << 20

func networkCommand(a *app) *cli.Command {
	return &cli.Command{
		Name:  "network",
		Usage: "manage CNI networks and container attachments",
		Commands: []*cli.Command{
			networkCreateCommand(a),
			networkListCommand(a),
			networkInspectCommand(a),
			networkConnectCommand(a),
			networkDisconnectCommand(a),
			networkDeleteCommand(a),
			qosCommand(a),
		},
	}
}

func networkCreateCommand(a *app) *cli.Command {
	return &cli.Command{
		Name:      "create",
		Usage:     "define a network from a CNI conf or conflist (FILE, or - for stdin)",
		ArgsUsage: "FILE|-",
		Description: `With --overlay vxlan the network is a cluster network, shared by every
node running circuit-agent: its IPAM range (host-local, IPv4 and IPv6) is cut
into blocks of --block-size bits (IPv4) and --block-size6 bits (IPv6), and
each node's containers get addresses from the blocks its agent claims.`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "force", Usage: "replace an existing network of the same name"},
			&cli.StringFlag{Name: "overlay", Usage: "make a cluster network with `OVERLAY` (vxlan), through circuit-agent"},
			&cli.IntFlag{Name: "block-size", Value: api.DefaultBlockSize, Usage: "prefix length of a node's IPv4 `BITS` block (with --overlay)"},
			&cli.IntFlag{Name: "block-size6", Value: api.DefaultBlockSize6, Usage: "prefix length of a node's IPv6 `BITS` block (with --overlay)"},
		},
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if err := checkArgs(cmd, 1, 1); err != nil {
				return err
			}
			req := api.CreateNetworkRequest{Force: cmd.Bool("force"), Overlay: cmd.String("overlay")}
			if req.Overlay == "" && (cmd.IsSet("block-size") || cmd.IsSet("block-size6")) {
				return usageErrorf(cmd, "--block-size and --block-size6 need --overlay")
			}
			if req.Overlay != "" {
				req.BlockSize, req.BlockSize6 = cmd.Int("block-size"), cmd.Int("block-size6")
				if err := api.ValidCluster(&api.Cluster{Overlay: req.Overlay, BlockSize: req.BlockSize, BlockSize6: req.BlockSize6}, []string{"0.0.0.0/0", "::/0"}); err != nil {
					return usageErrorf(cmd, "%v", err)
				}
			}
			conf, err := a.readConfig(cmd.Args().First())
			if err != nil {
				return err
			}
			req.Config = conf
			return a.withController(ctx, func(c controller.Controller) error {
				n, err := c.CreateNetwork(ctx, req)
				if err != nil {
					return err
				}
				_, err = fmt.Fprintf(a.stdout, "%s created\n", n.Name)
				return err
			})
		},
	}
}

// readConfig reads a config file or stdin ("-"), at most maxConfigSize
// bytes, and reports errors as "read FILE: reason".
func (a *app) readConfig(name string) ([]byte, error) {
	if name != "-" {
		return cni.ReadFile(name)
	}
	b, err := io.ReadAll(io.LimitReader(a.stdin, maxConfigSize+1))
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if len(b) > maxConfigSize {
		return nil, fmt.Errorf("read %s: larger than 1 MiB", name)
	}
	return b, nil
}

// networkTable is the original README's layout: 20-wide columns.
var networkTable = table[api.Network]{
	columns: []column{{"NAME", 20}, {"TYPE", 20}, {"VERSION", 20}, {"PEERS", 0}},
	row: func(n api.Network) []string {
		return []string{n.Name, n.Type, n.CNIVersion, peersCell(n.Peers)}
	},
}

// peersCell shows peers as `IP (PID)` joined by ", ", sorted by container
// and interface; a peer that is not fully connected shows its state.
func peersCell(peers []api.Peer) string {
	peers = slices.Clone(peers)
	slices.SortFunc(peers, func(a, b api.Peer) int {
		if c := strings.Compare(a.ContainerID, b.ContainerID); c != 0 {
			return c
		}
		return strings.Compare(a.IfName, b.IfName)
	})
	cells := make([]string, 0, len(peers))
	for _, p := range peers {
		ips := make([]string, 0, len(p.IPs))
		for _, ip := range p.IPs {
			addr, _, _ := strings.Cut(ip, "/")
			ips = append(ips, addr)
		}
		who := strconv.Itoa(p.PID)
		if p.State != "" && p.State != api.PeerConnected {
			who += ", " + p.State.String()
		}
		cells = append(cells, fmt.Sprintf("%s (%s)", dash(strings.Join(ips, ",")), who))
	}
	return strings.Join(cells, ", ")
}

func networkListCommand(a *app) *cli.Command {
	return &cli.Command{
		Name:    "list",
		Aliases: []string{"ls"},
		Usage:   "list networks and their peers",
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
				nets, err := c.ListNetworks(ctx)
				if err != nil {
					return err
				}
				slices.SortFunc(nets, func(a, b api.Network) int { return strings.Compare(a.Name, b.Name) })
				if cmd.Bool("quiet") {
					return printNames(a.stdout, nets, func(n api.Network) string { return n.Name })
				}
				return printList(a.stdout, out, nets, networkTable)
			})
		},
	}
}

func printNames[T any](w io.Writer, items []T, name func(T) string) error {
	var b strings.Builder
	for _, it := range items {
		b.WriteString(name(it) + "\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func networkInspectCommand(a *app) *cli.Command {
	return &cli.Command{
		Name:      "inspect",
		Usage:     "show a network's stored config, QoS and peers",
		ArgsUsage: "NAME",
		Flags:     []cli.Flag{formatFlag("json")},
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if err := checkArgs(cmd, 1, 1); err != nil {
				return err
			}
			out, err := parseFormat(cmd)
			if err != nil {
				return err
			}
			if out.kind == "table" {
				out.kind = "json" // a network has no table view
			}
			return a.withController(ctx, func(c controller.Controller) error {
				n, err := c.InspectNetwork(ctx, cmd.Args().First())
				if err != nil {
					return err
				}
				if n.Peers == nil {
					n.Peers = []api.Peer{}
				}
				return printOne(a.stdout, out, *n, nil)
			})
		},
	}
}

func ifnameFlag() *cli.StringFlag {
	return &cli.StringFlag{Name: "ifname", Usage: "interface `NAME` inside the container (default: the first free ethN)"}
}

// settingsFlags are what a connect asks the plugins for, as podman's.
func settingsFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "publish", Aliases: []string{"p"}, Usage: "publish `[HOSTIP:]HOSTPORT:CONTAINERPORT[/PROTOCOL]` on the host (ranges as 8000-8010:80-90; needs portmap)"},
		&cli.StringSliceFlag{Name: "ip", Usage: "give the container `ADDR` (repeat for IPv4 and IPv6; needs the ips capability)"},
		&cli.StringFlag{Name: "mac", Usage: "give the container's interface `MAC` (needs the mac capability)"},
		&cli.StringSliceFlag{Name: "alias", Usage: "another `NAME` for the container, for DNS plugins (needs the aliases capability)"},
	}
}

// parseSettings reads the settings flags; publish specs are parsed here, the
// rest judged by the controller against the network. A flag given with an
// empty value is a mistake, not "none".
func parseSettings(cmd *cli.Command) (api.Settings, error) {
	var s api.Settings
	values := map[string][]string{}
	for _, name := range []string{"publish", "ip", "alias"} {
		for _, v := range cmd.StringSlice(name) {
			for _, item := range strings.Split(v, ",") {
				if item = strings.TrimSpace(item); item == "" {
					return s, usageErrorf(cmd, "--%s needs a value", name)
				}
				values[name] = append(values[name], item)
			}
		}
	}
	for _, name := range []string{"mac", "name"} {
		if cmd.IsSet(name) && strings.TrimSpace(cmd.String(name)) == "" {
			return s, usageErrorf(cmd, "--%s needs a value", name)
		}
	}
	for _, p := range values["publish"] {
		m, err := api.ParsePublish(p)
		if err != nil {
			return s, usageErrorf(cmd, "--publish: %v", err)
		}
		s.Publish = append(s.Publish, m...)
	}
	// Their form is checked here too, so hook config and hook install
	// never write a hook that can only fail; ranges and holders are the
	// controller's to judge.
	for _, ip := range values["ip"] {
		if _, err := api.ValidRequestedIP(ip); err != nil {
			return s, usageErrorf(cmd, "--ip: %v", err)
		}
	}
	if mac := cmd.String("mac"); mac != "" {
		if _, err := api.ValidMAC(mac); err != nil {
			return s, usageErrorf(cmd, "--mac: %v", err)
		}
	}
	for _, a := range values["alias"] {
		if err := api.ValidAlias(a); err != nil {
			return s, usageErrorf(cmd, "--alias: %v", err)
		}
	}
	s.RequestedIPs = values["ip"]
	s.RequestedMAC = cmd.String("mac")
	s.Aliases = values["alias"]
	return s, nil
}

// splitEach splits every value at commas and drops empty ones.
func splitEach(vals []string) []string {
	var out []string
	for _, v := range vals {
		out = append(out, splitNames(v)...)
	}
	return out
}

func networkConnectCommand(a *app) *cli.Command {
	return &cli.Command{
		Name:      "connect",
		Usage:     "connect a container (runc ID or PID) to a network",
		ArgsUsage: "CONTAINER NETWORK",
		Description: `The container's name reaches the plugins in CNI_ARGS (K8S_POD_NAME, with
K8S_POD_NAMESPACE=circuit): its runc ID, or --name for a plain process.
--publish, --ip, --mac and --alias go to the plugins that declare the
matching capability (portMappings, ips, mac, aliases); one that no plugin
of the network declares is refused before anything runs.`,
		Flags: append([]cli.Flag{ifnameFlag(),
			&cli.StringFlag{Name: "name", Usage: "the container's `NAME` for plugins, when it has no runc ID"},
		}, settingsFlags()...),
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if err := checkArgs(cmd, 2, 2); err != nil {
				return err
			}
			container, network := cmd.Args().Get(0), cmd.Args().Get(1)
			settings, err := parseSettings(cmd)
			if err != nil {
				return err
			}
			settings.Name = cmd.String("name")
			return a.withController(ctx, func(c controller.Controller) error {
				_, err := c.Connect(ctx, api.ConnectRequest{Container: container, Network: network, IfName: cmd.String("ifname"), Settings: settings})
				if err != nil {
					return err
				}
				_, err = fmt.Fprintf(a.stdout, "connected container %s to network %s\n", container, network)
				return err
			})
		},
	}
}

func networkDisconnectCommand(a *app) *cli.Command {
	return &cli.Command{
		Name:      "disconnect",
		Usage:     "disconnect a container (runc ID or PID) from a network",
		ArgsUsage: "CONTAINER NETWORK",
		Flags:     []cli.Flag{&cli.StringFlag{Name: "ifname", Usage: "interface `NAME`, when the container has several on the network"}},
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if err := checkArgs(cmd, 2, 2); err != nil {
				return err
			}
			container, network := cmd.Args().Get(0), cmd.Args().Get(1)
			return a.withController(ctx, func(c controller.Controller) error {
				if err := c.Disconnect(ctx, api.DisconnectRequest{Container: container, Network: network, IfName: cmd.String("ifname")}); err != nil {
					return err
				}
				_, err := fmt.Fprintf(a.stdout, "disconnected container %s from network %s\n", container, network)
				return err
			})
		},
	}
}

func networkDeleteCommand(a *app) *cli.Command {
	return &cli.Command{
		Name:      "delete",
		Aliases:   []string{"rm"},
		Usage:     "delete a network",
		ArgsUsage: "NAME",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "force", Usage: "disconnect its peers first"},
		},
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if err := checkArgs(cmd, 1, 1); err != nil {
				return err
			}
			name := cmd.Args().First()
			return a.withController(ctx, func(c controller.Controller) error {
				if err := c.DeleteNetwork(ctx, name, cmd.Bool("force")); err != nil {
					return err
				}
				_, err := fmt.Fprintf(a.stdout, "%s deleted\n", name)
				return err
			})
		},
	}
}
