package local

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/pkg/cni"
)

// CreateNetwork validates a CNI configuration and stores it as given; a
// cluster network (an overlay asked for) is made by circuit-agent, which
// shares it through etcd and gives this node its address blocks.
func (c *Controller) CreateNetwork(ctx context.Context, req api.CreateNetworkRequest) (*api.Network, error) {
	cfg, err := cni.Parse(req.Config)
	if err != nil {
		return nil, fmt.Errorf("create network: %w", err)
	}
	if req.Overlay != "" {
		n, err := c.createCluster(ctx, cfg, req)
		if err != nil {
			return nil, fmt.Errorf("create network %s: %w", cfg.Name, err)
		}
		return n, nil
	}
	force := req.Force
	n := networkFromConfig(cfg)
	err = c.store.Update(ctx, func(tx ds.Tx) error {
		old, err := tx.GetNetwork(n.Name)
		switch {
		case err == nil && old.Cluster != nil:
			return api.Errorf(api.ErrExists, "create network %s: a cluster network of that name exists (replace it with --overlay %s --force)", n.Name, old.Cluster.Overlay)
		case err == nil && !force:
			return fmt.Errorf("create network %s: %w (use --force to replace it)", n.Name, api.ErrExists)
		case err == nil:
			n.CreatedAt, n.QoS, n.OwnedBridge = old.CreatedAt, old.QoS, old.OwnedBridge
			if err := keepPeersConfig(tx, old, n); err != nil {
				return err
			}
		case !errors.Is(err, api.ErrNotFound):
			return err
		}
		return tx.PutNetwork(n)
	})
	if err != nil {
		return nil, err
	}
	return n, nil
}

func networkFromConfig(cfg *cni.Config) *api.Network {
	return &api.Network{
		Name:       cfg.Name,
		Type:       cfg.Plugins[0],
		Plugins:    cfg.Plugins,
		CNIVersion: cfg.CNIVersion,
		IsList:     cfg.IsList,
		Config:     cfg.Raw,
		CreatedAt:  time.Now().UTC(),
	}
}

// ListNetworks returns every network with its peers, sorted by name.
func (c *Controller) ListNetworks(ctx context.Context) ([]api.Network, error) {
	var out []api.Network
	err := c.store.View(ctx, func(tx ds.Tx) error {
		nets, err := tx.ListNetworks()
		if err != nil {
			return err
		}
		for _, n := range nets {
			if n.Peers, err = tx.ListPeers(n.Name); err != nil {
				return err
			}
			out = append(out, n)
		}
		return nil
	})
	return out, err
}

// InspectNetwork returns one network with its peers.
func (c *Controller) InspectNetwork(ctx context.Context, name string) (*api.Network, error) {
	n, err := c.network(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("inspect network %s: %w", name, err)
	}
	c.clusterPeers(ctx, n)
	return n, nil
}

// networkRecord is a network without its peers: what connecting or
// disconnecting one container needs, at a cost that does not grow with the
// peers already attached.
func (c *Controller) networkRecord(ctx context.Context, name string) (*api.Network, error) {
	return c.readNetwork(ctx, name, false)
}

// network is a network with all its peers, read in one transaction.
func (c *Controller) network(ctx context.Context, name string) (*api.Network, error) {
	return c.readNetwork(ctx, name, true)
}

func (c *Controller) readNetwork(ctx context.Context, name string, peers bool) (*api.Network, error) {
	if err := api.ValidNetworkName(name); err != nil {
		return nil, err
	}
	var n *api.Network
	err := c.store.View(ctx, func(tx ds.Tx) error {
		var err error
		if n, err = tx.GetNetwork(name); err != nil || !peers {
			return err
		}
		n.Peers, err = tx.ListPeers(name)
		return err
	})
	return n, err
}

// DeleteNetwork forgets a network; with force it first disconnects its peers.
func (c *Controller) DeleteNetwork(ctx context.Context, name string, force bool) error {
	n, err := c.network(ctx, name)
	if err != nil {
		return fmt.Errorf("delete network %s: %w", name, err)
	}
	if n.Cluster != nil {
		// Every node's peers count: the agent refuses while any is there.
		if len(n.Peers) > 0 && !force {
			return fmt.Errorf("delete network %s: %w: %d container(s) connected here (disconnect them or use --force)", name, api.ErrInUse, len(n.Peers))
		}
		for _, p := range n.Peers {
			if err := c.detach(ctx, n, &p); err != nil {
				return fmt.Errorf("delete network %s: %w", name, err)
			}
		}
		if err := c.deleteCluster(ctx, name, force); err != nil {
			return fmt.Errorf("delete network %s: %w", name, err)
		}
		return nil
	}
	if len(n.Peers) > 0 && !force {
		return fmt.Errorf("delete network %s: %w: %d container(s) connected (disconnect them or use --force)", name, api.ErrInUse, len(n.Peers))
	}
	for _, p := range n.Peers {
		if err := c.detach(ctx, n, &p); err != nil {
			return fmt.Errorf("delete network %s: %w", name, err)
		}
	}
	var others []api.Network
	var gone *api.Network
	err = c.store.Update(ctx, func(tx ds.Tx) error {
		if gone, err = tx.GetNetwork(name); err != nil {
			return err
		}
		if peers, err := tx.ListPeers(name); err != nil {
			return err
		} else if len(peers) > 0 {
			return fmt.Errorf("delete network %s: %w: a container connected meanwhile", name, api.ErrInUse)
		}
		if others, err = tx.ListNetworks(); err != nil {
			return err
		}
		return tx.DeleteNetwork(name)
	})
	if err != nil {
		return err
	}
	c.removeLeftovers(gone, others)
	return nil
}

// removeLeftovers removes, after a network is deleted, what its plugins
// made for it alone, as podman does: the bridge circuit's first connect
// made (with its gateway address and route), when no interface is on it
// and no other network of circuit's names it; and host-local's directory
// of the network, when it holds no reservation. What circuit cannot prove
// served only this network stays, and the log says so.
func (c *Controller) removeLeftovers(n *api.Network, others []api.Network) {
	if br := n.OwnedBridge; br != "" && c.hostHas(br) {
		used := ""
		for _, o := range others {
			if o.Name != n.Name && bridgeOf(&o) == br {
				used = "network " + o.Name + " uses it"
			}
		}
		if ports, err := c.k.ns.BridgePorts("/proc/self/ns/net", br); err != nil {
			used = err.Error()
		} else if len(ports) > 0 {
			used = fmt.Sprintf("%d interface(s) still on it", len(ports))
		}
		if used != "" {
			c.log.Warnf("delete network %s: left bridge %s: %s", n.Name, br, used)
		} else if err := c.k.ns.DeleteLink("/proc/self/ns/net", br); err != nil {
			c.log.Warnf("delete network %s: remove bridge %s: %v", n.Name, br, err)
		}
	}
	if dir := hostLocalDir(n); dir != "" {
		removeEmptyHostLocalDir(dir)
	}
}

// removeEmptyHostLocalDir removes a network's host-local directory if it
// holds only host-local's bookkeeping (its lock and last reserved
// addresses), no reservation.
func removeEmptyHostLocalDir(dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if name := e.Name(); name != "lock" && !strings.HasPrefix(name, "last_reserved_ip") {
			return
		}
	}
	for _, e := range entries {
		os.Remove(filepath.Join(dir, e.Name()))
	}
	os.Remove(dir)
}

// bridgeOf is the bridge a network's bridge plugin uses ("" when its
// chain has none): the plugin's "bridge", else its default cni0.
func bridgeOf(n *api.Network) string {
	var conf struct {
		Type    string `json:"type"`
		Bridge  string `json:"bridge"`
		Plugins []struct {
			Type   string `json:"type"`
			Bridge string `json:"bridge"`
		} `json:"plugins"`
	}
	if json.Unmarshal(n.Config, &conf) != nil {
		return ""
	}
	if conf.Type == "bridge" && conf.Plugins == nil {
		return cmp.Or(conf.Bridge, "cni0")
	}
	for _, p := range conf.Plugins {
		if p.Type == "bridge" {
			return cmp.Or(p.Bridge, "cni0")
		}
	}
	return ""
}

// keepPeersConfig gives each peer added under old's configuration a copy
// of it, when next replaces it with another: their DEL must run with what
// they were added with.
func keepPeersConfig(tx ds.Tx, old, next *api.Network) error {
	if cni.SameConfig(old.Config, next.Config) {
		return nil
	}
	peers, err := tx.ListPeers(old.Name)
	if err != nil {
		return err
	}
	for _, p := range peers {
		if p.Config != nil {
			continue // added under an older one still
		}
		p.Config = old.Config
		if err := tx.PutPeer(&p); err != nil {
			return err
		}
	}
	return nil
}

// peerConfig is the configuration a peer's DEL runs with.
func peerConfig(n *api.Network, p *api.Peer) (*cni.Config, error) {
	if p.Config == nil {
		return loadConfig(n)
	}
	cfg, err := cni.Parse(p.Config)
	if err != nil {
		return nil, fmt.Errorf("configuration container %s was added with on network %s: %w", p.ContainerID, n.Name, err)
	}
	return cfg, nil
}

// loadConfig parses a stored network's configuration.
func loadConfig(n *api.Network) (*cni.Config, error) {
	cfg, err := cni.Parse(n.Config)
	if err != nil {
		return nil, fmt.Errorf("stored configuration of network %s: %w", n.Name, err)
	}
	return cfg, nil
}
