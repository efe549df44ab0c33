package agent

import (
	"context"
	"encoding/json"
	"maps"
	"net/netip"
	"strings"
	"sync"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds/record"
)

// clusterNet is a cluster network as etcd holds it, and the revision its
// key was created at: a block claim compares it, so no block is ever
// claimed for a network deleted (or deleted and made again) meanwhile.
type clusterNet struct {
	net       api.Network
	createRev int64
}

// state is what the agent knows of etcd at one revision: the cluster's
// networks and services, who holds which block, the nodes, and where every
// node's containers are (for services' container targets).
type state struct {
	rev      int64
	networks map[string]clusterNet
	services map[string]api.Service
	blocks   map[string]map[netip.Prefix]blockValue // network -> block -> holder
	nodes    map[string]nodeValue
	alive    map[string]bool
	peers    map[peerKey][]netip.Addr // a published peer's addresses
}

// peerKey names a published peer: P/peers/<node>/<network>/<container>/<ifname>.
type peerKey struct{ node, network, container, ifname string }

func newState(rev int64) *state {
	return &state{rev: rev, networks: map[string]clusterNet{}, services: map[string]api.Service{},
		blocks: map[string]map[netip.Prefix]blockValue{}, nodes: map[string]nodeValue{}, alive: map[string]bool{},
		peers: map[peerKey][]netip.Addr{}}
}

// clone copies st deep enough that the view may change on meanwhile.
func (st *state) clone() *state {
	c := &state{rev: st.rev, networks: maps.Clone(st.networks), services: maps.Clone(st.services),
		blocks: make(map[string]map[netip.Prefix]blockValue, len(st.blocks)), nodes: maps.Clone(st.nodes), alive: maps.Clone(st.alive),
		peers: maps.Clone(st.peers)}
	for n, b := range st.blocks {
		c.blocks[n] = maps.Clone(b)
	}
	return c
}

// held lists the blocks node holds of network.
func (st *state) held(network, node string) []netip.Prefix {
	var out []netip.Prefix
	for b, v := range st.blocks[network] {
		if v.Node == node {
			out = append(out, b)
		}
	}
	return out
}

// view is the agent's copy of etcd: filled by a listing at one revision,
// then kept current by the watch. Waiters learn when it reaches a
// revision (the agent's own writes, seen back through the watch).
type view struct {
	k   keys
	log *logrus.Entry

	mu      sync.Mutex
	st      *state        // nil until the first listing
	changed chan struct{} // closed and replaced on every change
}

func newView(k keys, log *logrus.Entry) *view {
	return &view{k: k, log: log, changed: make(chan struct{})}
}

// reset replaces the view with a listing made at rev.
func (v *view) reset(rev int64, kvs []*mvccpb.KeyValue) {
	st := newState(rev)
	for _, kv := range kvs {
		v.put(st, kv)
	}
	v.mu.Lock()
	v.st = st
	v.notify()
	v.mu.Unlock()
}

// apply brings the view to rev with a watch response's events. Events the
// view's listing already holds are skipped. It reports whether any event
// may need a reconcile: a network, a service or a block changed (not a
// node's heartbeat, nor peers: the services loop follows those).
func (v *view) apply(rev int64, events []*mvccpb.Event) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.st == nil {
		return false
	}
	relevant := false
	for _, ev := range events {
		if ev.Kv.ModRevision <= v.st.rev {
			continue
		}
		key := string(ev.Kv.Key)
		for _, dir := range []string{v.k.networks, v.k.services, v.k.blocks} {
			relevant = relevant || strings.HasPrefix(key, dir)
		}
		if ev.Type == mvccpb.DELETE {
			v.del(v.st, string(ev.Kv.Key))
		} else {
			v.put(v.st, ev.Kv)
		}
	}
	if rev > v.st.rev {
		v.st.rev = rev
	}
	v.notify()
	return relevant
}

func (v *view) notify() {
	close(v.changed)
	v.changed = make(chan struct{})
}

// changes is closed at the view's next change.
func (v *view) changes() <-chan struct{} {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.changed
}

// snapshot is a copy of the view; nil before the first listing.
func (v *view) snapshot() *state {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.st == nil {
		return nil
	}
	return v.st.clone()
}

// waitRev waits until the view has seen revision rev.
func (v *view) waitRev(ctx context.Context, rev int64) error {
	for {
		v.mu.Lock()
		done := v.st != nil && v.st.rev >= rev
		ch := v.changed
		v.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// put decodes one key into st; what does not decode is logged and left
// out, so one bad record does not stop the node.
func (v *view) put(st *state, kv *mvccpb.KeyValue) {
	key := string(kv.Key)
	bad := func(err error) { v.log.Warnf("ignoring etcd key %s: %v", key, err) }
	if e := split(key, v.k.networks); len(e) == 1 {
		n, err := record.DecodeNetwork(kv.Value)
		switch {
		case err != nil:
			bad(err)
		case n.Name != e[0] || n.Cluster == nil:
			bad(api.Errorf(api.ErrInvalid, "not the cluster network %s", e[0]))
		default:
			st.networks[n.Name] = clusterNet{net: *n, createRev: kv.CreateRevision}
		}
	} else if e := split(key, v.k.services); len(e) == 1 {
		s, err := record.DecodeService(kv.Value)
		if err != nil || s.Name != e[0] {
			bad(api.Errorf(api.ErrInvalid, "not the service %s (%v)", e[0], err))
			return
		}
		st.services[s.Name] = *s
	} else if e := split(key, v.k.blocks); len(e) == 2 {
		b, ok := parseBlockName(e[1])
		var val blockValue
		if err := json.Unmarshal(kv.Value, &val); err != nil || !ok || val.Node == "" {
			bad(api.Errorf(api.ErrInvalid, "not a block holder (%v)", err))
			return
		}
		if st.blocks[e[0]] == nil {
			st.blocks[e[0]] = map[netip.Prefix]blockValue{}
		}
		st.blocks[e[0]][b] = val
	} else if e := split(key, v.k.nodes); len(e) == 1 {
		var val nodeValue
		if err := json.Unmarshal(kv.Value, &val); err != nil {
			bad(err)
			return
		}
		val.Name = e[0]
		st.nodes[e[0]] = val
	} else if e := split(key, v.k.alive); len(e) == 1 {
		st.alive[e[0]] = true
	} else if e := split(key, v.k.peers); len(e) == 4 {
		p, err := record.DecodePeer(kv.Value)
		if err != nil {
			bad(err)
			return
		}
		var addrs []netip.Addr
		for _, ip := range p.IPs {
			if pr, err := netip.ParsePrefix(ip); err == nil {
				addrs = append(addrs, pr.Addr())
			}
		}
		st.peers[peerKey{e[0], e[1], e[2], e[3]}] = addrs
	}
}

func (v *view) del(st *state, key string) {
	if e := split(key, v.k.networks); len(e) == 1 {
		delete(st.networks, e[0])
	} else if e := split(key, v.k.services); len(e) == 1 {
		delete(st.services, e[0])
	} else if e := split(key, v.k.blocks); len(e) == 2 {
		if b, ok := parseBlockName(e[1]); ok {
			delete(st.blocks[e[0]], b)
			if len(st.blocks[e[0]]) == 0 {
				delete(st.blocks, e[0])
			}
		}
	} else if e := split(key, v.k.nodes); len(e) == 1 {
		delete(st.nodes, e[0])
	} else if e := split(key, v.k.alive); len(e) == 1 {
		delete(st.alive, e[0])
	} else if e := split(key, v.k.peers); len(e) == 4 {
		delete(st.peers, peerKey{e[0], e[1], e[2], e[3]})
	}
}
