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
		connected, n, err := c.hookPeers(ctx, name, req)
		if err != nil {
			c.hookRollback(ctx, req, done)
			return res, fmt.Errorf("hook %s: %w", req.ID, err)
		}
		if connected {
			res.Actions = append(res.Actions, fmt.Sprintf("container %s is already connected to network %s", req.ID, name))
			continue
		}
		ifname := ""
		if len(networks) == 1 {
			ifname = req.IfName
		}
		// The settings go with the first network (ports and addresses
		// are one network's); the name goes with every one.
		settings := api.Settings{Name: req.Name}
		if name == networks[0] {
			settings = req.Settings
		}
		p, err := c.connectTo(ctx, n, api.ConnectRequest{Container: strconv.Itoa(req.PID), ContainerID: req.ID, Network: name, IfName: ifname, Settings: settings})
		if err != nil {
			c.hookRollback(ctx, req, done)
			return res, fmt.Errorf("hook %s: %w", req.ID, err)
		}
		done = append(done, name)
		res.Actions = append(res.Actions, fmt.Sprintf("connected container %s to network %s as %s %v", req.ID, name, p.IfName, p.IPs))
	}
	return res, nil
}

// hookRollback disconnects the networks a failed start hook connected:
// a container that cannot have all its networks gets none.
func (c *Controller) hookRollback(ctx context.Context, req api.HookRequest, done []string) {
	ctx, cancel := c.undoContext(ctx)
	defer cancel()
	for _, d := range done {
		if err := c.Disconnect(ctx, api.DisconnectRequest{Container: req.ID, Network: d}); err != nil {
			c.log.WithError(err).Warnf("hook %s: roll back %s", req.ID, d)
		}
	}
}

// hookPeers looks at the records a start hook finds for its container on
// a network: it reports true if this very container is connected already,
// and removes (releasing what they hold) records a dead container of the
// same ID left, since runc IDs are reused. It returns the network's record,
// read with them in one transaction, for the connect (nil once it released
// something: the connect reads it again).
func (c *Controller) hookPeers(ctx context.Context, network string, req api.HookRequest) (bool, *api.Network, error) {
	if err := api.ValidNetworkName(network); err != nil {
		return false, nil, err
	}
	var n *api.Network
	var peers []api.Peer
	err := c.store.View(ctx, func(tx ds.Tx) error {
		var err error
		if n, err = tx.GetNetwork(network); err != nil {
			return err
		}
		peers, err = tx.ContainerPeers(network, req.ID)
		return err
	})
	if err != nil {
		return false, nil, err
	}
	for i := range peers {
		p := &peers[i]
		switch {
		case p.State == api.PeerConnected && p.PID == req.PID && !c.processGone(p):
			return true, nil, nil
		case p.State != api.PeerConnected && c.ownerRuns(p.Owner):
			return false, nil, api.Errorf(api.ErrBusy, "another circuit process is changing container %s on network %s; try again", req.ID, network)
		case p.State == api.PeerConnected && !c.processGone(p):
			return false, nil, api.Errorf(api.ErrExists, "container %s is already connected to network %s, with pid %d", req.ID, network, p.PID)
		}
		// The container that record was made for is gone: release what it
		// left before the new one connects.
		c.log.Debugf("hook %s: replacing the record of a dead container (pid %d) on %s", req.ID, p.PID, network)
		if _, err := c.reap(ctx, n, p); err != nil {
			return false, nil, fmt.Errorf("release what a dead container %s left on %s: %w", req.ID, network, err)
		}
	}
	if len(peers) > 0 {
		n = nil
	}
	return false, n, nil
}

// processGone reports whether the process a peer was connected for is
// gone: another boot, or its PID now another process (or none).
func (c *Controller) processGone(p *api.Peer) bool {
	if p.BootID != "" && p.BootID != c.k.procs.BootID() {
		return true
	}
	start, err := c.k.procs.StartTime(p.PID)
	if err != nil {
		return true
	}
	if p.PIDStart != 0 {
		return start != p.PIDStart
	}
	return !c.alive(p) // a record from before PIDStart was kept
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
	nets := map[string]*api.Network{} // of those peers, read with them
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
			if len(mine) > 0 {
				nets[n.Name] = &n
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
		if err := c.detach(ctx, nets[p.Network], &p); err != nil {
			errs = append(errs, fmt.Errorf("disconnect from %s: %w", p.Network, err))
			continue
		}
		res.Actions = append(res.Actions, fmt.Sprintf("disconnected container %s from network %s", req.ID, p.Network))
	}
	if len(peers) == 0 {
		res.Actions = append(res.Actions, fmt.Sprintf("container %s has no networks: nothing to do", req.ID))
	}
	if err := api.Join(errs...); err != nil {
		return res, fmt.Errorf("hook %s: %w", req.ID, err)
	}
	return res, nil
}
