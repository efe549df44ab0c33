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

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/pkg/cni"
)

// GC removes what belongs to containers that are gone: their peers (CNI
// DEL, releasing addresses), pins, libcni cache entries and host-local
// reservations circuit's records no longer explain. Live peers are never
// touched. Its steps, in order:
//
//  1. leftovers: read what plugins hold (libcni's cache, host-local's
//     reservations) before the records, so an address seen without a
//     record afterwards is truly orphaned (a connect records its intent
//     before its ADD reserves);
//  2. reapStale: disconnect stale peers (dead containers, interrupted work);
//  3. deleteUnrecorded: DEL cached attachments no record explains;
//  4. releaseUnrecorded: remove reservations no record explains;
//  5. pluginGC: CNI 1.1 GC of each network;
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
		g.releaseUnrecorded(ctx, n, left.reserved[n.Name], known)
		if n.CNIVersion == "1.1.0" && !dryRun {
			if err := c.pluginGC(ctx, n.Name, cfg); err != nil {
				g.errs = append(g.errs, fmt.Errorf("gc: CNI GC of %s: %w", n.Name, err))
			}
		}
	}
	g.removeOrphanPins(ctx, kept)
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

// deleteUnrecorded DELs attachments libcni cached that no record explains
// (a connect killed between its ADD and its record).
func (g *gcRun) deleteUnrecorded(ctx context.Context, n *api.Network, cfg *cni.Config, cached []cni.RuntimeConf, known map[string]bool) {
	for _, rc := range cached {
		key := rc.ContainerID + "/" + rc.IfName
		if known[key] {
			continue
		}
		known[key] = true // its reservation goes with it
		if g.dryRun {
			g.say("delete unrecorded CNI attachment %s/%s on %s", rc.ContainerID, rc.IfName, n.Name)
			continue
		}
		err := g.c.unrecorded(ctx, n.Name, rc.ContainerID, rc.IfName, func() error {
			g.say("delete unrecorded CNI attachment %s/%s on %s", rc.ContainerID, rc.IfName, n.Name)
			if !g.c.k.ns.IsNetns(rc.Netns) {
				rc.Netns = ""
			}
			if err := g.c.release(ctx, cfg, rc); err != nil {
				return fmt.Errorf("gc: DEL %s on %s: %w", rc.ContainerID, n.Name, err)
			}
			return nil
		})
		if err != nil {
			g.errs = append(g.errs, err)
		}
	}
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

// pluginGC asks libcni and the plugins (CNI 1.1 GC) to drop every
// attachment of a network but those recorded, in any state. It holds the
// datastore's write lock throughout, so no connect can record a peer the
// list misses and then have it torn down.
func (c *Controller) pluginGC(ctx context.Context, network string, cfg *cni.Config) error {
	var gcErr error
	err := c.store.Update(ctx, func(tx ds.Tx) error {
		peers, err := tx.ListPeers(network)
		if err != nil {
			return err
		}
		valid := make([]cni.RuntimeConf, 0, len(peers))
		for _, p := range peers {
			valid = append(valid, runtimeConf(&p, ""))
		}
		gcErr = c.k.cni.GC(ctx, cfg, valid)
		return nil
	})
	return joinErrors(err, gcErr)
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
