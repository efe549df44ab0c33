package local

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/circuit-cni/circuit/controller"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/pkg/cni"
	"github.com/circuit-cni/circuit/pkg/netns"
	"github.com/circuit-cni/circuit/pkg/runc"
)

// alive reports whether a peer's container still runs in the namespace
// circuit pinned for it.
func alive(p *controller.Peer) bool {
	return netns.IsNetns(p.Netns) && netns.Same(p.Netns, netns.ProcPath(p.PID))
}

// stale reports why gc or restore should remove a peer, or "" to keep it.
// A "connecting" or "disconnecting" record is work in progress while the
// circuit process that wrote it (its Owner) runs, or while a CNI plugin
// still works on the attachment: a circuit killed during an ADD leaves its
// plugins running, and a DEL under them would leak what they make after.
// The caller claims a stale peer before removing it (see claim).
func (c *Controller) stale(p *controller.Peer, procs *procScan) string {
	switch p.State {
	case controller.PeerConnecting, controller.PeerDisconnecting:
		if ownerRuns(p.Owner) || procs.pluginRuns(p) {
			return "" // in progress
		}
		if p.State == controller.PeerConnecting {
			return "an interrupted connect"
		}
		return "an interrupted disconnect"
	case controller.PeerConnected:
		if !alive(p) {
			return "its container is gone"
		}
	}
	return ""
}

// ownerRuns reports whether the recorded owner process still runs.
func ownerRuns(o *controller.Process) bool {
	if o == nil {
		return false
	}
	start, err := runc.StartTime(o.PID)
	return err == nil && start == o.Start
}

// self is this process, as recorded in the peers it is working on.
func self() *controller.Process {
	start, _ := runc.StartTime(os.Getpid())
	return &controller.Process{PID: os.Getpid(), Start: start}
}

// claim marks a peer "disconnecting", owned by this process, if its record
// is still the one the caller read, and reports whether it did. A connect
// that finished (or rolled back) since, or another gc, restore or
// disconnect that took the peer first, changed the record; a later connect
// of the same attachment has another ConnectedAt. A record another live
// circuit process is working on is not taken either. On success p is the
// claimed record.
func (c *Controller) claim(ctx context.Context, p *controller.Peer) (bool, error) {
	if err := c.ownPin(p); err != nil {
		return false, err
	}
	me := self()
	ok := false
	err := c.store.Update(ctx, func(tx ds.Tx) error {
		q, err := tx.GetPeer(p.Network, p.ContainerID, p.IfName)
		if errors.Is(err, controller.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if q.State != p.State || !q.ConnectedAt.Equal(p.ConnectedAt) || !sameOwner(q.Owner, p.Owner) {
			return nil
		}
		if q.State != controller.PeerConnected && !sameOwner(q.Owner, me) && ownerRuns(q.Owner) {
			return nil
		}
		q.State, q.Owner = controller.PeerDisconnecting, me
		ok = true
		*p = *q
		return tx.PutPeer(q)
	})
	return ok && err == nil, err
}

func sameOwner(a, b *controller.Process) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// ownPin refuses a record whose netns is not the pin circuit makes for
// it: gc and restore unmount and delete that path, and enter it to shape
// traffic, as root.
func (c *Controller) ownPin(p *controller.Peer) error {
	if want := c.pinPath(p.Network, p.ContainerID, p.IfName); p.Netns != want {
		return controller.Errorf(controller.ErrInvalid, "the record names netns %q, not circuit's pin %s: left alone", p.Netns, want)
	}
	return nil
}

// procScan finds the attachments CNI plugins are working on, from their
// CNI_CONTAINERID environment. It is taken once, lazily, after the records
// were read.
type procScan struct {
	done    bool
	plugins map[string]bool
}

func (s *procScan) pluginRuns(p *controller.Peer) bool {
	if !s.done {
		s.done = true
		s.plugins = map[string]bool{}
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			if _, err := strconv.Atoi(e.Name()); err != nil {
				continue
			}
			env, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
			vars := strings.Split(string(env), "\x00")
			if id := envValue(vars, "CNI_CONTAINERID"); id != "" {
				s.plugins[id] = true
			}
		}
	}
	return s.plugins[p.ContainerID]
}

func envValue(env []string, key string) string {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, key+"="); ok {
			return v
		}
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
	procs := &procScan{}
	pinsKept := map[string]bool{}
	for ni := range nets {
		n := &nets[ni]
		cfg, err := c.loadConfig(n)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		known := map[string]bool{}
		for pi := range n.Peers {
			p := &n.Peers[pi]
			known[p.ContainerID+"/"+p.IfName] = true // kept, or cleaned by detach below
			why := c.stale(p, procs)
			if why == "" {
				pinsKept[filepath.Base(p.Netns)] = true
				continue
			}
			line := fmt.Sprintf("disconnect %s from %s (%s)", p.ContainerID, n.Name, why)
			if len(p.IPs) > 0 {
				line += ": " + strings.Join(p.IPs, ", ")
			}
			if dryRun {
				say("%s", line)
				continue
			}
			if claimed, err := c.claim(ctx, p); err != nil || !claimed {
				if err != nil {
					errs = append(errs, fmt.Errorf("gc %s on %s: %w", p.ContainerID, n.Name, err))
				}
				continue // changed since it was read: not ours to remove
			}
			say("%s", line)
			if err := c.detach(ctx, n, p); err != nil {
				errs = append(errs, fmt.Errorf("gc %s on %s: %w", p.ContainerID, n.Name, err))
			}
		}
		// What no record explains is removed under the datastore's write
		// lock, after checking the records again: a connect records its
		// intent before its ADD, so nothing a connect is making can slip
		// between that check and the removal.
		for _, a := range cached[n.Name] {
			key := a.ContainerID + "/" + a.IfName
			if known[key] {
				continue
			}
			known[key] = true // its reservation goes with it
			if dryRun {
				say("delete unrecorded CNI attachment %s/%s on %s", a.ContainerID, a.IfName, n.Name)
				continue
			}
			err := c.unrecorded(ctx, n.Name, a.ContainerID, a.IfName, func() error {
				say("delete unrecorded CNI attachment %s/%s on %s", a.ContainerID, a.IfName, n.Name)
				if !netns.IsNetns(a.Netns) {
					a.Netns = ""
				}
				if err := c.cni.Del(ctx, cfg, a); err != nil {
					if err := c.cni.DelEach(ctx, cfg, a); err != nil {
						return fmt.Errorf("gc: DEL %s on %s: %w", a.ContainerID, n.Name, err)
					}
				}
				return nil
			})
			if err != nil {
				errs = append(errs, err)
			}
		}
		for _, r := range reserved[n.Name] {
			if known[r.containerID+"/"+r.ifname] || (r.ifname == "" && knownID(known, r.containerID)) {
				continue
			}
			if !r.held() {
				continue // released by a DEL above, or by its owner meanwhile
			}
			if dryRun {
				say("release %s on %s (reserved for %s, which circuit does not know)", filepath.Base(r.path), n.Name, r.containerID)
				continue
			}
			err := c.unrecorded(ctx, n.Name, r.containerID, r.ifname, func() error {
				if !r.held() {
					return nil // the address went to another container meanwhile
				}
				say("release %s on %s (reserved for %s, which circuit does not know)", filepath.Base(r.path), n.Name, r.containerID)
				if err := os.Remove(r.path); err != nil && !errors.Is(err, os.ErrNotExist) {
					return err
				}
				return nil
			})
			if err != nil {
				errs = append(errs, err)
			}
		}
		if n.CNIVersion == "1.1.0" && !dryRun {
			if err := c.pluginGC(ctx, n.Name, cfg); err != nil {
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
	return rep, joinErrors(errs...)
}

// unrecorded runs remove while holding the datastore's write lock, unless
// the network now has a record for the attachment (ifname "" matches any
// of the container's).
func (c *Controller) unrecorded(ctx context.Context, network, containerID, ifname string, remove func() error) error {
	var rerr error
	err := c.store.Update(ctx, func(tx ds.Tx) error {
		peers, err := tx.ListPeers(network)
		if err != nil {
			return err
		}
		for _, p := range peers {
			if p.ContainerID == containerID && (ifname == "" || p.IfName == ifname) {
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
// datastore's write lock throughout, so no connect can record an
// attachment the list misses and then have it torn down.
func (c *Controller) pluginGC(ctx context.Context, network string, cfg *cni.Config) error {
	var gcErr error
	err := c.store.Update(ctx, func(tx ds.Tx) error {
		peers, err := tx.ListPeers(network)
		if err != nil {
			return err
		}
		valid := make([]cni.Attachment, 0, len(peers))
		for _, p := range peers {
			valid = append(valid, cni.Attachment{ContainerID: p.ContainerID, IfName: p.IfName})
		}
		gcErr = c.cni.GC(ctx, cfg, valid)
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
		r := reservation{path: path}
		r.containerID, r.ifname = parseReservation(b)
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

// joinErrors is errors.Join on one line ("; " between the errors): the CLI
// prints an error as one line on stderr.
func joinErrors(errs ...error) error {
	var j joined
	for _, err := range errs {
		if err != nil {
			j = append(j, err)
		}
	}
	if len(j) == 0 {
		return nil
	}
	return j
}

type joined []error

func (j joined) Error() string {
	msgs := make([]string, len(j))
	for i, err := range j {
		msgs[i] = strings.ReplaceAll(err.Error(), "\n", "; ")
	}
	return strings.Join(msgs, "; ")
}

func (j joined) Unwrap() []error { return j }
