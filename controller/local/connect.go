package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/circuit-cni/circuit/controller"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/pkg/cni"
	"github.com/circuit-cni/circuit/pkg/netns"
	"github.com/circuit-cni/circuit/pkg/runc"
)

// Connect attaches a running container to a network through CNI ADD.
// Whatever fails after the intent is recorded is undone: no interface, no
// address reservation, no pin and no record is left behind.
func (c *Controller) Connect(ctx context.Context, req controller.ConnectRequest) (*controller.Peer, error) {
	p, err := c.connect(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("connect %s to %s: %w", req.Container, req.Network, err)
	}
	return p, nil
}

func (c *Controller) connect(ctx context.Context, req controller.ConnectRequest) (*controller.Peer, error) {
	n, err := c.networkRecord(ctx, req.Network)
	if err != nil {
		return nil, err
	}
	cfg, err := c.loadConfig(n)
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
		if ifname, err = netns.FreeIfName(nsPath); err != nil {
			return nil, err
		}
	} else if err := validIfName(ifname); err != nil {
		return nil, err
	}

	p := &controller.Peer{
		Network:     n.Name,
		ContainerID: ctr.ID,
		PID:         ctr.PID,
		IfName:      ifname,
		Netns:       c.pinPath(n.Name, ctr.ID, ifname),
		State:       controller.PeerConnecting,
		ConnectedAt: time.Now().UTC(),
		Owner:       self(),
	}
	// Record intent first: a crash from here on leaves a record gc finishes.
	err = c.store.Update(ctx, func(tx ds.Tx) error {
		peers, err := tx.ContainerPeers(n.Name, p.ContainerID)
		if err != nil {
			return err
		}
		for _, q := range peers {
			if q.ContainerID == p.ContainerID {
				return controller.Errorf(controller.ErrExists, "container %s is already connected to network %s (as %s)", req.Container, n.Name, q.IfName)
			}
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
		// Undo in reverse; use a fresh context so a cancelled caller still cleans up.
		bg := context.WithoutCancel(ctx)
		if added {
			a := cni.Attachment{ContainerID: p.ContainerID, Netns: p.Netns, IfName: p.IfName}
			if err := c.cni.Del(bg, cfg, a); err != nil {
				if err := c.cni.DelEach(bg, cfg, a); err != nil {
					c.log.WithError(err).Debugf("rollback: CNI DEL of %s on %s", p.ContainerID, n.Name)
				}
			}
		}
		if err := netns.Unpin(p.Netns); err != nil {
			c.log.WithError(err).Warn("rollback: unpin")
		}
		if err := c.store.Update(bg, func(tx ds.Tx) error { return tx.DeletePeer(p.Network, p.ContainerID, p.IfName) }); err != nil {
			c.log.WithError(err).Warn("rollback: forget peer")
		}
	}()

	if err := netns.Pin(nsPath, p.Netns); err != nil {
		return nil, err
	}
	added = true // a failed ADD may have done part of its work: DEL it too
	res, err := c.cni.Add(ctx, cfg, cni.Attachment{ContainerID: p.ContainerID, Netns: p.Netns, IfName: p.IfName})
	if err != nil {
		return nil, fmt.Errorf("CNI ADD: %w", err)
	}
	p.IPs, p.MAC, p.HostIf = res.IPs, res.MAC, res.HostIf
	// Older results (0.2.0) and some plugins leave these out: ask the kernel.
	if p.MAC == "" || p.HostIf == "" {
		if mac, peer, err := netns.LinkInfo(p.Netns, p.IfName, netns.ProcPath(os.Getpid())); err == nil {
			if p.MAC == "" {
				p.MAC = mac
			}
			if p.HostIf == "" {
				p.HostIf = peer
			}
		}
	}
	if err := c.applyPeerQoS(ctx, n, p); err != nil {
		return nil, err
	}
	p.State, p.Owner = controller.PeerConnected, nil
	err = c.store.Update(ctx, func(tx ds.Tx) error { return tx.PutPeer(p) })
	if err != nil {
		return nil, err
	}
	done = true
	c.log.Debugf("connected %s (pid %d) to %s as %s: %v", p.ContainerID, p.PID, n.Name, p.IfName, p.IPs)
	return p, nil
}

func (c *Controller) resolve(req controller.ConnectRequest) (*runc.Container, error) {
	if req.ContainerID != "" {
		if err := runc.ValidID(req.ContainerID); err != nil {
			return nil, err
		}
		var pid int
		if _, err := fmt.Sscanf(req.Container, "%d", &pid); err != nil || pid <= 0 {
			return nil, controller.Errorf(controller.ErrInvalid, "container %s has no pid", req.ContainerID)
		}
		if _, err := runc.StartTime(pid); err != nil {
			return nil, controller.Errorf(controller.ErrNotFound, "no process with pid %d", pid)
		}
		return &runc.Container{ID: req.ContainerID, PID: pid}, nil
	}
	return runc.Resolve(c.cfg.RuncRoot, req.Container)
}

func validIfName(name string) error {
	if len(name) == 0 || len(name) > 15 || name == "." || name == ".." {
		return controller.Errorf(controller.ErrInvalid, "interface name %q must be 1 to 15 characters", name)
	}
	for _, r := range name {
		if r == '/' || r == ':' || r <= ' ' || r > '~' {
			return controller.Errorf(controller.ErrInvalid, "interface name %q has a character the kernel refuses", name)
		}
	}
	return nil
}

// Disconnect detaches a container, found by the ID or PID it was connected
// with. It works after the container died: DEL runs against the pin.
func (c *Controller) Disconnect(ctx context.Context, req controller.DisconnectRequest) error {
	if err := c.disconnect(ctx, req); err != nil {
		return fmt.Errorf("disconnect %s from %s: %w", req.Container, req.Network, err)
	}
	return nil
}

func (c *Controller) disconnect(ctx context.Context, req controller.DisconnectRequest) error {
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
		return controller.Errorf(controller.ErrNotFound, "container %s is not connected to network %s", req.Container, req.Network)
	case len(match) > 1:
		return controller.Errorf(controller.ErrInvalid, "container %s has %d interfaces on network %s; choose one with --ifname", req.Container, len(match), req.Network)
	}
	return c.detach(ctx, n, &match[0])
}

// findPeers finds a container's peers on a network without reading the
// other peers: by the name given when it is the recorded ID, else by the
// ID the live container or process resolves to ("pid-<pid>-<start>" for a
// plain process). Only a PID whose process is gone costs a scan.
func (c *Controller) findPeers(ctx context.Context, network, container, ifname string) ([]controller.Peer, error) {
	var match []controller.Peer
	keep := func(peers []controller.Peer, ok func(controller.Peer) bool) {
		for _, p := range peers {
			if ok(p) && (ifname == "" || p.IfName == ifname) {
				match = append(match, p)
			}
		}
	}
	err := c.store.View(ctx, func(tx ds.Tx) error {
		lookup := func(id string) error {
			peers, err := tx.ContainerPeers(network, id)
			keep(peers, func(controller.Peer) bool { return true })
			return err
		}
		if runc.ValidID(container) == nil {
			if err := lookup(container); err != nil || len(match) > 0 {
				return err
			}
		}
		if ctr, err := runc.Resolve(c.cfg.RuncRoot, container); err == nil && ctr.ID != container {
			if err := lookup(ctr.ID); err != nil || len(match) > 0 {
				return err
			}
		}
		// A PID whose process is gone: only the records know it.
		peers, err := tx.ListPeers(network)
		keep(peers, func(p controller.Peer) bool { return fmt.Sprint(p.PID) == container })
		return err
	})
	return match, err
}

// detach undoes one attachment: QoS, CNI DEL (against the pin while the
// namespace lives), the pin, then the record.
func (c *Controller) detach(ctx context.Context, n *controller.Network, p *controller.Peer) error {
	cfg, err := c.loadConfig(n)
	if err != nil {
		return err
	}
	claimed, err := c.claim(ctx, p)
	if err != nil {
		return err
	}
	if !claimed {
		if _, err := c.peer(ctx, p.Network, p.ContainerID, p.IfName); errors.Is(err, controller.ErrNotFound) {
			return nil // another circuit process finished it
		}
		return controller.Errorf(controller.ErrBusy, "another circuit process is changing container %s on network %s; try again", p.ContainerID, p.Network)
	}
	nsPath := p.Netns
	if !netns.IsNetns(nsPath) {
		nsPath = "" // gone (reboot): DEL still releases the address
	}
	if nsPath != "" {
		c.resetPeerQoS(p)
	}
	if err := c.cni.Del(ctx, cfg, cni.Attachment{ContainerID: p.ContainerID, Netns: nsPath, IfName: p.IfName}); err != nil {
		return fmt.Errorf("CNI DEL: %w", err)
	}
	if err := netns.Unpin(p.Netns); err != nil {
		return err
	}
	err = c.store.Update(ctx, func(tx ds.Tx) error {
		err := tx.DeletePeer(p.Network, p.ContainerID, p.IfName)
		if errors.Is(err, controller.ErrNotFound) {
			return nil
		}
		return err
	})
	if err == nil {
		c.log.Debugf("disconnected %s from %s", p.ContainerID, n.Name)
	}
	return err
}

func (c *Controller) peer(ctx context.Context, network, containerID, ifname string) (*controller.Peer, error) {
	var p *controller.Peer
	err := c.store.View(ctx, func(tx ds.Tx) error {
		var err error
		p, err = tx.GetPeer(network, containerID, ifname)
		return err
	})
	return p, err
}
