package agent

import (
	"context"
	"encoding/json"
	"net/netip"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
)

// confirm checks the blocks the replica holds against etcd, as the agent
// starts and at every reconcile after. A block etcd gives another node
// (gc --cluster released it while this node was cut off, and someone
// claimed it) is dropped from the replica and never used here again: it is
// logged and listed in nodes/<node>.conflicts. A block etcd has no key for
// is claimed again if still free. It returns the revision of its last
// claim (0: none).
func (a *Agent) confirm(ctx context.Context, st *state) (int64, error) {
	var replicas []api.Network
	err := a.local.View(ctx, func(tx ds.Tx) error {
		all, err := tx.ListNetworks()
		for _, n := range all {
			if n.Cluster != nil && len(n.Cluster.Blocks) > 0 {
				replicas = append(replicas, n)
			}
		}
		return err
	})
	if err != nil {
		return 0, err
	}
	var last int64
	for _, n := range replicas {
		cn, ok := st.networks[n.Name]
		if !ok {
			continue // gone from etcd: the replica follows
		}
		for _, s := range n.Cluster.Blocks {
			b, err := netip.ParsePrefix(s)
			if err != nil || a.conflict(b) {
				continue
			}
			holder, ok := st.blocks[n.Name][b]
			switch {
			case ok && holder.Node == a.cfg.Node:
			case ok:
				a.addConflict(ctx, n.Name, b, holder.Node)
			default:
				rev, err := a.reclaim(ctx, cn, b)
				if err != nil {
					return last, err
				}
				last = max(last, rev)
			}
		}
	}
	return last, nil
}

// reclaim claims a block the replica holds and etcd has no key for.
func (a *Agent) reclaim(ctx context.Context, cn clusterNet, b netip.Prefix) (int64, error) {
	name, key, netKey := cn.net.Name, a.k.block(cn.net.Name, b), a.k.network(cn.net.Name)
	val, err := json.Marshal(blockValue{Node: a.cfg.Node, ClaimedAt: time.Now().UTC()})
	if err != nil {
		return 0, err
	}
	var resp *clientv3.TxnResponse
	err = a.call(ctx, "claim block "+b.String()+" of network "+name+" again", func(ctx context.Context, c *clientv3.Client) (err error) {
		resp, err = c.Txn(ctx).If(
			clientv3.Compare(clientv3.CreateRevision(key), "=", 0),
			clientv3.Compare(clientv3.CreateRevision(netKey), "=", cn.createRev),
		).Then(clientv3.OpPut(key, string(val))).Else(clientv3.OpGet(key)).Commit()
		return err
	})
	if err != nil {
		return 0, err
	}
	if resp.Succeeded {
		a.log.Warnf("block %s of network %s was in this node's replica but not in etcd: claimed it again", b, name)
		return resp.Header.Revision, nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return 0, nil // the network changed meanwhile: the next reconcile sees it
	}
	var holder blockValue
	if json.Unmarshal(kvs[0].Value, &holder) == nil && holder.Node != a.cfg.Node {
		a.addConflict(ctx, name, b, holder.Node)
	}
	return resp.Header.Revision, nil
}

// addConflict records that etcd gives b to another node: the replica drops
// it, and nodes/<node> lists it.
func (a *Agent) addConflict(ctx context.Context, network string, b netip.Prefix, holder string) {
	a.mu.Lock()
	a.conflicts[b.String()] = true
	a.mu.Unlock()
	a.log.Errorf("block %s of network %s is in this node's replica but etcd gives it to node %s: dropped from the replica and never used here again (containers with addresses in it keep them; check for duplicates)", b, network, holder)
	if err := a.putNode(ctx); err != nil {
		a.log.Warnf("record conflict in node record: %v", err)
	}
}
