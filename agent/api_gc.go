package agent

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/circuit-cni/circuit/agentapi"
	"github.com/circuit-cni/circuit/api"
)

// gc is `circuit gc --cluster`: the blocks of nodes lost longer than the
// grace (no alive key, and lastSeen older than it) are released, except on
// networks where the node has published peers: their containers may still
// hold addresses from any of its blocks there. A lost node's record is
// forgotten once it holds no block. Each release is its own Txn, which
// fails if the block, the node's record or its peers changed since read,
// or if the node came back; a live node's block is never released.
func (a *Agent) gc(ctx context.Context, r *http.Request) (any, error) {
	var req agentapi.GC
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	grace := time.Duration(req.Grace)
	if grace < 0 {
		return nil, api.Errorf(api.ErrInvalid, "grace %s must not be negative", grace)
	}
	cl, err := a.readCluster(ctx)
	if err != nil {
		return nil, err
	}
	peers, _, err := a.peersOf(ctx, false)
	if err != nil {
		return nil, err
	}
	report := api.Report{Actions: []string{}}
	now := time.Now()
	for _, name := range cl.nodeNames {
		// Without its record there is no telling how long a node was
		// lost: its blocks are kept.
		v, known := cl.nodes[name]
		if cl.alive[name] || !known || now.Sub(v.LastSeen) <= grace {
			continue
		}
		since := v.LastSeen.UTC().Format(time.RFC3339)
		held := cl.blocks[name]
		slices.SortFunc(held, func(x, y heldBlock) int { return comparePrefix(x.block, y.block) })
		kept := 0
		for _, h := range held {
			if slices.Contains(nodesOn(peers, h.network), name) {
				kept++
				continue
			}
			action := fmt.Sprintf("release block %s of network %s (node %s, lost since %s)", h.block, h.network, name, since)
			if !req.DryRun {
				ok, err := a.release(ctx, name, h, cl.nodeRevs[name])
				if err != nil {
					return nil, fmt.Errorf("%s: %w", action, err)
				}
				if !ok {
					kept++
					a.log.Infof("gc: kept block %s of network %s: node %s or the block changed meanwhile", h.block, h.network, name)
					continue
				}
				a.log.Info(action)
			}
			report.Actions = append(report.Actions, action)
		}
		if kept > 0 {
			continue
		}
		action := fmt.Sprintf("forget node %s (lost since %s; it holds no block)", name, since)
		if !req.DryRun {
			ok, err := a.forgetNode(ctx, name, cl.nodeRevs[name])
			if err != nil {
				return nil, fmt.Errorf("%s: %w", action, err)
			}
			if !ok {
				continue
			}
			a.log.Info(action)
		}
		report.Actions = append(report.Actions, action)
	}
	if req.DryRun { // as circuit's own gc --dry-run says it
		for i := range report.Actions {
			report.Actions[i] = "would " + report.Actions[i]
		}
	}
	return report, nil
}

// release deletes a lost node's block if nothing changed since it was read:
// the block, the node's record, its peers on the network, its absence.
func (a *Agent) release(ctx context.Context, node string, h heldBlock, nodeRev int64) (bool, error) {
	var ok bool
	err := a.call(ctx, "release block", func(ctx context.Context, c *clientv3.Client) error {
		resp, err := c.Txn(ctx).If(
			clientv3.Compare(clientv3.ModRevision(a.k.block(h.network, h.block)), "=", h.modRev),
			clientv3.Compare(clientv3.ModRevision(a.k.node(node)), "=", nodeRev),
			clientv3.Compare(clientv3.CreateRevision(a.k.aliveKey(node)), "=", 0),
			clientv3.Compare(clientv3.CreateRevision(a.k.netPeers(node, h.network)), "=", 0).WithPrefix(),
		).Then(clientv3.OpDelete(a.k.block(h.network, h.block))).Commit()
		if err == nil {
			ok = resp.Succeeded
		}
		return err
	})
	return ok, err
}

// forgetNode deletes a lost node's record, if it is still as read and the
// node did not come back.
func (a *Agent) forgetNode(ctx context.Context, node string, nodeRev int64) (bool, error) {
	var ok bool
	err := a.call(ctx, "forget node", func(ctx context.Context, c *clientv3.Client) error {
		resp, err := c.Txn(ctx).If(
			clientv3.Compare(clientv3.ModRevision(a.k.node(node)), "=", nodeRev),
			clientv3.Compare(clientv3.CreateRevision(a.k.aliveKey(node)), "=", 0),
		).Then(clientv3.OpDelete(a.k.node(node))).Commit()
		if err == nil {
			ok = resp.Succeeded
		}
		return err
	})
	return ok, err
}
