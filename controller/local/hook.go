package local

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/pkg/cni"
)

// Hook acts on the OCI state runc hands a hook: start hooks connect the
// container to its networks, poststop gives everything back.
func (c *Controller) Hook(ctx context.Context, req api.HookRequest) (*api.HookResult, error) {
	if err := api.ValidContainerID(req.ID); err != nil {
		return nil, fmt.Errorf("hook: %w", err)
	}
	switch req.Status {
	case "creating", "created", "running":
		return c.hookStart(ctx, req)
	case "stopped":
		return c.hookStop(ctx, req)
	default:
		return nil, fmt.Errorf("hook %s: %w: unknown container status %q", req.ID, api.ErrInvalid, req.Status)
	}
}

func (c *Controller) hookStart(ctx context.Context, req api.HookRequest) (*api.HookResult, error) {
	if req.PID <= 0 {
		return nil, fmt.Errorf("hook %s: %w: OCI state has no pid for status %s", req.ID, api.ErrInvalid, req.Status)
	}
	networks, err := c.hookNetworks(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("hook %s: %w", req.ID, err)
	}
	res := &api.HookResult{}
	var done []string
	for _, name := range networks {
		if c.alreadyConnected(ctx, name, req.ID, req.PID) {
			res.Actions = append(res.Actions, fmt.Sprintf("container %s is already connected to network %s", req.ID, name))
			continue
		}
		ifname := ""
		if len(networks) == 1 {
			ifname = req.IfName
		}
		p, err := c.Connect(ctx, api.ConnectRequest{Container: strconv.Itoa(req.PID), ContainerID: req.ID, Network: name, IfName: ifname})
		if err != nil {
			// All or nothing: a container that cannot have all its networks gets none.
			for _, d := range done {
				if derr := c.Disconnect(context.WithoutCancel(ctx), api.DisconnectRequest{Container: req.ID, Network: d}); derr != nil {
					c.log.WithError(derr).Warnf("hook %s: roll back %s", req.ID, d)
				}
			}
			return res, fmt.Errorf("hook %s: %w", req.ID, err)
		}
		done = append(done, name)
		res.Actions = append(res.Actions, fmt.Sprintf("connected container %s to network %s as %s %v", req.ID, name, p.IfName, p.IPs))
	}
	return res, nil
}

func (c *Controller) alreadyConnected(ctx context.Context, network, id string, pid int) bool {
	found := false
	c.store.View(ctx, func(tx ds.Tx) error {
		found = false
		peers, err := tx.ContainerPeers(network, id)
		for _, p := range peers {
			if p.PID == pid && p.State == api.PeerConnected {
				found = true
			}
		}
		return err
	})
	return found
}

// hookNetworks names the networks a container joins: the annotation or
// CIRCUIT_NETWORK (already in req.Networks), else the CNI_CONF file.
func (c *Controller) hookNetworks(ctx context.Context, req api.HookRequest) ([]string, error) {
	if len(req.Networks) > 0 {
		return req.Networks, nil
	}
	if req.CNIConf == "" {
		return nil, api.Errorf(api.ErrInvalid, "no network: set CNI_CONF or CIRCUIT_NETWORK in the hook's env, or the circuit.network annotation")
	}
	n, err := c.ensureNetworkFromFile(ctx, req.CNIConf)
	if err != nil {
		return nil, err
	}
	return []string{n}, nil
}

// ensureNetworkFromFile creates the network CNI_CONF describes, or checks
// that the stored one is the same.
func (c *Controller) ensureNetworkFromFile(ctx context.Context, path string) (string, error) {
	raw, err := cni.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("CNI_CONF: %w", err)
	}
	cfg, err := cni.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("CNI_CONF %s: %w", path, err)
	}
	err = c.store.Update(ctx, func(tx ds.Tx) error {
		old, err := tx.GetNetwork(cfg.Name)
		if errors.Is(err, api.ErrNotFound) {
			return tx.PutNetwork(networkFromConfig(cfg))
		}
		if err != nil {
			return err
		}
		if !cni.SameConfig(old.Config, raw) {
			return api.Errorf(api.ErrExists, "network %s exists with a configuration different from CNI_CONF %s", cfg.Name, path)
		}
		return nil
	})
	return cfg.Name, err
}

// hookStop disconnects the container from every network, by its ID; it
// never deletes a network and succeeds when there is nothing to do.
func (c *Controller) hookStop(ctx context.Context, req api.HookRequest) (*api.HookResult, error) {
	var peers []api.Peer
	// Network by network, so the cost follows the container's peers, not
	// every peer on the host.
	err := c.store.View(ctx, func(tx ds.Tx) error {
		peers = nil
		networks, err := tx.ListNetworks()
		if err != nil {
			return err
		}
		for _, n := range networks {
			mine, err := tx.ContainerPeers(n.Name, req.ID)
			if err != nil {
				return err
			}
			peers = append(peers, mine...)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("hook %s: %w", req.ID, err)
	}
	res := &api.HookResult{}
	var errs []error
	for _, p := range peers {
		n, err := c.networkRecord(ctx, p.Network)
		if err == nil {
			err = c.detach(ctx, n, &p)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("disconnect from %s: %w", p.Network, err))
			continue
		}
		res.Actions = append(res.Actions, fmt.Sprintf("disconnected container %s from network %s", req.ID, p.Network))
	}
	if len(peers) == 0 {
		res.Actions = append(res.Actions, fmt.Sprintf("container %s has no networks: nothing to do", req.ID))
	}
	if err := errors.Join(errs...); err != nil {
		return res, fmt.Errorf("hook %s: %w", req.ID, err)
	}
	return res, nil
}
