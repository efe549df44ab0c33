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

	"github.com/circuit-cni/circuit/controller"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/pkg/cni"
	"github.com/circuit-cni/circuit/pkg/netns"
)

// connectGrace is how long a peer may stay "connecting" before gc takes it
// for the leftover of a killed connect; a CNI ADD takes milliseconds.
const connectGrace = 2 * time.Minute

// alive reports whether a peer's container still runs in the namespace
// circuit pinned for it.
func alive(p *controller.Peer) bool {
	return netns.IsNetns(p.Netns) && netns.Same(p.Netns, netns.ProcPath(p.PID))
}

// stale reports why gc should remove a peer, or "" to keep it.
func stale(p *controller.Peer, now time.Time) string {
	switch {
	case p.State == controller.PeerDisconnecting:
		return "an interrupted disconnect"
	case p.State == controller.PeerConnecting && now.Sub(p.ConnectedAt) > connectGrace:
		return "an interrupted connect"
	case p.State == controller.PeerConnecting:
		return "" // a connect in progress
	case !alive(p):
		return "its container is gone"
	}
	return ""
}

// GC removes what belongs to containers that are gone: their attachments
// (CNI DEL, releasing addresses), pins, libcni cache entries and host-local
// reservations circuit's records no longer explain. Live peers are never
// touched.
func (c *Controller) GC(ctx context.Context, dryRun bool) (*controller.Report, error) {
	rep := &controller.Report{Actions: []string{}}
	say := func(format string, a ...any) {
		line := fmt.Sprintf(format, a...)
		if dryRun {
			line = "would " + line
		}
		rep.Actions = append(rep.Actions, line)
	}
	var errs []error

	// Reservations are read before records: a connect records its intent
	// before its ADD reserves, so an address seen here without a record
	// after is truly orphaned.
	nets, err := c.ListNetworks(ctx)
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	reserved := map[string][]reservation{}
	cached := map[string][]cni.Attachment{}
	for _, n := range nets {
		reserved[n.Name] = hostLocalReservations(&n)
		cached[n.Name], _ = c.cni.Cached(n.Name)
	}
	nets, err = c.ListNetworks(ctx)
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	now := time.Now()
	pinsKept := map[string]bool{}
	for ni := range nets {
		n := &nets[ni]
		cfg, err := c.loadConfig(n)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		known := map[string]bool{}
		var live []cni.Attachment
		for pi := range n.Peers {
			p := &n.Peers[pi]
			known[p.ContainerID+"/"+p.IfName] = true // kept, or cleaned by detach below
			why := stale(p, now)
			if why == "" {
				pinsKept[filepath.Base(p.Netns)] = true
				live = append(live, cni.Attachment{ContainerID: p.ContainerID, IfName: p.IfName})
				continue
			}
			say("disconnect %s from %s (%s): %s", p.ContainerID, n.Name, why, strings.Join(p.IPs, ", "))
			if !dryRun {
				if err := c.detach(ctx, n, p); err != nil {
					errs = append(errs, fmt.Errorf("gc %s on %s: %w", p.ContainerID, n.Name, err))
				}
			}
		}
		for _, a := range cached[n.Name] {
			if known[a.ContainerID+"/"+a.IfName] {
				continue
			}
			say("delete unrecorded CNI attachment %s/%s on %s", a.ContainerID, a.IfName, n.Name)
			known[a.ContainerID+"/"+a.IfName] = true // its reservation goes with it
			if !dryRun {
				if !netns.IsNetns(a.Netns) {
					a.Netns = ""
				}
				if err := c.cni.Del(ctx, cfg, a); err != nil {
					if err := c.cni.DelEach(ctx, cfg, a); err != nil {
						errs = append(errs, fmt.Errorf("gc: DEL %s on %s: %w", a.ContainerID, n.Name, err))
					}
				}
			}
		}
		for _, r := range reserved[n.Name] {
			if known[r.containerID+"/"+r.ifname] || (r.ifname == "" && knownID(known, r.containerID)) {
				continue
			}
			if _, err := os.Stat(r.path); err != nil {
				continue // released by a DEL above
			}
			say("release %s on %s (reserved for %s, which circuit does not know)", filepath.Base(r.path), n.Name, r.containerID)
			if !dryRun {
				if err := os.Remove(r.path); err != nil && !errors.Is(err, os.ErrNotExist) {
					errs = append(errs, err)
				}
			}
		}
		if n.CNIVersion == "1.1.0" && !dryRun {
			if err := c.cni.GC(ctx, cfg, live); err != nil {
				errs = append(errs, fmt.Errorf("gc: CNI GC of %s: %w", n.Name, err))
			}
		}
	}
	// Pins no record points to.
	pins, _ := filepath.Glob(filepath.Join(c.cfg.StateDir, "netns", "*"))
	for _, pin := range pins {
		if pinsKept[filepath.Base(pin)] || c.pinInUse(ctx, pin) {
			continue
		}
		say("remove netns pin %s", filepath.Base(pin))
		if !dryRun {
			if err := netns.Unpin(pin); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return rep, errors.Join(errs...)
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

// hostLocalReservations lists host-local's reservation files of a network:
// <dataDir>/<network>/<ip> holding "<containerID>\r\n<ifname>".
func hostLocalReservations(n *controller.Network) []reservation {
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
		f := strings.Split(strings.TrimSpace(string(b)), "\n")
		r := reservation{path: path, containerID: strings.TrimSpace(f[0])}
		if len(f) > 1 {
			r.ifname = strings.TrimSpace(f[1])
		}
		out = append(out, r)
	}
	return out
}

// hostLocalDir finds where host-local keeps a network's reservations, or ""
// when the network does not use host-local.
func hostLocalDir(n *controller.Network) string {
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
