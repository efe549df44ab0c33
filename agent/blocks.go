package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/circuit-cni/circuit/agentapi"
	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/pkg/cni"
)

var (
	// errExhausted: every block of the range is held by some node.
	errExhausted = errors.New("range exhausted")
	// errNetworkGone: the network was deleted (or made again) meanwhile.
	errNetworkGone = errors.New("network deleted meanwhile")
)

// family is an address family: 4 or 6.
type family int

func familyOf(p netip.Prefix) family {
	if p.Addr().Is4() {
		return 4
	}
	return 6
}

// candidates are a network's blocks per family, in the order they are
// claimed: its ranges' in the configuration's order, each cut by api.Blocks.
func candidates(n *api.Network) (map[family][]netip.Prefix, error) {
	ranges, err := cni.IPAMRanges(n.Config)
	if err != nil {
		return nil, err
	}
	out := map[family][]netip.Prefix{}
	for _, r := range ranges {
		p, err := netip.ParsePrefix(r)
		if err != nil {
			return nil, api.Errorf(api.ErrInvalid, "network %s: range %q: %v", n.Name, r, err)
		}
		bits := n.Cluster.BlockSize
		if !p.Addr().Is4() {
			bits = n.Cluster.BlockSize6
		}
		bs, err := api.Blocks(p, bits)
		if err != nil {
			return nil, api.Errorf(api.ErrInvalid, "network %s: %v", n.Name, err)
		}
		f := familyOf(p)
		for _, b := range bs {
			if !slices.Contains(out[f], b) {
				out[f] = append(out[f], b)
			}
		}
	}
	return out, nil
}

// usable is how many addresses of a block host-local hands out: all but
// the network address, the broadcast (IPv4) and the gateway. It saturates
// for blocks too big to count.
func usable(b netip.Prefix) uint64 {
	host := b.Addr().BitLen() - b.Bits()
	if host >= 62 {
		return 1 << 62
	}
	n := uint64(1) << host
	reserved := uint64(2) // network, gateway
	if b.Addr().Is4() {
		reserved = 3
	}
	if n <= reserved {
		return 0
	}
	return n - reserved
}

// used counts, per block, the addresses host-local reserved for network on
// this node: its files under <state>/<IPAMDir>/<network>/ are named by
// address (other files, like its lock, are not addresses).
func (a *Agent) used(network string, blocks []netip.Prefix) (map[netip.Prefix]uint64, error) {
	out := map[netip.Prefix]uint64{}
	entries, err := os.ReadDir(filepath.Join(a.cfg.StateDir, agentapi.IPAMDir, network))
	if errors.Is(err, os.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("count addresses of network %s: %w", network, err)
	}
	for _, e := range entries {
		ip, err := netip.ParseAddr(e.Name())
		if err != nil {
			continue
		}
		for _, b := range blocks {
			if b.Contains(ip.Unmap()) {
				out[b]++
				break
			}
		}
	}
	return out, nil
}

// low reports whether the node's blocks of one family are running out:
// fewer free addresses than a quarter of one block's.
func (a *Agent) low(network string, mine []netip.Prefix) (bool, error) {
	if len(mine) == 0 {
		return true, nil
	}
	used, err := a.used(network, mine)
	if err != nil {
		return false, err
	}
	var free uint64
	for _, b := range mine {
		if u := usable(b); u > used[b] {
			free += u - used[b]
		}
	}
	return free < usable(mine[0])/4, nil
}

// claim takes the lowest block of cands that no node holds, with one Txn
// that succeeds only if the block's key does not exist and the network is
// still the one the agent knows. On a conflict, the Txn's other branch
// lists the network's blocks, and the next free one is tried. taken
// (blocks known held, and this node's conflicts) is updated.
func (a *Agent) claim(ctx context.Context, cn clusterNet, cands []netip.Prefix, taken map[netip.Prefix]bool) (netip.Prefix, int64, error) {
	c := a.etcd()
	if c == nil {
		return netip.Prefix{}, 0, a.etcdErr(ctx, "claim a block", errNoClient)
	}
	name := cn.net.Name
	val, err := json.Marshal(blockValue{Node: a.cfg.Node, ClaimedAt: time.Now().UTC()})
	if err != nil {
		return netip.Prefix{}, 0, err
	}
	netKey := a.k.network(name)
	for {
		i := slices.IndexFunc(cands, func(b netip.Prefix) bool { return !taken[b] && !a.conflict(b) })
		if i < 0 {
			return netip.Prefix{}, 0, errExhausted
		}
		b := cands[i]
		key := a.k.block(name, b)
		var resp *clientv3.TxnResponse
		err := a.call(ctx, "claim block "+b.String()+" of network "+name, func(ctx context.Context, c *clientv3.Client) (err error) {
			resp, err = c.Txn(ctx).If(
				clientv3.Compare(clientv3.CreateRevision(key), "=", 0),
				clientv3.Compare(clientv3.CreateRevision(netKey), "=", cn.createRev),
			).Then(
				clientv3.OpPut(key, string(val)),
			).Else(
				clientv3.OpGet(a.k.netBlocks(name), clientv3.WithPrefix(), clientv3.WithKeysOnly()),
				clientv3.OpGet(netKey, clientv3.WithKeysOnly()),
			).Commit()
			return err
		})
		if err != nil {
			return netip.Prefix{}, 0, err
		}
		if resp.Succeeded {
			taken[b] = true
			return b, resp.Header.Revision, nil
		}
		nk := resp.Responses[1].GetResponseRange().Kvs
		if len(nk) == 0 || nk[0].CreateRevision != cn.createRev {
			return netip.Prefix{}, 0, errNetworkGone
		}
		taken[b] = true // whoever holds it, it is not free
		for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
			if e := split(string(kv.Key), a.k.netBlocks(name)); len(e) == 1 {
				if p, ok := parseBlockName(e[0]); ok {
					taken[p] = true
				}
			}
		}
	}
}

// conflict reports whether b is one of this node's conflicts.
func (a *Agent) conflict(b netip.Prefix) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.conflicts[b.String()]
}

// ensureBlocks gives the node at least one block of each family the
// network's ranges have, and one more whenever its free addresses run
// low. It returns the revision of its last claim (0: none).
func (a *Agent) ensureBlocks(ctx context.Context, st *state, cn clusterNet) (int64, error) {
	name := cn.net.Name
	cands, err := candidates(&cn.net)
	if err != nil {
		return 0, err
	}
	taken := map[netip.Prefix]bool{}
	for b := range st.blocks[name] {
		taken[b] = true
	}
	mine := st.held(name, a.cfg.Node)
	var last int64
	for _, f := range []family{4, 6} {
		if len(cands[f]) == 0 {
			continue
		}
		have := slices.DeleteFunc(slices.Clone(mine), func(b netip.Prefix) bool { return familyOf(b) != f || a.conflict(b) })
		key := fmt.Sprintf("exhausted/%s/%d", name, f)
		for {
			low, err := a.low(name, have)
			if err != nil {
				return last, err
			}
			if !low {
				a.forget(key)
				break
			}
			b, rev, err := a.claim(ctx, cn, cands[f], taken)
			if errors.Is(err, errExhausted) {
				if len(have) == 0 {
					a.warnOnce(key, "network %s: IPv%d range exhausted: every block is held by another node, this node holds none (retrying at each reconcile; gc --cluster releases the blocks of lost nodes)", name, f)
				} else {
					a.warnOnce(key, "network %s: IPv%d addresses are running low on this node and the range is exhausted: no block left to claim", name, f)
				}
				break
			}
			if err != nil {
				return last, err
			}
			a.forget(key)
			a.log.Infof("claimed block %s of network %s", b, name)
			have, last = append(have, b), rev
		}
	}
	return last, nil
}
