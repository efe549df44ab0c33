package agent

import (
	"bytes"
	"context"
	"slices"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/ds/record"
)

// Peers of cluster networks are published per node, under
// P/peers/<node>/<network>/<containerID>/<ifname>, by that node's agent
// only. Not leased: a lost node's peers stay recorded, so gc --cluster
// never releases a block whose addresses containers may still hold, and
// network delete names the nodes that still use a network.

// maxOps bounds one Txn's operations below etcd's default --max-txn-ops
// (128). Publishing is idempotent, so it may take more than one.
const maxOps = 100

// publish makes P/peers/<node>/ match the connected peers of this node's
// cluster networks in its replica; only one network's if network is set.
func (a *Agent) publish(ctx context.Context, network string) error {
	want := map[string][]byte{}
	err := a.local.View(ctx, func(tx ds.Tx) error {
		nets, err := tx.ListNetworks()
		if err != nil {
			return err
		}
		for _, n := range nets {
			if n.Cluster == nil || (network != "" && n.Name != network) {
				continue
			}
			peers, err := tx.ListPeers(n.Name)
			if err != nil {
				return err
			}
			for _, p := range peers {
				if p.State != api.PeerConnected {
					continue
				}
				b, err := record.EncodePeer(published(p, a.cfg.Node))
				if err != nil {
					return err
				}
				want[a.k.peer(a.cfg.Node, n.Name, p.ContainerID, p.IfName)] = b
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	dir := a.k.nodePeers(a.cfg.Node)
	if network != "" {
		dir = a.k.netPeers(a.cfg.Node, network)
	}
	var have *clientv3.GetResponse
	if err := a.call(ctx, "read "+dir, func(ctx context.Context, c *clientv3.Client) (err error) {
		have, err = c.Get(ctx, dir, clientv3.WithPrefix())
		return err
	}); err != nil {
		return err
	}
	var ops []clientv3.Op
	for _, kv := range have.Kvs {
		k := string(kv.Key)
		if v, ok := want[k]; !ok {
			ops = append(ops, clientv3.OpDelete(k))
		} else if bytes.Equal(v, kv.Value) {
			delete(want, k)
		}
	}
	for _, k := range sortedKeys(want) {
		ops = append(ops, clientv3.OpPut(k, string(want[k])))
	}
	for chunk := range slices.Chunk(ops, maxOps) {
		if err := a.call(ctx, "publish peers", func(ctx context.Context, c *clientv3.Client) error {
			_, err := c.Txn(ctx).Then(chunk...).Commit()
			return err
		}); err != nil {
			return err
		}
	}
	if len(ops) > 0 {
		a.log.Debugf("published peers: %d change(s)", len(ops))
	}
	return nil
}

// published is a peer as the cluster sees it: where it is, its addresses;
// not this host's bookkeeping (process, netns pin, boot, config).
func published(p api.Peer, node string) *api.Peer {
	return &api.Peer{
		Network: p.Network, ContainerID: p.ContainerID, PID: p.PID, IfName: p.IfName,
		IPs: p.IPs, MAC: p.MAC, HostIf: p.HostIf, State: p.State, ConnectedAt: p.ConnectedAt.UTC(),
		QoS: p.QoS, Node: node,
	}
}

// publishedPeer is one key of P/peers/ read back.
type publishedPeer struct {
	node, network string
	peer          *api.Peer // nil when only keys were read
}

// peersOf reads P/peers/ (keys only unless full) and splits the keys.
func (a *Agent) peersOf(ctx context.Context, full bool) ([]publishedPeer, int64, error) {
	var resp *clientv3.GetResponse
	opts := []clientv3.OpOption{clientv3.WithPrefix()}
	if !full {
		opts = append(opts, clientv3.WithKeysOnly())
	}
	if err := a.call(ctx, "read "+a.k.peers, func(ctx context.Context, c *clientv3.Client) (err error) {
		resp, err = c.Get(ctx, a.k.peers, opts...)
		return err
	}); err != nil {
		return nil, 0, err
	}
	out, err := a.decodePeers(resp.Kvs, full)
	return out, resp.Header.Revision, err
}

func (a *Agent) decodePeers(kvs []*mvccpb.KeyValue, full bool) ([]publishedPeer, error) {
	var out []publishedPeer
	for _, kv := range kvs {
		e := split(string(kv.Key), a.k.peers)
		if len(e) != 4 {
			continue
		}
		pp := publishedPeer{node: e[0], network: e[1]}
		if full {
			p, err := record.DecodePeer(kv.Value)
			if err != nil {
				a.log.Warnf("ignoring etcd key %s: %v", kv.Key, err)
				continue
			}
			p.Node, p.Network = e[0], e[1]
			pp.peer = p
		}
		out = append(out, pp)
	}
	return out, nil
}

// nodesOn lists, sorted, the nodes with published peers on network.
func nodesOn(peers []publishedPeer, network string) []string {
	var out []string
	for _, p := range peers {
		if p.network == network && !slices.Contains(out, p.node) {
			out = append(out, p.node)
		}
	}
	slices.Sort(out)
	return out
}

// sortPeers orders peers by node, container and interface.
func sortPeers(ps []api.Peer) {
	slices.SortFunc(ps, func(x, y api.Peer) int {
		if c := strings.Compare(x.Node, y.Node); c != 0 {
			return c
		}
		if c := strings.Compare(x.ContainerID, y.ContainerID); c != 0 {
			return c
		}
		return strings.Compare(x.IfName, y.IfName)
	})
}
