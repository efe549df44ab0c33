package local

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/pkg/cni"
)

// GC removes what belongs to containers that are gone, and only what
// circuit can prove is its own: its peers (CNI DEL, releasing addresses),
// its pins, attachments in its own libcni cache, and host-local
// reservations in a data directory only circuit uses (under its state
// dir). Live peers, and every address another runtime holds in a shared
// data directory, are never touched. Its steps, in order:
//
//  1. leftovers: read what plugins hold (circuit's libcni cache,
//     host-local's reservations) before the records, so an address seen
//     without a record afterwards is truly orphaned (a connect records its
//     intent before its ADD reserves);
//  2. reapStale: disconnect stale peers (dead containers, interrupted work);
//  3. deleteUnrecorded: DEL attachments circuit's cache holds that no
//     record explains (a connect killed between its ADD and its record);
//  4. releaseUnrecorded: remove reservations no record explains, in a data
//     directory only circuit uses;
//  5. pluginGC: CNI 1.1 GC of a network whose state only circuit holds
//     (with a shared data directory, GC would release the other runtimes'
//     addresses, since circuit can list only its own as valid);
//  6. removeOrphanPins: pins no record points to.
func (c *Controller) GC(ctx context.Context, dryRun bool) (*api.Report, error) {
	g := &gcRun{c: c, dryRun: dryRun, rep: &api.Report{Actions: []string{}}}
	left, err := g.leftovers(ctx)
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	nets, err := c.ListNetworks(ctx)
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	procs := c.pluginScan()
	kept := map[string]bool{} // pins of peers that stay
	for ni := range nets {
		n := &nets[ni]
		cfg, err := loadConfig(n)
		if err != nil {
			g.errs = append(g.errs, err)
			continue
		}
		known := g.reapStale(ctx, n, procs, kept)
		g.deleteUnrecorded(ctx, n, cfg, left.cached[n.Name], known)
		if !c.private(n) {
			continue
		}
		g.releaseUnrecorded(ctx, n, left.reserved[n.Name], known)
		if n.CNIVersion == "1.1.0" && !dryRun {
			if err := c.pluginGC(ctx, n.Name, cfg); err != nil {
				g.errs = append(g.errs, fmt.Errorf("gc: CNI GC of %s: %w", n.Name, err))
			}
		}
	}
	g.removeOrphanPins(ctx, kept)
	drains, err := c.gcDrains(ctx, dryRun)
	g.rep.Actions = append(g.rep.Actions, drains...)
	if err != nil {
		g.errs = append(g.errs, err)
	}
	return g.rep, joinErrors(g.errs...)
}

// gcRun is one gc's report and errors.
type gcRun struct {
	c      *Controller
	dryRun bool
	rep    *api.Report
	errs   []error
}

func (g *gcRun) say(format string, a ...any) {
	line := fmt.Sprintf(format, a...)
	if g.dryRun {
		line = "would " + line
	}
	g.rep.Actions = append(g.rep.Actions, line)
}

// leftover is what plugins hold, per network.
type leftover struct {
	reserved map[string][]reservation
	cached   map[string][]cni.RuntimeConf
}

func (g *gcRun) leftovers(ctx context.Context) (*leftover, error) {
	nets, err := g.c.ListNetworks(ctx)
	if err != nil {
		return nil, err
	}
	l := &leftover{reserved: map[string][]reservation{}, cached: map[string][]cni.RuntimeConf{}}
	for _, n := range nets {
		l.reserved[n.Name] = hostLocalReservations(&n)
		l.cached[n.Name], _ = g.c.k.cni.Cached(n.Name)
	}
	return l, nil
}

// reapStale disconnects a network's stale peers and returns the
// attachments its records explain (CNI container ID/ifname), which steps 3
// and 4 leave alone.
func (g *gcRun) reapStale(ctx context.Context, n *api.Network, procs *plugins, kept map[string]bool) map[string]bool {
	known := map[string]bool{}
	for pi := range n.Peers {
		p := &n.Peers[pi]
		known[api.CNIContainerID(p.ContainerID)+"/"+p.IfName] = true // kept, or cleaned by reap
		why := g.c.stale(p, procs)
		if why == "" {
			kept[filepath.Base(p.Netns)] = true
			continue
		}
		line := fmt.Sprintf("disconnect %s from %s (%s)", p.ContainerID, n.Name, why)
		if len(p.IPs) > 0 {
			line += ": " + strings.Join(p.IPs, ", ")
		}
		if g.dryRun {
			g.say("%s", line)
			continue
		}
		done, err := g.c.reap(ctx, n, p)
		if done {
			g.say("%s", line)
		}
		if err != nil {
			g.errs = append(g.errs, fmt.Errorf("gc %s on %s: %w", p.ContainerID, n.Name, err))
		}
	}
	return known
}

// deleteUnrecorded DELs attachments circuit's libcni cache holds that no
// record explains (a connect killed between its ADD and its record). Each
// is first claimed with a record of its own, so the plugins run without
// the datastore's lock while no connect of the same attachment can start.
func (g *gcRun) deleteUnrecorded(ctx context.Context, n *api.Network, cfg *cni.Config, cached []cni.RuntimeConf, known map[string]bool) {
	for _, rc := range cached {
		key := rc.ContainerID + "/" + rc.IfName
		if known[key] {
			continue
		}
		known[key] = true // its reservation goes with it
		line := fmt.Sprintf("delete unrecorded CNI attachment %s/%s on %s", rc.ContainerID, rc.IfName, n.Name)
		if g.dryRun {
			g.say("%s", line)
			continue
		}
		claim, err := g.c.claimUnrecorded(ctx, n.Name, rc)
		if err != nil {
			g.errs = append(g.errs, fmt.Errorf("gc: %s: %w", line, err))
			continue
		}
		if claim == nil {
			continue // a record explains it now
		}
		g.say("%s", line)
		if !g.c.k.ns.IsNetns(rc.Netns) {
			rc.Netns = ""
		}
		if err := g.c.release(ctx, cfg, rc); err != nil {
			g.errs = append(g.errs, fmt.Errorf("gc: DEL %s on %s: %w", rc.ContainerID, n.Name, err))
		}
		if err := g.c.forget(context.WithoutCancel(ctx), claim); err != nil {
			g.errs = append(g.errs, err)
		}
	}
}

// claimUnrecorded records that this process is removing an attachment no
// record explains, unless one does now; it returns the claim, or nil. A
// gc killed before forgetting it leaves an interrupted disconnect that the
// next gc finishes.
func (c *Controller) claimUnrecorded(ctx context.Context, network string, rc cni.RuntimeConf) (*api.Peer, error) {
	self := c.k.procs.Self()
	claim := &api.Peer{Network: network, ContainerID: rc.ContainerID, IfName: rc.IfName, State: api.PeerDisconnecting,
		Owner: &self, ConnectedAt: time.Now().UTC(), Netns: c.pinPath(network, rc.ContainerID, rc.IfName)}
	err := c.store.Update(ctx, func(tx ds.Tx) error {
		peers, err := tx.ListPeers(network)
		if err != nil {
			return err
		}
		for _, p := range peers {
			if api.CNIContainerID(p.ContainerID) == rc.ContainerID && p.IfName == rc.IfName {
				claim = nil
				return nil
			}
		}
		return tx.PutPeer(claim)
	})
	return claim, err
}

// forget deletes a record this process holds, if it still does.
func (c *Controller) forget(ctx context.Context, p *api.Peer) error {
	return c.store.Update(ctx, func(tx ds.Tx) error {
		cur, err := tx.GetPeer(p.Network, p.ContainerID, p.IfName)
		if errors.Is(err, api.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if !sameOwner(cur.Owner, p.Owner) || !cur.ConnectedAt.Equal(p.ConnectedAt) {
			return nil // not ours any more
		}
		return tx.DeletePeer(p.Network, p.ContainerID, p.IfName)
	})
}

// releaseUnrecorded removes host-local reservations no record explains.
func (g *gcRun) releaseUnrecorded(ctx context.Context, n *api.Network, reserved []reservation, known map[string]bool) {
	for _, r := range reserved {
		if known[r.containerID+"/"+r.ifname] || (r.ifname == "" && knownID(known, r.containerID)) {
			continue
		}
		if !r.held() {
			continue // released by a DEL above, or by its owner meanwhile
		}
		if g.dryRun {
			g.say("release %s on %s (reserved for %s, which circuit does not know)", filepath.Base(r.path), n.Name, r.containerID)
			continue
		}
		err := g.c.unrecorded(ctx, n.Name, r.containerID, r.ifname, func() error {
			if !r.held() {
				return nil // the address went to another container meanwhile
			}
			g.say("release %s on %s (reserved for %s, which circuit does not know)", filepath.Base(r.path), n.Name, r.containerID)
			if err := os.Remove(r.path); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			return nil
		})
		if err != nil {
			g.errs = append(g.errs, err)
		}
	}
}

// removeOrphanPins removes pins no record points to.
func (g *gcRun) removeOrphanPins(ctx context.Context, kept map[string]bool) {
	pins, _ := filepath.Glob(filepath.Join(g.c.cfg.StateDir, "netns", "*"))
	for _, pin := range pins {
		if kept[filepath.Base(pin)] || g.c.pinInUse(ctx, pin) {
			continue
		}
		g.say("remove netns pin %s", filepath.Base(pin))
		if !g.dryRun {
			if err := g.c.k.ns.Unpin(pin); err != nil {
				g.errs = append(g.errs, err)
			}
		}
	}
}

// unrecorded runs remove while holding the datastore's write lock, unless
// the network now has a record for the attachment (cniID is the CNI
// container ID; ifname "" matches any of the container's). A connect
// records its intent before its ADD, so nothing a connect is making can
// slip between that check and the removal.
func (c *Controller) unrecorded(ctx context.Context, network, cniID, ifname string, remove func() error) error {
	var rerr error
	err := c.store.Update(ctx, func(tx ds.Tx) error {
		rerr = nil
		peers, err := tx.ListPeers(network)
		if err != nil {
			return err
		}
		for _, p := range peers {
			if api.CNIContainerID(p.ContainerID) == cniID && (ifname == "" || p.IfName == ifname) {
				return nil
			}
		}
		rerr = remove()
		return nil
	})
	return joinErrors(err, rerr)
}

// errGCRunning makes a connect wait: the plugins' GC of its network runs.
var errGCRunning = errors.New("the plugins' GC of the network is running")

// pluginGC asks libcni and the plugins (CNI 1.1 GC) to drop every
// attachment of a network but those recorded, in any state. It marks the
// network while the plugins run, without holding the datastore's lock:
// connects wait for the mark to go (see Connect), so none can record an
// attachment the valid list misses and then have it torn down.
func (c *Controller) pluginGC(ctx context.Context, network string, cfg *cni.Config) error {
	self := c.k.procs.Self()
	var valid []cni.RuntimeConf
	err := c.store.Update(ctx, func(tx ds.Tx) error {
		n, err := tx.GetNetwork(network)
		if err != nil {
			return err
		}
		if n.GC != nil && c.ownerRuns(n.GC) {
			return api.Errorf(api.ErrBusy, "another circuit process (pid %d) runs the plugins' GC of %s", n.GC.PID, network)
		}
		peers, err := tx.ListPeers(network)
		if err != nil {
			return err
		}
		valid = valid[:0]
		for _, p := range peers {
			valid = append(valid, runtimeConf(&p, ""))
		}
		n.GC = &self
		return tx.PutNetwork(n)
	})
	if err != nil {
		return err
	}
	gcErr := c.k.cni.GC(ctx, cfg, valid)
	err = c.store.Update(context.WithoutCancel(ctx), func(tx ds.Tx) error {
		n, err := tx.GetNetwork(network)
		if err != nil || !sameOwner(n.GC, &self) {
			return err
		}
		n.GC = nil
		return tx.PutNetwork(n)
	})
	return joinErrors(gcErr, err)
}

func knownID(known map[string]bool, id string) bool {
	for k := range known {
		if strings.HasPrefix(k, id+"/") {
			return true
		}
	}
	return false
}

// pinInUse re-reads the records, so a pin made by a connect that started
// during gc is left alone.
func (c *Controller) pinInUse(ctx context.Context, pin string) bool {
	used := true
	c.store.View(ctx, func(tx ds.Tx) error {
		peers, err := tx.ListPeers("")
		if err != nil {
			return err
		}
		used = false
		for _, p := range peers {
			if p.Netns == pin {
				used = true
			}
		}
		return nil
	})
	return used
}

type reservation struct {
	path, containerID, ifname string
}

// held reports whether the reservation file still exists and still names
// the container (and interface) it named when gc listed it.
func (r reservation) held() bool {
	b, err := os.ReadFile(r.path)
	if err != nil {
		return false
	}
	id, ifname := parseReservation(b)
	return id == r.containerID && ifname == r.ifname
}

func parseReservation(b []byte) (containerID, ifname string) {
	f := strings.Split(strings.TrimSpace(string(b)), "\n")
	containerID = strings.TrimSpace(f[0])
	if len(f) > 1 {
		ifname = strings.TrimSpace(f[1])
	}
	return containerID, ifname
}

// hostLocalReservations lists host-local's reservation files of a network:
// <dataDir>/<network>/<ip> holding "<containerID>\r\n<ifname>".
func hostLocalReservations(n *api.Network) []reservation {
	dir := hostLocalDir(n)
	if dir == "" {
		return nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []reservation
	for _, e := range entries {
		if net.ParseIP(e.Name()) == nil {
			continue // lock, last_reserved_ip.N
		}
		path := filepath.Join(dir, e.Name())
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		r := reservation{path: path}
		r.containerID, r.ifname = parseReservation(b)
		out = append(out, r)
	}
	return out
}

// private reports whether a network's plugin state (host-local's data
// directory) is circuit's alone: under its state dir.
func (c *Controller) private(n *api.Network) bool {
	dir := hostLocalDir(n)
	return dir != "" && strings.HasPrefix(dir, c.cfg.StateDir+string(filepath.Separator))
}

// hostLocalDir finds where host-local keeps a network's reservations, or ""
// when the network does not use host-local.
func hostLocalDir(n *api.Network) string {
	var conf struct {
		IPAM    *ipamConf `json:"ipam"`
		Plugins []struct {
			IPAM *ipamConf `json:"ipam"`
		} `json:"plugins"`
	}
	if json.Unmarshal(n.Config, &conf) != nil {
		return ""
	}
	ipam := conf.IPAM
	for _, p := range conf.Plugins {
		if ipam == nil && p.IPAM != nil {
			ipam = p.IPAM
		}
	}
	if ipam == nil || ipam.Type != "host-local" {
		return ""
	}
	dataDir := ipam.DataDir
	if dataDir == "" {
		dataDir = "/var/lib/cni/networks"
	}
	return filepath.Join(dataDir, n.Name)
}

type ipamConf struct {
	Type    string `json:"type"`
	DataDir string `json:"dataDir"`
}
