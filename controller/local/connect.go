package local

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
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
	return c.connectTo(ctx, nil, req)
}

// connectTo is Connect to n, the network's record as the caller has just
// read it (nil: read here), which saves a transaction. The intent's
// transaction reads it again, as every write does.
func (c *Controller) connectTo(ctx context.Context, n *api.Network, req api.ConnectRequest) (*api.Peer, error) {
	p, err := c.connect(ctx, n, req)
	if err != nil {
		return nil, fmt.Errorf("connect %s to %s: %w", req.Container, req.Network, err)
	}
	return p, nil
}

func (c *Controller) connect(ctx context.Context, n *api.Network, req api.ConnectRequest) (*api.Peer, error) {
	if n == nil || n.Name != req.Network {
		var err error
		if n, err = c.networkRecord(ctx, req.Network); err != nil {
			return nil, err
		}
	}
	cfg, err := loadConfig(n)
	if n.Cluster != nil {
		cfg, err = c.clusterConfig(n)
	}
	if err != nil {
		return nil, err
	}
	ctr, err := c.resolve(req)
	if err != nil {
		return nil, err
	}
	nsPath := netns.ProcPath(ctr.PID)
	if err := c.ownNamespace(req.Container, ctr.PID); err != nil {
		return nil, err
	}
	if req.IfName != "" {
		if err := api.ValidIfName(req.IfName); err != nil {
			return nil, err
		}
	}
	// The names the container has now; those other connects of it have
	// reserved are in the records, checked with the intent below.
	links, err := c.k.ns.Links(nsPath)
	if err != nil {
		return nil, err
	}
	if req.IfName != "" && slices.Contains(links, req.IfName) {
		return nil, api.Errorf(api.ErrExists, "container %s already has an interface %s", req.Container, req.IfName)
	}

	settings, err := c.checkSettings(n, cfg, req.Settings)
	if err != nil {
		return nil, err
	}
	self := c.k.procs.Self()
	start, err := c.k.procs.StartTime(ctr.PID)
	if err != nil {
		return nil, api.Errorf(api.ErrNotFound, "no process with pid %d", ctr.PID)
	}
	p := &api.Peer{
		Network:     n.Name,
		ContainerID: ctr.ID,
		PID:         ctr.PID,
		PIDStart:    start,
		BootID:      c.k.procs.BootID(),
		State:       api.PeerConnecting,
		ConnectedAt: time.Now().UTC(),
		Owner:       &self,
		Settings:    settings,
	}
	if n.Cluster != nil {
		// Its DEL must run with the blocks and data dir of its ADD.
		p.Node, p.Config = n.Cluster.Node, cfg.Raw
	}
	// Record intent first: a crash from here on leaves a record gc
	// finishes. The interface name is chosen (or checked) in the same
	// transaction, so two connects of one container never pick one name.
	err = c.waitGC(ctx, func(tx ds.Tx) error {
		cur, err := tx.GetNetwork(n.Name)
		if err != nil {
			return err
		}
		if cur.GC != nil && c.ownerRuns(cur.GC) {
			return errGCRunning
		}
		peers, err := tx.ContainerPeers(n.Name, p.ContainerID)
		if err != nil {
			return err
		}
		if len(peers) > 0 {
			return api.Errorf(api.ErrExists, "container %s is already connected to network %s (as %s)", req.Container, n.Name, peers[0].IfName)
		}
		used, err := reservedNames(tx, p.ContainerID)
		if err != nil {
			return err
		}
		if err := settingsFree(tx, p); err != nil {
			return err
		}
		p.IfName = req.IfName
		switch {
		case p.IfName == "":
			p.IfName = netns.FreeIfName(append(used, links...))
		case slices.Contains(used, p.IfName):
			return api.Errorf(api.ErrExists, "container %s already has an interface %s (on another network)", req.Container, p.IfName)
		}
		p.Netns = c.pinPath(n.Name, p.ContainerID, p.IfName)
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
		// Undo in reverse, past the caller's cancellation but bounded.
		bg, cancel := c.undoContext(ctx)
		defer cancel()
		if added {
			if err := c.release(bg, cfg, runtimeConf(p, p.Netns)); err != nil {
				// What the plugins made may still be there: keep the pin
				// and a record saying so, for gc to DEL again.
				c.log.WithError(err).Warnf("rollback: CNI DEL of %s on %s failed; gc will retry it", p.ContainerID, n.Name)
				if err := c.markUndoFailed(bg, p); err != nil {
					c.log.WithError(err).Warn("rollback: record the failed undo")
				}
				return
			}
		}
		if err := c.k.ns.Unpin(p.Netns); err != nil {
			c.log.WithError(err).Warn("rollback: unpin")
		}
		if err := c.forget(bg, p); err != nil {
			c.log.WithError(err).Warn("rollback: forget peer")
		}
	}()

	// Whether the network's bridge is there before its first ADD: if not,
	// the plugin makes it, and network delete may remove it.
	bridge := bridgeOf(n)
	bridgeWas := bridge == "" || n.OwnedBridge != "" || c.hostHas(bridge)
	if err := c.k.ns.Pin(nsPath, p.Netns); err != nil {
		return nil, err
	}
	added = true // a failed ADD may have done part of its work: DEL it too
	res, err := c.k.cni.Add(ctx, cfg, runtimeConf(p, p.Netns))
	if err != nil {
		return nil, fmt.Errorf("CNI ADD: %w", err)
	}
	p.IPs, p.MAC, p.HostIf = res.IPs, res.MAC, res.HostIf
	// A bridge the plugin has just made keeps its IPv6 gateway tentative
	// for about a second, and published ports on it do not answer until
	// then: connect returns when the network works.
	if err := c.k.ns.WaitSettled(netns.ProcPath(self.PID), res.Gateways); err != nil {
		c.log.WithError(err).Warn("gateway addresses still tentative")
	}
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
	applied, _ := effective(n, p)
	// Record the outcome on the record as it is now, changing only what
	// connect owns: a qos set may have given the peer an override, or the
	// network a new policy, while the plugins ran.
	var now *api.Peer
	var net *api.Network
	err = c.store.Update(ctx, func(tx ds.Tx) error {
		cur, err := tx.GetPeer(p.Network, p.ContainerID, p.IfName)
		if err != nil {
			return err
		}
		if cur.State != api.PeerConnecting || !sameOwner(cur.Owner, p.Owner) || !cur.ConnectedAt.Equal(p.ConnectedAt) {
			return api.Errorf(api.ErrBusy, "another circuit process took over container %s on network %s", p.ContainerID, p.Network)
		}
		if net, err = tx.GetNetwork(p.Network); err != nil {
			return err
		}
		if !bridgeWas && net.OwnedBridge == "" && c.hostHas(bridge) {
			net.OwnedBridge = bridge
			if err := tx.PutNetwork(net); err != nil {
				return err
			}
		}
		cur.IPs, cur.MAC, cur.HostIf = p.IPs, p.MAC, p.HostIf
		cur.State, cur.Owner = api.PeerConnected, nil
		now = cur
		return tx.PutPeer(cur)
	})
	if err != nil {
		return nil, err
	}
	p = now
	if want, _ := effective(net, p); !samePolicy(want, applied) {
		if err := c.shape(p, want); err != nil {
			c.log.WithError(err).Warnf("qos of %s on %s changed during its connect and could not be applied (restore retries)", p.ContainerID, p.Network)
		}
	}
	done = true
	c.log.Debugf("connected %s (pid %d) to %s as %s: %v", p.ContainerID, p.PID, n.Name, p.IfName, p.IPs)
	c.notify(ctx, n)
	return p, nil
}

// ownNamespace refuses a process in circuit's own network namespace or
// PID 1's (the host's): the plugins would change the host's links,
// addresses and routes. Namespaces are compared by identity, not by PID.
func (c *Controller) ownNamespace(container string, pid int) error {
	id, err := c.k.ns.ID(netns.ProcPath(pid))
	if err != nil {
		return fmt.Errorf("network namespace of pid %d: %w", pid, err)
	}
	for _, host := range []struct{ who, path string }{{"circuit's own", "/proc/self/ns/net"}, {"the host's (pid 1)", netns.ProcPath(1)}} {
		if hid, err := c.k.ns.ID(host.path); err == nil && hid == id {
			return api.Errorf(api.ErrInvalid, "container %s is in %s network namespace: circuit connects only containers with a network namespace of their own", container, host.who)
		}
	}
	return nil
}

// markUndoFailed records that a connect's undo failed, on its own record.
func (c *Controller) markUndoFailed(ctx context.Context, p *api.Peer) error {
	return c.store.Update(ctx, func(tx ds.Tx) error {
		cur, err := tx.GetPeer(p.Network, p.ContainerID, p.IfName)
		if err != nil {
			return err
		}
		if !sameOwner(cur.Owner, p.Owner) || !cur.ConnectedAt.Equal(p.ConnectedAt) {
			return nil // not ours any more
		}
		cur.State = api.PeerUndoFailed
		return tx.PutPeer(cur)
	})
}

// waitGC runs fn in an Update, again while it says the plugins' GC of the
// network runs (milliseconds, normally), up to the datastore's own bound.
func (c *Controller) waitGC(ctx context.Context, fn func(ds.Tx) error) error {
	bound := c.cfg.LockTimeout
	if bound <= 0 {
		bound = 10 * time.Second
	}
	deadline := time.Now().Add(bound)
	for {
		err := c.store.Update(ctx, fn)
		if !errors.Is(err, errGCRunning) {
			return err
		}
		if time.Now().After(deadline) {
			return api.Errorf(api.ErrBusy, "%v for more than %s; try again", err, bound)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// hostHas reports whether circuit's own namespace has an interface name.
func (c *Controller) hostHas(name string) bool {
	links, err := c.k.ns.Links("/proc/self/ns/net")
	return err == nil && slices.Contains(links, name)
}

// reservedNames are the interface names a container's records hold, on
// every network.
func reservedNames(tx ds.Tx, containerID string) ([]string, error) {
	nets, err := tx.ListNetworks()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, n := range nets {
		peers, err := tx.ContainerPeers(n.Name, containerID)
		if err != nil {
			return nil, err
		}
		for _, p := range peers {
			names = append(names, p.IfName)
		}
	}
	return names, nil
}

// runtimeConf is what the plugins are told about a peer, at its ADD and
// every DEL alike: its container's ID as CNI accepts it, its netns (""
// once the namespace is gone), its name in CNI_ARGS (the convention
// podman's and containerd's CNI paths use, so plugins that resolve
// containers by name work), and what its connect asked for as capability
// arguments.
func runtimeConf(p *api.Peer, nsPath string) cni.RuntimeConf {
	id := api.CNIContainerID(p.ContainerID)
	rc := cni.RuntimeConf{ContainerID: id, Netns: nsPath, IfName: p.IfName}
	if name := cmp.Or(p.Name, p.ContainerID); name != "" {
		rc.Args = [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAME", name}, {"K8S_POD_NAMESPACE", "circuit"}, {"K8S_POD_INFRA_CONTAINER_ID", id}}
	}
	caps := map[string]any{}
	if len(p.Publish) > 0 {
		var pm []map[string]any
		for _, m := range p.Publish {
			e := map[string]any{"hostPort": m.HostPort, "containerPort": m.ContainerPort, "protocol": m.Protocol}
			if m.HostIP != "" {
				e["hostIP"] = m.HostIP
			}
			pm = append(pm, e)
		}
		caps["portMappings"] = pm
	}
	if len(p.RequestedIPs) > 0 {
		caps["ips"] = p.RequestedIPs
	}
	if p.RequestedMAC != "" {
		caps["mac"] = p.RequestedMAC
	}
	if len(p.Aliases) > 0 {
		caps["aliases"] = map[string][]string{p.Network: p.Aliases}
	}
	if len(caps) > 0 {
		rc.Capabilities = caps
	}
	return rc
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
	n, match, err := c.findPeers(ctx, req.Network, req.Container, req.IfName)
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

// findPeers reads a network's record and finds a container's peers on it,
// in one transaction, without reading the other peers: by the name given
// when it is the recorded ID, else by the ID the live container or process
// resolves to ("pid-<pid>-<start>" for a plain process). Only a PID whose
// process is gone costs a scan.
func (c *Controller) findPeers(ctx context.Context, network, container, ifname string) (*api.Network, []api.Peer, error) {
	if err := api.ValidNetworkName(network); err != nil {
		return nil, nil, err
	}
	var n *api.Network
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
		var err error
		if n, err = tx.GetNetwork(network); err != nil {
			return err
		}
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
	if err != nil {
		return nil, nil, err
	}
	return n, match, nil
}

// detach undoes one peer: QoS, CNI DEL (against the pin while the
// namespace lives), the pin, then the record. It claims the record first,
// so two processes never tear down the same peer.
func (c *Controller) detach(ctx context.Context, n *api.Network, p *api.Peer) error {
	cfg, err := peerConfig(n, p)
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
		c.notify(ctx, n)
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
