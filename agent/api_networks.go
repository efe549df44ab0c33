package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/circuit-cni/circuit/agentapi"
	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/ds/record"
	"github.com/circuit-cni/circuit/pkg/cni"
)

// VNIs are handed out from a counter that never goes back, so a VNI is
// never reused: a node slow to tear down a deleted network's overlay
// never carries a new network's traffic on it.
const (
	firstVNI = 4096      // below are left to hand-made overlays
	maxVNI   = 1<<24 - 1 // VXLAN's 24 bits
)

// createNetwork makes a cluster network: one Txn writes it and its VNI,
// then this node claims its blocks, writes its replica, and answers with
// the replica (Cluster.Blocks: this node's).
func (a *Agent) createNetwork(ctx context.Context, r *http.Request) (any, error) {
	var req agentapi.CreateNetwork
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	n, err := clusterNetwork(req)
	if err != nil {
		return nil, err
	}
	if err := a.notLocal(ctx, n.Name); err != nil {
		return nil, err
	}
	netKey := a.k.network(n.Name)
	replaced := false
	rev, err := a.update(ctx, "create network "+n.Name, func(s *snap) (change, error) {
		cur, err := s.get(netKey)
		if err != nil {
			return change{}, err
		}
		if replaced = cur != nil; replaced {
			if !req.Force {
				return change{}, api.Errorf(api.ErrExists, "cluster network %s already exists (use --force to replace its configuration)", n.Name)
			}
			return a.replaceNetwork(s, n, cur.Value, cur.ModRevision)
		}
		vkv, err := s.get(a.k.vni)
		if err != nil {
			return change{}, err
		}
		vni, vniRev := firstVNI, int64(0)
		if vkv != nil {
			if vni, err = strconv.Atoi(string(vkv.Value)); err != nil {
				return change{}, fmt.Errorf("VNI counter %s holds %q, not a number", a.k.vni, vkv.Value)
			}
			vni, vniRev = max(vni, firstVNI), vkv.ModRevision
		}
		if vni > maxVNI {
			return change{}, api.Errorf(api.ErrUnsupported, "no VXLAN network identifier left: %d were handed out", maxVNI-firstVNI+1)
		}
		n.Cluster.VNI = vni
		data, err := record.EncodeNetwork(n)
		if err != nil {
			return change{}, err
		}
		ch := change{
			cmps: []clientv3.Cmp{
				clientv3.Compare(clientv3.CreateRevision(netKey), "=", 0),
				clientv3.Compare(clientv3.ModRevision(a.k.vni), "=", vniRev),
			},
			ops: []clientv3.Op{clientv3.OpPut(netKey, string(data)), clientv3.OpPut(a.k.vni, strconv.Itoa(vni+1))},
		}
		// The node that creates the network claims its first block of each
		// family in the same transaction: the other agents, which see the
		// network the moment it exists, could otherwise take every block
		// before this node's reconcile, and a connect here right after
		// the create would fail.
		claims, err := a.firstClaims(s, n)
		if err != nil {
			return change{}, err
		}
		ch.cmps = append(ch.cmps, claims.cmps...)
		ch.ops = append(ch.ops, claims.ops...)
		return ch, nil
	})
	if err != nil {
		return nil, err
	}
	if replaced {
		a.log.Infof("cluster network %s: configuration replaced (VNI %d)", n.Name, n.Cluster.VNI)
	} else {
		a.log.Infof("cluster network %s created (VNI %d)", n.Name, n.Cluster.VNI)
	}
	rerr := a.settle(ctx, rev, a.reconcileOne(ctx, n.Name))
	var out *api.Network
	err = a.local.View(ctx, func(tx ds.Tx) (err error) {
		out, err = tx.GetNetwork(n.Name)
		return err
	})
	if err != nil || out.Cluster == nil {
		if rerr != nil {
			return nil, fmt.Errorf("cluster network %s created, but not yet in this node's replica: %w", n.Name, rerr)
		}
		return nil, fmt.Errorf("cluster network %s created, but not in this node's replica: %v", n.Name, err)
	}
	if rerr != nil {
		a.log.Warnf("cluster network %s: %v (the agent retries)", n.Name, rerr)
	}
	out.Peers = []api.Peer{}
	return out, nil
}

// firstClaims claims, for a network being created, the lowest block of each
// family whose key is free.
func (a *Agent) firstClaims(s *snap, n *api.Network) (change, error) {
	cands, err := candidates(n)
	if err != nil {
		return change{}, err
	}
	val, err := json.Marshal(blockValue{Node: a.cfg.Node, ClaimedAt: time.Now().UTC()})
	if err != nil {
		return change{}, err
	}
	var ch change
	for _, f := range []family{4, 6} {
		for _, b := range cands[f] {
			key := a.k.block(n.Name, b)
			kv, err := s.get(key)
			if err != nil {
				return change{}, err
			}
			if kv != nil || a.conflict(b) {
				continue
			}
			ch.cmps = append(ch.cmps, clientv3.Compare(clientv3.CreateRevision(key), "=", 0))
			ch.ops = append(ch.ops, clientv3.OpPut(key, string(val)))
			break
		}
	}
	return ch, nil
}

// clusterNetwork checks a create request and makes the network's record
// as etcd holds it: no blocks, no node (each replica has its own).
func clusterNetwork(req agentapi.CreateNetwork) (*api.Network, error) {
	cfg, err := cni.Parse(req.Config)
	if err != nil {
		return nil, err
	}
	ranges, err := cni.IPAMRanges(req.Config)
	if err != nil {
		return nil, api.Errorf(api.ErrInvalid, "network %s: %v", cfg.Name, err)
	}
	c := api.Cluster{Overlay: req.Overlay, BlockSize: req.BlockSize, BlockSize6: req.BlockSize6}
	if err := api.ValidCluster(&c, ranges); err != nil {
		return nil, fmt.Errorf("network %s: %w", cfg.Name, err)
	}
	n := &api.Network{
		Name: cfg.Name, Type: cfg.Plugins[0], Plugins: cfg.Plugins, CNIVersion: cfg.CNIVersion, IsList: cfg.IsList,
		Config: slices.Clone(cfg.Raw), CreatedAt: time.Now().UTC(), Cluster: &c,
	}
	if _, err := candidates(n); err != nil {
		return nil, err
	}
	return n, nil
}

// replaceNetwork is create --force of an existing cluster network: a new
// configuration, the same VNI, overlay, block sizes and blocks. The blocks
// nodes hold must stay inside the new ranges.
func (a *Agent) replaceNetwork(s *snap, n *api.Network, old []byte, oldRev int64) (change, error) {
	cur, err := record.DecodeNetwork(old)
	if err != nil || cur.Cluster == nil {
		return change{}, fmt.Errorf("cluster network %s: its record in etcd does not decode: %v", n.Name, err)
	}
	c, o := n.Cluster, cur.Cluster
	if c.Overlay != o.Overlay || c.BlockSize != o.BlockSize || c.BlockSize6 != o.BlockSize6 {
		return change{}, api.Errorf(api.ErrInvalid, "cluster network %s: --force keeps the overlay and block sizes (%s, /%d, /%d): delete it to change them",
			n.Name, o.Overlay, o.BlockSize, o.BlockSize6)
	}
	c.VNI, n.CreatedAt = o.VNI, cur.CreatedAt
	cands, err := candidates(n)
	if err != nil {
		return change{}, err
	}
	held, err := s.list(a.k.netBlocks(n.Name), clientv3.WithKeysOnly())
	if err != nil {
		return change{}, err
	}
	for _, kv := range held {
		b, ok := parseBlockName(strings.TrimPrefix(string(kv.Key), a.k.netBlocks(n.Name)))
		if ok && !slices.Contains(cands[familyOf(b)], b) {
			return change{}, api.Errorf(api.ErrInUse, "cluster network %s: block %s is held by a node and is outside the new ranges", n.Name, b)
		}
	}
	data, err := record.EncodeNetwork(n)
	if err != nil {
		return change{}, err
	}
	return change{
		cmps: []clientv3.Cmp{
			clientv3.Compare(clientv3.ModRevision(a.k.network(n.Name)), "=", oldRev),
			// no block claimed since the check
			clientv3.Compare(clientv3.ModRevision(a.k.netBlocks(n.Name)), "<", s.rev+1).WithPrefix(),
		},
		ops: []clientv3.Op{clientv3.OpPut(a.k.network(n.Name), string(data))},
	}, nil
}

// notLocal refuses a name this node has a local (non-cluster) network of.
func (a *Agent) notLocal(ctx context.Context, name string) error {
	return a.local.View(ctx, func(tx ds.Tx) error {
		n, err := tx.GetNetwork(name)
		if errors.Is(err, api.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if n.Cluster == nil {
			return api.Errorf(api.ErrExists, "network %s already exists on node %s as a local network", name, a.cfg.Node)
		}
		return nil
	})
}

// settle brings this node in line after its own change at rev, once the
// watch has it: fn runs under the reconcile lock on the view.
func (a *Agent) settle(ctx context.Context, rev int64, fn func(*state) error) error {
	if err := a.lock(ctx); err != nil {
		return err
	}
	defer a.unlock()
	if err := a.waitRev(ctx, rev); err != nil {
		return err
	}
	return fn(a.view.snapshot())
}

// reconcileOne is settle's fn for one network.
func (a *Agent) reconcileOne(ctx context.Context, network string) func(*state) error {
	return func(*state) error { return a.reconcile(ctx, network) }
}

// deleteNetwork deletes a cluster network, its blocks and its VNI in one
// Txn, refused while any node has published peers on it. With force, the
// peers of lost nodes do not stop it (their records go with it); those of
// ready nodes always do.
func (a *Agent) deleteNetwork(ctx context.Context, r *http.Request) (any, error) {
	name := r.PathValue("name")
	if err := api.ValidNetworkName(name); err != nil {
		return nil, err
	}
	force := r.URL.Query().Get("force") == "1" || r.URL.Query().Get("force") == "true"
	// circuit may just have disconnected this node's peers.
	if err := a.publish(ctx, name); err != nil {
		return nil, err
	}
	netKey := a.k.network(name)
	rev, err := a.update(ctx, "delete network "+name, func(s *snap) (change, error) {
		cur, err := s.get(netKey)
		if err != nil {
			return change{}, err
		}
		if cur == nil {
			return change{}, api.Errorf(api.ErrNotFound, "cluster network %s not found", name)
		}
		peers, err := s.list(a.k.peers, clientv3.WithKeysOnly())
		if err != nil {
			return change{}, err
		}
		alive, err := s.list(a.k.alive, clientv3.WithKeysOnly())
		if err != nil {
			return change{}, err
		}
		pp, _ := a.decodePeers(peers, false)
		var ready, lost []string
		for _, node := range nodesOn(pp, name) {
			if slices.ContainsFunc(alive, func(kv *mvccpb.KeyValue) bool { return string(kv.Key) == a.k.aliveKey(node) }) {
				ready = append(ready, node)
			} else {
				lost = append(lost, node)
			}
		}
		if len(ready) > 0 {
			return change{}, api.Errorf(api.ErrInUse, "cluster network %s has peers on node(s) %s: disconnect them first", name, strings.Join(ready, ", "))
		}
		if len(lost) > 0 && !force {
			return change{}, api.Errorf(api.ErrInUse, "cluster network %s has peers on lost node(s) %s: use --force to delete it and forget them", name, strings.Join(lost, ", "))
		}
		ch := change{
			cmps: []clientv3.Cmp{
				clientv3.Compare(clientv3.ModRevision(netKey), "=", cur.ModRevision),
				// no peer published since the check
				clientv3.Compare(clientv3.ModRevision(a.k.peers), "<", s.rev+1).WithPrefix(),
			},
			ops: []clientv3.Op{clientv3.OpDelete(netKey), clientv3.OpDelete(a.k.netBlocks(name), clientv3.WithPrefix())},
		}
		for _, node := range lost {
			ch.cmps = append(ch.cmps, clientv3.Compare(clientv3.CreateRevision(a.k.aliveKey(node)), "=", 0))
			ch.ops = append(ch.ops, clientv3.OpDelete(a.k.netPeers(node, name), clientv3.WithPrefix()))
		}
		return ch, nil
	})
	if err != nil {
		return nil, err
	}
	a.log.Infof("cluster network %s deleted", name)
	if err := a.settle(ctx, rev, a.reconcileOne(ctx, name)); err != nil {
		a.log.Warnf("cluster network %s deleted; this node's replica: %v (the agent retries)", name, err)
	}
	return nil, nil
}
