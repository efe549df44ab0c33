package local

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/pkg/cni"
	"github.com/circuit-cni/circuit/pkg/netns"
	"github.com/circuit-cni/circuit/pkg/runc"
)

// Connect attaches a running container to a network through CNI ADD.
// Whatever fails after the intent is recorded is undone: no interface, no
// address reservation, no pin and no record is left behind.
func (c *Controller) Connect(ctx context.Context, req api.ConnectRequest) (*api.Peer, error) {
	p, err := c.connect(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("connect %s to %s: %w", req.Container, req.Network, err)
	}
	return p, nil
}

func (c *Controller) connect(ctx context.Context, req api.ConnectRequest) (*api.Peer, error) {
	n, err := c.networkRecord(ctx, req.Network)
	if err != nil {
		return nil, err
	}
	cfg, err := loadConfig(n)
	if err != nil {
		return nil, err
	}
	ctr, err := c.resolve(req)
	if err != nil {
		return nil, err
	}
	nsPath := netns.ProcPath(ctr.PID)
	ifname := req.IfName
	if ifname == "" {
		if ifname, err = c.k.ns.FreeIfName(nsPath); err != nil {
			return nil, err
		}
	} else if err := api.ValidIfName(ifname); err != nil {
		return nil, err
	}

	self := c.k.procs.Self()
	p := &api.Peer{
		Network:     n.Name,
		ContainerID: ctr.ID,
		PID:         ctr.PID,
		IfName:      ifname,
		Netns:       c.pinPath(n.Name, ctr.ID, ifname),
		State:       api.PeerConnecting,
		ConnectedAt: time.Now().UTC(),
		Owner:       &self,
	}
	// Record intent first: a crash from here on leaves a record gc finishes.
	err = c.store.Update(ctx, func(tx ds.Tx) error {
		peers, err := tx.ContainerPeers(n.Name, p.ContainerID)
		if err != nil {
			return err
		}
		if len(peers) > 0 {
			return api.Errorf(api.ErrExists, "container %s is already connected to network %s (as %s)", req.Container, n.Name, peers[0].IfName)
		}
		return tx.PutPeer(p)
	})
	if err != nil {
		return nil, err
	}
	done := false
	added := false
	defer func() {
		if done {
			return
		}
		// Undo in reverse; a fresh context, so a cancelled caller still cleans up.
		bg := context.WithoutCancel(ctx)
		if added {
			if err := c.release(bg, cfg, runtimeConf(p, p.Netns)); err != nil {
				c.log.WithError(err).Debugf("rollback: CNI DEL of %s on %s", p.ContainerID, n.Name)
			}
		}
		if err := c.k.ns.Unpin(p.Netns); err != nil {
			c.log.WithError(err).Warn("rollback: unpin")
		}
		if err := c.store.Update(bg, func(tx ds.Tx) error { return tx.DeletePeer(p.Network, p.ContainerID, p.IfName) }); err != nil {
			c.log.WithError(err).Warn("rollback: forget peer")
		}
	}()

	if err := c.k.ns.Pin(nsPath, p.Netns); err != nil {
		return nil, err
	}
	added = true // a failed ADD may have done part of its work: DEL it too
	res, err := c.k.cni.Add(ctx, cfg, runtimeConf(p, p.Netns))
	if err != nil {
		return nil, fmt.Errorf("CNI ADD: %w", err)
	}
	p.IPs, p.MAC, p.HostIf = res.IPs, res.MAC, res.HostIf
	// Older results (0.2.0) and some plugins leave these out: ask the kernel.
	if p.MAC == "" || p.HostIf == "" {
		if mac, hostIf, err := c.k.ns.LinkInfo(p.Netns, p.IfName, netns.ProcPath(self.PID)); err == nil {
			if p.MAC == "" {
				p.MAC = mac
			}
			if p.HostIf == "" {
				p.HostIf = hostIf
			}
		}
	}
	if err := c.applyPeerQoS(n, p); err != nil {
		return nil, err
	}
	p.State, p.Owner = api.PeerConnected, nil
	err = c.store.Update(ctx, func(tx ds.Tx) error { return tx.PutPeer(p) })
	if err != nil {
		return nil, err
	}
	done = true
	c.log.Debugf("connected %s (pid %d) to %s as %s: %v", p.ContainerID, p.PID, n.Name, p.IfName, p.IPs)
	return p, nil
}

// runtimeConf is what the plugins are told about a peer: its container's
// ID as CNI accepts it, and its netns ("" once the namespace is gone).
func runtimeConf(p *api.Peer, nsPath string) cni.RuntimeConf {
	return cni.RuntimeConf{ContainerID: api.CNIContainerID(p.ContainerID), Netns: nsPath, IfName: p.IfName}
}

// release runs DEL for an attachment, then, if the chain's DEL fails, DEL
// plugin by plugin, so a chain whose ADD failed half-way (or one of whose
// plugins has gone) still gives back what the others made. It is the one
// teardown of connect's rollback, disconnect and gc.
func (c *Controller) release(ctx context.Context, cfg *cni.Config, rc cni.RuntimeConf) error {
	err := c.k.cni.Del(ctx, cfg, rc)
	if err == nil {
		return nil
	}
	if eachErr := c.k.cni.DelEach(ctx, cfg, rc); eachErr != nil {
		return fmt.Errorf("CNI DEL: %w", err)
	}
	return nil
}

func (c *Controller) resolve(req api.ConnectRequest) (*runc.Container, error) {
	if req.ContainerID != "" {
		if err := api.ValidContainerID(req.ContainerID); err != nil {
			return nil, err
		}
		pid, err := strconv.Atoi(req.Container)
		if err != nil || pid <= 0 {
			return nil, api.Errorf(api.ErrInvalid, "container %s has no pid", req.ContainerID)
		}
		if _, err := c.k.procs.StartTime(pid); err != nil {
			return nil, api.Errorf(api.ErrNotFound, "no process with pid %d", pid)
		}
		return &runc.Container{ID: req.ContainerID, PID: pid}, nil
	}
	return c.k.procs.Resolve(c.cfg.RuncRoot, req.Container)
}

// Disconnect detaches a container, found by the ID or PID it was connected
// with. It works after the container died: DEL runs against the pin.
func (c *Controller) Disconnect(ctx context.Context, req api.DisconnectRequest) error {
	if err := c.disconnect(ctx, req); err != nil {
		return fmt.Errorf("disconnect %s from %s: %w", req.Container, req.Network, err)
	}
	return nil
}

func (c *Controller) disconnect(ctx context.Context, req api.DisconnectRequest) error {
	n, err := c.networkRecord(ctx, req.Network)
	if err != nil {
		return err
	}
	match, err := c.findPeers(ctx, n.Name, req.Container, req.IfName)
	if err != nil {
		return err
	}
	switch {
	case len(match) == 0:
		return api.Errorf(api.ErrNotFound, "container %s is not connected to network %s", req.Container, req.Network)
	case len(match) > 1:
		return api.Errorf(api.ErrInvalid, "container %s has %d interfaces on network %s; choose one with --ifname", req.Container, len(match), req.Network)
	}
	return c.detach(ctx, n, &match[0])
}

// findPeers finds a container's peers on a network without reading the
// other peers: by the name given when it is the recorded ID, else by the
// ID the live container or process resolves to ("pid-<pid>-<start>" for a
// plain process). Only a PID whose process is gone costs a scan.
func (c *Controller) findPeers(ctx context.Context, network, container, ifname string) ([]api.Peer, error) {
	var match []api.Peer
	keep := func(peers []api.Peer, ok func(api.Peer) bool) {
		for _, p := range peers {
			if ok(p) && (ifname == "" || p.IfName == ifname) {
				match = append(match, p)
			}
		}
	}
	err := c.store.View(ctx, func(tx ds.Tx) error {
		match = nil // a View may run more than once
		lookup := func(id string) error {
			peers, err := tx.ContainerPeers(network, id)
			keep(peers, func(api.Peer) bool { return true })
			return err
		}
		if api.ValidContainerID(container) == nil {
			if err := lookup(container); err != nil || len(match) > 0 {
				return err
			}
		}
		if ctr, err := c.k.procs.Resolve(c.cfg.RuncRoot, container); err == nil && ctr.ID != container {
			if err := lookup(ctr.ID); err != nil || len(match) > 0 {
				return err
			}
		}
		// A PID whose process is gone: only the records know it.
		peers, err := tx.ListPeers(network)
		keep(peers, func(p api.Peer) bool { return strconv.Itoa(p.PID) == container })
		return err
	})
	return match, err
}

// detach undoes one peer: QoS, CNI DEL (against the pin while the
// namespace lives), the pin, then the record. It claims the record first,
// so two processes never tear down the same peer.
func (c *Controller) detach(ctx context.Context, n *api.Network, p *api.Peer) error {
	cfg, err := loadConfig(n)
	if err != nil {
		return err
	}
	claimed, err := c.claim(ctx, p)
	if err != nil {
		return err
	}
	if !claimed {
		if _, err := c.peer(ctx, p.Network, p.ContainerID, p.IfName); errors.Is(err, api.ErrNotFound) {
			return nil // another circuit process finished it
		}
		return api.Errorf(api.ErrBusy, "another circuit process is changing container %s on network %s; try again", p.ContainerID, p.Network)
	}
	nsPath := p.Netns
	if !c.k.ns.IsNetns(nsPath) {
		nsPath = "" // gone (reboot): DEL still releases the address
	}
	if nsPath != "" {
		c.resetPeerQoS(p)
	}
	if err := c.release(ctx, cfg, runtimeConf(p, nsPath)); err != nil {
		return err
	}
	if err := c.k.ns.Unpin(p.Netns); err != nil {
		return err
	}
	err = c.store.Update(ctx, func(tx ds.Tx) error {
		err := tx.DeletePeer(p.Network, p.ContainerID, p.IfName)
		if errors.Is(err, api.ErrNotFound) {
			return nil
		}
		return err
	})
	if err == nil {
		c.log.Debugf("disconnected %s from %s", p.ContainerID, n.Name)
	}
	return err
}

func (c *Controller) peer(ctx context.Context, network, containerID, ifname string) (*api.Peer, error) {
	var p *api.Peer
	err := c.store.View(ctx, func(tx ds.Tx) error {
		var err error
		p, err = tx.GetPeer(network, containerID, ifname)
		return err
	})
	return p, err
}
