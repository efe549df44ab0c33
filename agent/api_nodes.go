package agent

import (
	"context"
	"encoding/json"
	"net/http"
	"net/netip"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/circuit-cni/circuit/agentapi"
	"github.com/circuit-cni/circuit/api"
)

// cluster is nodes/, alive/ and blocks/ read at one revision.
type cluster struct {
	rev       int64
	nodes     map[string]nodeValue
	nodeRevs  map[string]int64 // nodes/<node>'s ModRevision
	alive     map[string]bool
	blocks    map[string][]heldBlock // node -> its blocks
	nodeNames []string               // every node any key names, sorted
}

type heldBlock struct {
	network string
	block   netip.Prefix
	modRev  int64
}

// readCluster reads what `node list` and gc need, in one Txn.
func (a *Agent) readCluster(ctx context.Context) (*cluster, error) {
	var resp *clientv3.TxnResponse
	err := a.call(ctx, "read nodes", func(ctx context.Context, c *clientv3.Client) (err error) {
		resp, err = c.Txn(ctx).Then(
			clientv3.OpGet(a.k.nodes, clientv3.WithPrefix()),
			clientv3.OpGet(a.k.alive, clientv3.WithPrefix(), clientv3.WithKeysOnly()),
			clientv3.OpGet(a.k.blocks, clientv3.WithPrefix()),
		).Commit()
		return err
	})
	if err != nil {
		return nil, err
	}
	cl := &cluster{rev: resp.Header.Revision, nodes: map[string]nodeValue{}, nodeRevs: map[string]int64{},
		alive: map[string]bool{}, blocks: map[string][]heldBlock{}}
	names := map[string]bool{}
	kvs := func(i int) []*mvccpb.KeyValue { return resp.Responses[i].GetResponseRange().Kvs }
	for _, kv := range kvs(0) {
		if e := split(string(kv.Key), a.k.nodes); len(e) == 1 {
			var v nodeValue
			if json.Unmarshal(kv.Value, &v) != nil {
				a.log.Warnf("ignoring etcd key %s: not a node record", kv.Key)
			}
			v.Name = e[0]
			cl.nodes[e[0]], cl.nodeRevs[e[0]], names[e[0]] = v, kv.ModRevision, true
		}
	}
	for _, kv := range kvs(1) {
		if e := split(string(kv.Key), a.k.alive); len(e) == 1 {
			cl.alive[e[0]], names[e[0]] = true, true
		}
	}
	for _, kv := range kvs(2) {
		e := split(string(kv.Key), a.k.blocks)
		var v blockValue
		b, ok := blockPrefix(e)
		if !ok || json.Unmarshal(kv.Value, &v) != nil || v.Node == "" {
			a.log.Warnf("ignoring etcd key %s: not a block holder", kv.Key)
			continue
		}
		cl.blocks[v.Node] = append(cl.blocks[v.Node], heldBlock{network: e[0], block: b, modRev: kv.ModRevision})
		names[v.Node] = true
	}
	cl.nodeNames = sortedKeys(names)
	return cl, nil
}

func blockPrefix(e []string) (netip.Prefix, bool) {
	if len(e) != 2 {
		return netip.Prefix{}, false
	}
	return parseBlockName(e[1])
}

// listNodes answers `circuit node list`: every node, ready while its lease
// lives, lost after.
func (a *Agent) listNodes(ctx context.Context, _ *http.Request) (any, error) {
	cl, err := a.readCluster(ctx)
	if err != nil {
		return nil, err
	}
	out := agentapi.Nodes{Nodes: []api.Node{}}
	for _, name := range cl.nodeNames {
		v := cl.nodes[name]
		n := api.Node{Name: name, Address: v.Address, LastSeen: v.LastSeen, State: api.NodeLost, Conflicts: v.Conflicts, Blocks: []string{}}
		if cl.alive[name] {
			n.State = api.NodeReady
		}
		var bs []netip.Prefix
		for _, h := range cl.blocks[name] {
			bs = append(bs, h.block)
		}
		if s := sortedCIDRs(bs); s != nil {
			n.Blocks = s
		}
		out.Nodes = append(out.Nodes, n)
	}
	return out, nil
}

// listPeers answers with every node's published peers of a network.
func (a *Agent) listPeers(ctx context.Context, r *http.Request) (any, error) {
	network := r.URL.Query().Get("network")
	if network != "" {
		if err := api.ValidNetworkName(network); err != nil {
			return nil, err
		}
	}
	pp, _, err := a.peersOf(ctx, true)
	if err != nil {
		return nil, err
	}
	out := agentapi.Peers{Peers: []api.Peer{}}
	for _, p := range pp {
		if network == "" || p.network == network {
			out.Peers = append(out.Peers, *p.peer)
		}
	}
	sortPeers(out.Peers)
	return out, nil
}

// notify answers at once and then re-publishes this node's peers and
// checks its free addresses (a reconcile): circuit calls it after a
// connect or disconnect and must not wait on etcd.
func (a *Agent) notify(_ context.Context, r *http.Request) (any, error) {
	var req agentapi.Notify
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.Network != "" {
		if err := api.ValidNetworkName(req.Network); err != nil {
			return nil, err
		}
	}
	a.wantReconcile()
	return nil, nil
}
