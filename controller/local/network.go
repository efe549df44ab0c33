package local

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/pkg/cni"
)

// CreateNetwork validates a CNI configuration and stores it as given.
func (c *Controller) CreateNetwork(ctx context.Context, raw []byte, force bool) (*api.Network, error) {
	cfg, err := cni.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("create network: %w", err)
	}
	n := networkFromConfig(cfg)
	err = c.store.Update(ctx, func(tx ds.Tx) error {
		old, err := tx.GetNetwork(n.Name)
		switch {
		case err == nil && !force:
			return fmt.Errorf("create network %s: %w (use --force to replace it)", n.Name, api.ErrExists)
		case err == nil:
			n.CreatedAt, n.QoS = old.CreatedAt, old.QoS
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
	if len(n.Peers) > 0 && !force {
		return fmt.Errorf("delete network %s: %w: %d container(s) connected (disconnect them or use --force)", name, api.ErrInUse, len(n.Peers))
	}
	for _, p := range n.Peers {
		if err := c.detach(ctx, n, &p); err != nil {
			return fmt.Errorf("delete network %s: %w", name, err)
		}
	}
	return c.store.Update(ctx, func(tx ds.Tx) error {
		if peers, err := tx.ListPeers(name); err != nil {
			return err
		} else if len(peers) > 0 {
			return fmt.Errorf("delete network %s: %w: a container connected meanwhile", name, api.ErrInUse)
		}
		return tx.DeleteNetwork(name)
	})
}

// loadConfig parses a stored network's configuration.
func loadConfig(n *api.Network) (*cni.Config, error) {
	cfg, err := cni.Parse(n.Config)
	if err != nil {
		return nil, fmt.Errorf("stored configuration of network %s: %w", n.Name, err)
	}
	return cfg, nil
}
