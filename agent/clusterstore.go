package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"strconv"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/circuit-cni/circuit/api"
)

// The cluster's networks and services live in a ds/etcd store under
// P/cluster. The agent changes them with one Txn that also touches keys
// outside it (a network's VNI counter, its blocks, peers of lost nodes),
// which a ds/etcd Update cannot, so it commits as ds/etcd does
// (ds/etcd/doc.go, "Transactions"): guarded by the ModRevision of
// meta/commit as its snapshot saw it, with meta/lock absent and the schema
// unchanged, putting a fresh token in meta/commit. Writers through ds/etcd
// and through the agent are then serialized alike, and a ds/etcd Store on
// P/cluster reads what the agent wrote.

// schemaVersion is ds/etcd's: records are ds/record's schema 2.
const schemaVersion = 2

// snap is the cluster store as one update reads it: at one revision.
type snap struct {
	a         *Agent
	ctx       context.Context
	c         *clientv3.Client
	rev       int64
	commitRev int64
	schemaRev int64
	schema    int
	locked    string // meta/lock's value; "" if absent
}

// get reads key at the snapshot's revision; nil if absent.
func (s *snap) get(key string) (*mvccpb.KeyValue, error) {
	resp, err := s.c.Get(s.ctx, key, clientv3.WithRev(s.rev))
	if err != nil {
		return nil, s.a.etcdErr(s.ctx, "read "+key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	return resp.Kvs[0], nil
}

// list reads every key under dir at the snapshot's revision.
func (s *snap) list(dir string, opts ...clientv3.OpOption) ([]*mvccpb.KeyValue, error) {
	resp, err := s.c.Get(s.ctx, dir, append([]clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithRev(s.rev)}, opts...)...)
	if err != nil {
		return nil, s.a.etcdErr(s.ctx, "read "+dir, err)
	}
	return resp.Kvs, nil
}

// change is what an update commits: its own compares (besides the
// store's guard) and operations. No operations: nothing to commit.
type change struct {
	cmps []clientv3.Cmp
	ops  []clientv3.Op
}

// update runs fn on a snapshot of the cluster and commits its change in
// one Txn, if no one committed since; otherwise fn runs again on a new
// snapshot, until ctx ends. fn's error is returned as is. It returns the
// revision of the commit (0 if nothing was committed).
func (a *Agent) update(ctx context.Context, what string, fn func(*snap) (change, error)) (int64, error) {
	c := a.etcd()
	if c == nil {
		return 0, a.etcdErr(ctx, what, errNoClient)
	}
	ctx, cancel := context.WithTimeoutCause(ctx, a.cfg.RequestTimeout, errCallBound)
	defer cancel()
	conflicts, locked := 0, ""
	// gaveUp says why retries ran out of time.
	gaveUp := func() error {
		if locked != "" {
			return api.Errorf(api.ErrBusy, "%s: the cluster store is locked (%s = %q)", what, a.k.lock, locked)
		}
		return api.Errorf(api.ErrBusy, "%s: the cluster store stayed busy for %s (%d conflicting writers)", what, a.cfg.RequestTimeout, conflicts)
	}
	for attempt := 0; ; attempt++ {
		if attempt > 0 && pause(ctx, attempt) != nil {
			return 0, gaveUp()
		}
		s, err := a.snapshot(ctx, c)
		if err != nil {
			if attempt > 0 && errors.Is(context.Cause(ctx), errCallBound) {
				return 0, gaveUp()
			}
			return 0, err
		}
		if locked = s.locked; locked != "" {
			continue
		}
		ch, err := fn(s)
		if err != nil {
			return 0, err
		}
		if len(ch.ops) == 0 {
			return 0, nil
		}
		ok, rev, err := a.commit(ctx, c, s, ch)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", what, err)
		}
		if ok {
			return rev, nil
		}
		conflicts++
	}
}

// snapshot reads the store's meta keys linearizably: the update then sees
// every commit that finished before it began.
func (a *Agent) snapshot(ctx context.Context, c *clientv3.Client) (*snap, error) {
	resp, err := c.Get(ctx, a.k.meta, clientv3.WithPrefix())
	if err != nil {
		return nil, a.etcdErr(ctx, "read "+a.k.meta, err)
	}
	s := &snap{a: a, ctx: ctx, c: c, rev: resp.Header.Revision}
	for _, kv := range resp.Kvs {
		switch string(kv.Key) {
		case a.k.schema:
			v, err := strconv.Atoi(string(kv.Value))
			if err != nil {
				return nil, fmt.Errorf("cluster store %s: schema %q is not a version number", a.k.cluster, kv.Value)
			}
			s.schema, s.schemaRev = v, kv.ModRevision
		case a.k.commit:
			s.commitRev = kv.ModRevision
		case a.k.lock:
			s.locked = string(kv.Value)
			if s.locked == "" {
				s.locked = "(empty)"
			}
		}
	}
	if s.schema != 0 && s.schema != schemaVersion {
		return nil, api.Errorf(api.ErrUnsupported, "cluster store %s has schema %d; this circuit-agent knows %d", a.k.cluster, s.schema, schemaVersion)
	}
	return s, nil
}

// commit applies ch if the store is as s saw it; false: someone committed
// since (or took the lock), try again.
func (a *Agent) commit(ctx context.Context, c *clientv3.Client, s *snap, ch change) (bool, int64, error) {
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		return false, 0, err
	}
	ops := append(ch.ops, clientv3.OpPut(a.k.commit, hex.EncodeToString(b)))
	if s.schema == 0 {
		ops = append(ops, clientv3.OpPut(a.k.schema, strconv.Itoa(schemaVersion)))
	}
	cmps := append([]clientv3.Cmp{
		clientv3.Compare(clientv3.ModRevision(a.k.commit), "=", s.commitRev),
		clientv3.Compare(clientv3.ModRevision(a.k.schema), "=", s.schemaRev),
		clientv3.Compare(clientv3.CreateRevision(a.k.lock), "=", 0),
	}, ch.cmps...)
	resp, err := c.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		if unanswered(ctx, err) {
			return false, 0, api.Errorf(api.ErrUnavailable, "etcd at %s did not answer the commit within %s: it may or may not have been applied", a.where(), a.cfg.RequestTimeout)
		}
		return false, 0, a.etcdErr(ctx, "commit", err)
	}
	return resp.Succeeded, resp.Header.Revision, nil
}

// pause waits before a retry: a random time up to 1ms doubled per
// attempt, at most 64ms, so that writers that collided do not again.
func pause(ctx context.Context, attempt int) error {
	limit := 64 * time.Millisecond
	if attempt < 7 {
		limit = time.Millisecond << attempt
	}
	t := time.NewTimer(mrand.N(limit) + 1)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
