package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"

	"github.com/circuit-cni/circuit/api"
)

// errLeaseLost: the node's lease expired or could not be kept alive.
var errLeaseLost = errors.New("lease lost")

// sessions keeps the node in the cluster until ctx ends: connect, then one
// session after another, with backoff while etcd is unreachable. The
// socket is served all along; what needs etcd answers unavailable.
func (a *Agent) sessions(ctx context.Context) {
	// Retry well within a lease TTL: etcd back from an outage restores the
	// old lease for one TTL, and a node that re-announces later shows lost
	// for a moment, its overlay entries leaving the other nodes.
	b := backoff{min: 100 * time.Millisecond, max: max(a.cfg.LeaseTTL/3, 100*time.Millisecond)}
	for ctx.Err() == nil {
		c, err := a.connect()
		if err == nil {
			start := time.Now()
			err = a.session(ctx, c)
			if time.Since(start) > a.cfg.LeaseTTL {
				b.reset() // it worked for a while: retry soon
			}
		}
		a.live.Store(false)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, api.ErrUnavailable) && !errors.Is(err, errLeaseLost) {
			// gRPC keeps why to itself (refused, a TLS handshake failed).
			a.log.Warnf("etcd: %v; retrying (check --store, its TLS files, and that this host reaches etcd)", err)
		} else {
			a.log.Warnf("etcd: %v; retrying", err)
		}
		if b.wait(ctx) != nil {
			return
		}
	}
}

// connect makes the etcd client once; it reconnects by itself after. Only
// sessions calls it; requests meanwhile find no client and answer at once.
func (a *Agent) connect() (*clientv3.Client, error) {
	if c := a.etcd(); c != nil {
		return c, nil
	}
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   a.cfg.Endpoints,
		TLS:         a.cfg.TLS,
		Username:    a.cfg.Username,
		Password:    a.cfg.Password,
		DialTimeout: a.cfg.RequestTimeout,
		// Keepalives notice a dead connection while the agent only watches.
		DialKeepAliveTime:    a.cfg.LeaseTTL,
		DialKeepAliveTimeout: a.cfg.RequestTimeout,
		// gRPC's own reconnect backoff grows from a second to two
		// minutes: after an outage the agent would find etcd back that
		// late, and its requests meanwhile would time out. A dial is
		// cheap: every second, as gRPC's first retry.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           grpcbackoff.Config{BaseDelay: time.Second, Multiplier: 1, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: a.cfg.RequestTimeout,
		})},
		Logger: zap.NewNop(), // the agent logs what matters itself
	})
	if err != nil {
		// With credentials, New authenticates: etcd must answer.
		return nil, a.etcdErr(context.Background(), "connect", err)
	}
	a.clientMu.Lock()
	a.client = c
	a.clientMu.Unlock()
	return c, nil
}

// session is one lease's life: the node is alive, the view follows etcd,
// reconciles run. It ends when the lease is lost or ctx ends.
func (a *Agent) session(ctx context.Context, c *clientv3.Client) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var lease *clientv3.LeaseGrantResponse
	ttl := int64((a.cfg.LeaseTTL + time.Second - 1) / time.Second)
	err := a.call(ctx, "grant lease", func(ctx context.Context, c *clientv3.Client) (err error) {
		lease, err = c.Grant(ctx, ttl)
		return err
	})
	if err != nil {
		return err
	}
	if prev := a.lease.Swap(int64(lease.ID)); prev != 0 {
		a.prevLease.Store(prev)
	}
	ka, err := c.KeepAlive(ctx, lease.ID)
	if err != nil {
		return a.etcdErr(ctx, "keep lease alive", err)
	}
	if err := a.announce(ctx, lease.ID); err != nil {
		return err
	}
	rev, err := a.list(ctx)
	if err != nil {
		return err
	}
	a.log.Infof("in the cluster: node %s ready (lease %ds), view at revision %d", a.cfg.Node, ttl, rev)

	errc := make(chan error, 3)
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		for range ka { // responses; closed when the lease is gone
		}
		errc <- errLeaseLost
	}()
	go func() { defer wg.Done(); errc <- a.heartbeat(ctx) }()
	go func() { defer wg.Done(); errc <- a.follow(ctx, c, rev) }()
	err = <-errc
	cancel()
	wg.Wait()
	return err
}

// announce puts alive/<node> on the lease and refreshes nodes/<node>.
func (a *Agent) announce(ctx context.Context, id clientv3.LeaseID) error {
	node, err := a.nodeRecord(ctx)
	if err != nil {
		return err
	}
	return a.call(ctx, "announce node", func(ctx context.Context, c *clientv3.Client) error {
		resp, err := c.Txn(ctx).Then(
			clientv3.OpGet(a.k.aliveKey(a.cfg.Node)),
			clientv3.OpPut(a.k.aliveKey(a.cfg.Node), a.cfg.AdvertiseAddr, clientv3.WithLease(id)),
			clientv3.OpPut(a.k.node(a.cfg.Node), node),
		).Commit()
		if err != nil {
			return err
		}
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 && kvs[0].Lease != int64(id) && kvs[0].Lease != a.prevLease.Load() {
			// Its lease lives on: this agent's previous run, or another
			// agent that took the same name (which would be a mistake).
			a.log.Warnf("node %s was already alive in etcd (this agent's previous run, or another agent with the same --node): taking it over", a.cfg.Node)
		}
		return nil
	})
}

// nodeRecord is nodes/<node> as of now, with the conflicts known so far:
// those of earlier runs are read back the first time.
func (a *Agent) nodeRecord(ctx context.Context) (string, error) {
	a.mu.Lock()
	loaded := a.loaded
	a.mu.Unlock()
	if !loaded {
		var prev *clientv3.GetResponse
		err := a.call(ctx, "read node record", func(ctx context.Context, c *clientv3.Client) (err error) {
			prev, err = c.Get(ctx, a.k.node(a.cfg.Node))
			return err
		})
		if err != nil {
			return "", err
		}
		a.mu.Lock()
		if len(prev.Kvs) == 1 {
			var old nodeValue
			if json.Unmarshal(prev.Kvs[0].Value, &old) == nil {
				for _, b := range old.Conflicts {
					a.conflicts[b] = true
				}
			}
		}
		a.loaded = true
		a.mu.Unlock()
	}
	vteps, err := a.vteps(ctx)
	if err != nil {
		return "", fmt.Errorf("read the replica's networks: %w", err)
	}
	a.mu.Lock()
	v := nodeValue{Name: a.cfg.Node, Address: a.cfg.AdvertiseAddr, LastSeen: time.Now().UTC(), Conflicts: sortedKeys(a.conflicts), VTEPs: vteps}
	a.mu.Unlock()
	b, err := json.Marshal(v)
	return string(b), err
}

// heartbeat refreshes nodes/<node>'s lastSeen every half lease TTL: gc
// --cluster measures a lost node's grace from it.
func (a *Agent) heartbeat(ctx context.Context) error {
	t := time.NewTicker(a.cfg.LeaseTTL / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		if err := a.putNode(ctx); err != nil {
			a.log.Warnf("refresh node record: %v", err)
		}
	}
}

func (a *Agent) putNode(ctx context.Context) error {
	v, err := a.nodeRecord(ctx)
	if err != nil {
		return err
	}
	return a.call(ctx, "refresh node record", func(ctx context.Context, c *clientv3.Client) error {
		_, err := c.Put(ctx, a.k.node(a.cfg.Node), v)
		return err
	})
}

// list reads what the agent follows under the prefix at one revision
// (one Txn), replaces the view with it and asks for a reconcile.
func (a *Agent) list(ctx context.Context) (int64, error) {
	var resp *clientv3.TxnResponse
	err := a.call(ctx, "list "+a.k.root, func(ctx context.Context, c *clientv3.Client) (err error) {
		resp, err = c.Txn(ctx).Then(
			clientv3.OpGet(a.k.networks, clientv3.WithPrefix()),
			clientv3.OpGet(a.k.services, clientv3.WithPrefix()),
			clientv3.OpGet(a.k.blocks, clientv3.WithPrefix()),
			clientv3.OpGet(a.k.nodes, clientv3.WithPrefix()),
			clientv3.OpGet(a.k.alive, clientv3.WithPrefix()),
			clientv3.OpGet(a.k.peers, clientv3.WithPrefix()),
		).Commit()
		return err
	})
	if err != nil {
		return 0, err
	}
	var kvs []*mvccpb.KeyValue
	for _, r := range resp.Responses {
		kvs = append(kvs, r.GetResponseRange().Kvs...)
	}
	a.view.reset(resp.Header.Revision, kvs)
	a.live.Store(true)
	a.wantReconcile()
	return resp.Header.Revision, nil
}

// follow watches the prefix from rev+1 and applies what changed to the
// view; a watch that fell behind etcd's compaction lists again, as does
// every resync. It returns when the session should end.
func (a *Agent) follow(ctx context.Context, c *clientv3.Client, rev int64) error {
	resync := time.NewTicker(a.cfg.Resync)
	defer resync.Stop()
	for {
		err := a.watch(ctx, c, &rev, resync.C)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		switch {
		case errors.Is(err, rpctypes.ErrCompacted):
			a.log.Warnf("watch fell behind etcd's compaction (at revision %d): listing again", rev)
			a.metrics.watch.WithLabelValues("compacted").Inc()
		case errors.Is(err, errResync):
			a.log.Debug("periodic resync: listing again")
			a.metrics.watch.WithLabelValues("resync").Inc()
		case errors.Is(err, errHeld):
			a.hold.wait(ctx)
			continue // from where it was, as a watch that lagged would
		default:
			a.log.Warnf("watch: %v: listing again", err)
			a.metrics.watch.WithLabelValues("error").Inc()
		}
		if rev, err = a.list(ctx); err != nil {
			return err
		}
	}
}

var errResync = errors.New("resync")

// watch follows the prefix from *rev+1 until an error, a resync or a
// hold. It keeps *rev current, so a watch started again resumes there.
func (a *Agent) watch(ctx context.Context, c *clientv3.Client, rev *int64, resync <-chan time.Time) error {
	// Without a leader a member's watch would wait silently.
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	held := a.hold.held()
	wch := c.Watch(wctx, a.k.root, clientv3.WithPrefix(), clientv3.WithRev(*rev+1))
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-resync:
			return errResync
		case <-held:
			return errHeld
		case resp, ok := <-wch:
			if !ok {
				return fmt.Errorf("watch closed")
			}
			if err := resp.Err(); err != nil {
				return err
			}
			if resp.Canceled {
				return fmt.Errorf("watch canceled")
			}
			if a.view.apply(resp.Header.Revision, resp.Events) {
				a.wantReconcile()
			}
			if len(resp.Events) > 0 {
				*rev = resp.Header.Revision
			}
		}
	}
}
