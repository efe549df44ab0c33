package local

import (
	"context"
	"errors"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/pkg/netns"
)

// gc and restore share how a peer is judged and removed: stale says why a
// peer should go, reap claims it (so no two processes tear down one peer,
// and a record changed since it was read is left alone) and detaches it.

// alive reports whether a peer's container still runs in the namespace
// circuit pinned for it.
func (c *Controller) alive(p *api.Peer) bool {
	return c.k.ns.IsNetns(p.Netns) && c.k.ns.Same(p.Netns, netns.ProcPath(p.PID))
}

// plugins is the set of CNI_CONTAINERIDs CNI plugins are working on, read
// once, lazily, after the records were read.
type plugins struct {
	read func() map[string]bool
	ids  map[string]bool
}

func (c *Controller) pluginScan() *plugins { return &plugins{read: c.k.procs.PluginContainers} }

func (s *plugins) running(p *api.Peer) bool {
	if s.ids == nil {
		s.ids = s.read()
	}
	return s.ids[api.CNIContainerID(p.ContainerID)]
}

// stale reports why gc or restore should remove a peer, or "" to keep it.
// A "connecting" or "disconnecting" record is work in progress while the
// circuit process that wrote it (its Owner) runs, or while a CNI plugin
// still works on it: a circuit killed during an ADD leaves its plugins
// running, and a DEL under them would leak what they make after.
func (c *Controller) stale(p *api.Peer, procs *plugins) string {
	switch p.State {
	case api.PeerConnecting, api.PeerDisconnecting, api.PeerUndoFailed:
		if c.ownerRuns(p.Owner) || procs.running(p) {
			return "" // in progress
		}
		switch p.State {
		case api.PeerConnecting:
			return "an interrupted connect"
		case api.PeerUndoFailed:
			return "an undo that failed"
		}
		return "an interrupted disconnect"
	case api.PeerConnected:
		if !c.alive(p) {
			return "its container is gone"
		}
	}
	return ""
}

// ownerRuns reports whether the recorded owner process still runs.
func (c *Controller) ownerRuns(o *api.Process) bool {
	if o == nil {
		return false
	}
	start, err := c.k.procs.StartTime(o.PID)
	return err == nil && start == o.Start
}

// claim marks a peer "disconnecting", owned by this process, if its record
// is still the one the caller read, and reports whether it did. A connect
// that finished (or rolled back) since, or another gc, restore or
// disconnect that took the peer first, changed the record; a later connect
// of the same peer has another ConnectedAt. A record another live circuit
// process is working on is not taken either. On success p is the claimed
// record.
func (c *Controller) claim(ctx context.Context, p *api.Peer) (bool, error) {
	if err := c.ownPin(p); err != nil {
		return false, err
	}
	me := c.k.procs.Self()
	ok := false
	var claimed api.Peer
	err := c.store.Update(ctx, func(tx ds.Tx) error {
		ok = false
		q, err := tx.GetPeer(p.Network, p.ContainerID, p.IfName)
		if errors.Is(err, api.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if q.State != p.State || !q.ConnectedAt.Equal(p.ConnectedAt) || !sameOwner(q.Owner, p.Owner) {
			return nil
		}
		if q.State != api.PeerConnected && !sameOwner(q.Owner, &me) && c.ownerRuns(q.Owner) {
			return nil
		}
		q.State, q.Owner = api.PeerDisconnecting, &me
		ok, claimed = true, *q
		return tx.PutPeer(q)
	})
	if ok && err == nil {
		*p = claimed
	}
	return ok && err == nil, err
}

func sameOwner(a, b *api.Process) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// ownPin refuses a record whose netns is not the pin circuit makes for
// it: gc and restore unmount and delete that path, and enter it to shape
// traffic, as root.
func (c *Controller) ownPin(p *api.Peer) error {
	if want := c.pinPath(p.Network, p.ContainerID, p.IfName); p.Netns != want {
		return api.Errorf(api.ErrInvalid, "the record names netns %q, not circuit's pin %s: left alone", p.Netns, want)
	}
	return nil
}

// reap removes a stale peer: claimed, then detached. It reports false
// when the record changed since it was read and was left alone.
func (c *Controller) reap(ctx context.Context, n *api.Network, p *api.Peer) (bool, error) {
	claimed, err := c.claim(ctx, p)
	if err != nil || !claimed {
		return false, err
	}
	return true, c.detach(ctx, n, p)
}

// joinErrors is api.Join: errors on one line.
var joinErrors = api.Join
