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
	"time"

	"github.com/circuit-cni/circuit/controller"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/pkg/cni"
	"github.com/circuit-cni/circuit/pkg/netns"
)

// connectGrace is how long a peer may stay "connecting" while a circuit
// process that could be making it still runs; a CNI ADD takes milliseconds.
const connectGrace = 2 * time.Minute

// alive reports whether a peer's container still runs in the namespace
// circuit pinned for it.
func alive(p *controller.Peer) bool {
	return netns.IsNetns(p.Netns) && netns.Same(p.Netns, netns.ProcPath(p.PID))
}

// stale reports why gc or restore should remove a peer, or "" to keep it.
// A "connecting" or "disconnecting" record is work in progress while a
// circuit process that may be doing it, or a CNI plugin working on it,
// runs (and a connect, for connectGrace at most); a circuit killed
// part-way leaves one that nothing will finish. The caller claims a stale
// peer before removing it (see claim).
func (c *Controller) stale(p *controller.Peer, now time.Time, procs *procScan) string {
	switch {
	case p.State == controller.PeerConnecting && now.Sub(p.ConnectedAt) > connectGrace:
		return "an interrupted connect"
	case p.State == controller.PeerConnecting && !procs.mayRun(c.cfg.StateDir, p):
		return "an interrupted connect"
	case p.State == controller.PeerDisconnecting && !procs.mayRun(c.cfg.StateDir, p):
		return "an interrupted disconnect"
	case p.State == controller.PeerConnecting, p.State == controller.PeerDisconnecting:
		return "" // in progress
	case !alive(p):
		return "its container is gone"
	}
	return ""
}

// claim marks a peer "disconnecting" if its record is still the one the
// caller read, and reports whether it did. A connect that finished (or
// rolled back) since, or another gc, restore or disconnect that took the
// peer first, changed the record; a later connect of the same attachment
// has another ConnectedAt. The record is read before the process scan, so
// an unchanged "connecting" record here was written by a process that the
// scan found gone.
func (c *Controller) claim(ctx context.Context, p *controller.Peer) (bool, error) {
	ok := false
	err := c.store.Update(ctx, func(tx ds.Tx) error {
		q, err := tx.GetPeer(p.Network, p.ContainerID, p.IfName)
		if errors.Is(err, controller.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if q.State != p.State || !q.ConnectedAt.Equal(p.ConnectedAt) {
			return nil
		}
		q.State = controller.PeerDisconnecting
		ok = true
		return tx.PutPeer(q)
	})
	return ok && err == nil, err
}

// procScan is what /proc says about processes that may be connecting a
// container: circuit processes other than this one, with the state dirs
// they use, and the attachments CNI plugins are working on. A circuit
// killed during a connect leaves its plugins running, orphaned, until
// they finish their ADD; deleting the attachment under them would leave
// whatever they make after.
//
// It is taken once, lazily, after the records were read: a "connecting"
// record read before the scan was written by a process started before it,
// so if no such process shows, its writer is dead or done.
type procScan struct {
	done     bool
	unsure   bool     // cannot see every process: assume a connect runs
	circuits []string // state dirs of other circuit processes ("" = unknown)
	plugins  map[string]bool
}

// initPidNS is the inode of the initial PID namespace (PROC_PID_INIT_INO).
const initPidNS = "pid:[4026531836]"

func (s *procScan) scan() {
	s.done = true
	s.plugins = map[string]bool{}
	if ns, err := os.Readlink("/proc/self/ns/pid"); err != nil || ns != initPidNS {
		s.unsure = true // processes outside our PID namespace are invisible
		return
	}
	self, _ := os.Stat("/proc/self/exe")
	entries, err := os.ReadDir("/proc")
	if err != nil {
		s.unsure = true
		return
	}
	me := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == me {
			continue
		}
		dir := filepath.Join("/proc", e.Name())
		env, _ := os.ReadFile(filepath.Join(dir, "environ"))
		vars := strings.Split(string(env), "\x00")
		if id, ns := envValue(vars, "CNI_CONTAINERID"), envValue(vars, "CNI_NETNS"); id != "" {
			s.plugins[id+"\x00"+ns] = true
		}
		exe, err := os.Readlink(filepath.Join(dir, "exe"))
		if err != nil {
			continue // a kernel thread, or gone
		}
		isCircuit := filepath.Base(strings.TrimSuffix(exe, " (deleted)")) == "circuit"
		if fi, err := os.Stat(filepath.Join(dir, "exe")); err == nil && self != nil && os.SameFile(fi, self) {
			isCircuit = true
		}
		if isCircuit {
			s.circuits = append(s.circuits, stateDirOf(dir, vars))
		}
	}
}

// mayRun reports whether a process that may be connecting or
// disconnecting p runs.
func (s *procScan) mayRun(stateDir string, p *controller.Peer) bool {
	if !s.done {
		s.scan()
	}
	if s.unsure || s.plugins[p.ContainerID+"\x00"+p.Netns] || s.plugins[p.ContainerID+"\x00"] {
		return true
	}
	for _, d := range s.circuits {
		if d == "" || sameDir(d, stateDir) {
			return true
		}
	}
	return false
}

// stateDirOf finds the state dir a circuit process uses, as its command
// line gives it (--state, else $CIRCUIT_STATE, else the default), or ""
// when that cannot be told.
func stateDirOf(dir string, env []string) string {
	b, err := os.ReadFile(filepath.Join(dir, "cmdline"))
	if err != nil {
		return ""
	}
	args := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
	var found []string
	for i := 1; i < len(args); i++ {
		a := args[i]
		switch {
		case (a == "--state" || a == "-state") && i+1 < len(args):
			found = append(found, args[i+1])
		case strings.HasPrefix(a, "--state="), strings.HasPrefix(a, "-state="):
			_, v, _ := strings.Cut(a, "=")
			found = append(found, v)
		}
	}
	if len(found) > 1 {
		return "" // the last one wins, unless one is an argument: don't guess
	}
	state := DefaultStateDir
	if len(found) == 1 {
		state = found[0]
	} else if v := envValue(env, "CIRCUIT_STATE"); v != "" {
		state = v
	}
	if !filepath.IsAbs(state) {
		cwd, err := os.Readlink(filepath.Join(dir, "cwd"))
		if err != nil {
			return ""
		}
		state = filepath.Join(cwd, state)
	}
	return filepath.Clean(state)
}

func envValue(env []string, key string) string {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, key+"="); ok {
			return v
		}
	}
	return ""
}

// sameDir compares two absolute paths, through symlinks where they resolve.
func sameDir(a, b string) bool {
	if filepath.Clean(a) == filepath.Clean(b) {
		return true
	}
	fa, errA := os.Stat(a)
	fb, errB := os.Stat(b)
	return errA == nil && errB == nil && os.SameFile(fa, fb)
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
			why := c.stale(p, now, procs)
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
	return rep, errors.Join(errs...)
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
	return errors.Join(err, rerr)
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
	return errors.Join(err, gcErr)
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
