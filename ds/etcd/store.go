package etcd

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
)

const (
	// DefaultPrefix is where a Store keeps its keys unless told otherwise.
	DefaultPrefix = "/circuit/v1"
	// DefaultTimeout bounds one transaction, retries included.
	DefaultTimeout = 5 * time.Second
	// DefaultMaxTxnOps is etcd's default --max-txn-ops.
	DefaultMaxTxnOps = 128

	// schemaVersion is the layout this code reads and writes; the records
	// are ds/bolt's schema 2, so the number is the same.
	schemaVersion = 2

	// Retries back off from minPause, doubling up to maxPause, with jitter
	// so that writers that collided do not collide again.
	minPause = time.Millisecond
	maxPause = 64 * time.Millisecond
)

var (
	errClosed   = errors.New("datastore closed")
	errReadOnly = errors.New("write in a read-only transaction")
	// errBound is the cause of a transaction's context when the Store's
	// timeout, not the caller, ended it.
	errBound = errors.New("transaction timeout")
)

// Config tells Open where etcd is and how to use it.
type Config struct {
	Endpoints []string // etcd client URLs, e.g. https://10.0.0.1:2379
	Prefix    string   // key prefix; "" is DefaultPrefix
	TLS       *tls.Config
	// Username and Password, if set, authenticate to etcd. They never
	// appear in errors.
	Username, Password string
	// DialTimeout bounds connecting and authenticating; 0 is Timeout.
	DialTimeout time.Duration
	// Timeout bounds each transaction, retries included; 0 is DefaultTimeout.
	Timeout time.Duration
	// MaxTxnOps is the etcd server's --max-txn-ops; 0 is DefaultMaxTxnOps.
	MaxTxnOps int
}

// Store is a ds.Datastore on etcd. It is safe to share between goroutines.
type Store struct {
	client    *clientv3.Client
	owned     bool // Close closes client
	keys      keys
	where     string // endpoints and prefix, for errors
	timeout   time.Duration
	maxTxnOps int
	closed    atomic.Bool
}

var _ ds.Datastore = (*Store)(nil)

// Option configures New.
type Option func(*Store)

// WithTimeout bounds each transaction; d <= 0 keeps DefaultTimeout.
func WithTimeout(d time.Duration) Option {
	return func(s *Store) {
		if d > 0 {
			s.timeout = d
		}
	}
}

// WithMaxTxnOps sets the etcd server's --max-txn-ops; n <= 0 keeps
// DefaultMaxTxnOps.
func WithMaxTxnOps(n int) Option {
	return func(s *Store) {
		if n > 0 {
			s.maxTxnOps = n
		}
	}
}

// Open connects to etcd and checks the store's schema: a store written by a
// newer circuit is refused. Close closes the connection.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, fmt.Errorf("open etcd datastore: no endpoints: %w", api.ErrInvalid)
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	dial := cfg.DialTimeout
	if dial <= 0 {
		dial = timeout
	}
	client, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		TLS:         cfg.TLS,
		Username:    cfg.Username,
		Password:    cfg.Password,
		DialTimeout: dial,
		// circuit reports errors itself; the client's log would go to
		// stderr of every command.
		Logger: zap.NewNop(),
	})
	if err != nil {
		// Authenticating is the one call New makes; it waits DialTimeout.
		if unanswered(err) {
			return nil, fmt.Errorf("%w: open etcd datastore at %s: no answer within %s (%v)", api.ErrBusy, redactAll(cfg.Endpoints), dial, err)
		}
		return nil, fmt.Errorf("open etcd datastore at %s: %w", redactAll(cfg.Endpoints), err)
	}
	s, err := New(client, cfg.Prefix, WithTimeout(cfg.Timeout), WithMaxTxnOps(cfg.MaxTxnOps))
	if err != nil {
		_ = client.Close()
		return nil, err
	}
	s.owned = true
	if err := s.View(ctx, func(ds.Tx) error { return nil }); err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("open etcd datastore: %w", err)
	}
	return s, nil
}

// New makes a Store on a client the caller owns: Close leaves it open. It
// does not contact etcd; the first transaction does.
func New(client *clientv3.Client, prefix string, opts ...Option) (*Store, error) {
	if client == nil {
		return nil, fmt.Errorf("etcd datastore: nil client: %w", api.ErrInvalid)
	}
	if prefix == "" {
		prefix = DefaultPrefix
	}
	// Keys join the prefix with "/"; a trailing one would double it.
	prefix = strings.TrimRight(prefix, "/")
	if prefix == "" {
		return nil, fmt.Errorf("etcd datastore: prefix %q leaves no prefix: %w", "/", api.ErrInvalid)
	}
	s := &Store{
		client:    client,
		keys:      newKeys(prefix),
		where:     fmt.Sprintf("%s at %s", prefix, redactAll(client.Endpoints())),
		timeout:   DefaultTimeout,
		maxTxnOps: DefaultMaxTxnOps,
	}
	for _, o := range opts {
		o(s)
	}
	return s, nil
}

// Close makes later transactions fail and closes the client Open made.
func (s *Store) Close() error {
	if !s.closed.CompareAndSwap(false, true) || !s.owned {
		return nil
	}
	if err := s.client.Close(); err != nil {
		return fmt.Errorf("close etcd datastore %s: %w", s.where, err)
	}
	return nil
}

// View runs fn on a snapshot of committed state, read-only.
func (s *Store) View(parent context.Context, fn func(ds.Tx) error) error {
	if err := s.usable(parent); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeoutCause(parent, s.timeout, errBound)
	defer cancel()
	snap, err := s.snapshot(ctx)
	if err != nil {
		return err
	}
	t := s.newTx(ctx, snap.rev, false)
	defer t.end()
	return fn(t)
}

// Update runs fn against a snapshot and commits its writes in one etcd Txn
// that fails if anyone committed since the snapshot; then fn runs again on
// a new one. fn's error is returned as is, and nothing is written.
func (s *Store) Update(parent context.Context, fn func(ds.Tx) error) error {
	if err := s.usable(parent); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeoutCause(parent, s.timeout, errBound)
	defer cancel()
	conflicts := 0
	locked, holder := false, "" // the last snapshot found meta/lock
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			if err := pause(ctx, attempt); err != nil {
				return s.gaveUp(ctx, conflicts, locked, holder)
			}
		}
		snap, err := s.snapshot(ctx)
		if err != nil {
			// Out of time while retrying: say why it retried.
			if attempt > 0 && errors.Is(context.Cause(ctx), errBound) {
				return s.gaveUp(ctx, conflicts, locked, holder)
			}
			return err
		}
		if locked, holder = snap.locked, snap.holder; locked {
			continue
		}
		t := s.newTx(ctx, snap.rev, true)
		err = fn(t)
		t.end()
		if err != nil {
			return err
		}
		// The snapshot was consistent: an Update that only read needs no
		// commit, unless it is the first and must write the schema.
		if t.empty() && snap.schema == schemaVersion {
			return nil
		}
		ok, err := s.commit(ctx, snap, t)
		if err != nil || ok {
			return err
		}
		conflicts++
	}
}

// snapshot is what a transaction reads first: the meta keys, and the
// revision its other reads are at.
type snapshot struct {
	rev       int64 // every read of the transaction is at this revision
	schema    int   // 0: nothing was ever written under the prefix
	schemaRev int64 // meta/schema's ModRevision, 0 if absent
	commitRev int64 // meta/commit's ModRevision, 0 if absent
	locked    bool
	holder    string // meta/lock's value
}

// snapshot reads the meta keys linearizably, so a transaction sees every
// commit that finished before it began, and refuses a schema it does not
// know.
func (s *Store) snapshot(ctx context.Context) (snapshot, error) {
	resp, err := s.client.Get(ctx, s.keys.meta, clientv3.WithPrefix())
	if err != nil {
		return snapshot{}, s.callErr(ctx, "read "+s.keys.meta, err)
	}
	snap := snapshot{rev: resp.Header.Revision}
	for _, kv := range resp.Kvs {
		switch string(kv.Key) {
		case s.keys.schema:
			v, err := strconv.Atoi(string(kv.Value))
			if err != nil || v < 0 {
				return snapshot{}, fmt.Errorf("etcd datastore %s: datastore schema version %q is not a version number", s.where, kv.Value)
			}
			snap.schema, snap.schemaRev = v, kv.ModRevision
		case s.keys.commit:
			snap.commitRev = kv.ModRevision
		case s.keys.lock:
			snap.locked, snap.holder = true, string(kv.Value)
		}
	}
	switch {
	case snap.schema > schemaVersion:
		return snapshot{}, fmt.Errorf("etcd datastore %s: datastore schema version %d is newer than this circuit supports (%d)", s.where, snap.schema, schemaVersion)
	case snap.schema != 0 && snap.schema < schemaVersion:
		// etcd stores began at schema 2: there is nothing to migrate from.
		return snapshot{}, fmt.Errorf("etcd datastore %s: datastore schema version %d is older than %d, which no etcd store has had", s.where, snap.schema, schemaVersion)
	}
	return snap, nil
}

// commit writes t's buffered writes if nothing was committed since snap,
// the schema did not change and no one holds the lock. It reports whether
// the writes landed; false with no error is a conflict.
func (s *Store) commit(ctx context.Context, snap snapshot, t *tx) (bool, error) {
	token, err := newToken()
	if err != nil {
		return false, fmt.Errorf("etcd datastore %s: commit token: %w", s.where, err)
	}
	ops := t.ops()
	ops = append(ops, clientv3.OpPut(s.keys.commit, token))
	if snap.schema == 0 {
		ops = append(ops, clientv3.OpPut(s.keys.schema, strconv.Itoa(schemaVersion)))
	}
	// Splitting would make the commit partial; refuse it whole.
	if len(ops) > s.maxTxnOps {
		return false, api.Errorf(api.ErrUnsupported, "etcd datastore %s: one update needs %d operations, more than one etcd transaction takes (%d); nothing was written",
			s.where, len(ops), s.maxTxnOps)
	}
	resp, err := s.client.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(s.keys.commit), "=", snap.commitRev),
		clientv3.Compare(clientv3.ModRevision(s.keys.schema), "=", snap.schemaRev),
		clientv3.Compare(clientv3.CreateRevision(s.keys.lock), "=", 0),
	).Then(ops...).Commit()
	if err == nil {
		return resp.Succeeded, nil
	}
	if rejected(err) {
		return false, fmt.Errorf("etcd datastore %s: commit refused, nothing was written: %w", s.where, err)
	}
	// No answer does not mean not applied: if the token is there, it was.
	if landed, lerr := s.landed(ctx, token); lerr == nil && landed {
		return true, nil
	}
	if errors.Is(context.Cause(ctx), errBound) {
		return false, fmt.Errorf("%w: etcd datastore %s: no answer to the commit within %s; it may or may not have been applied", api.ErrBusy, s.where, s.timeout)
	}
	return false, fmt.Errorf("etcd datastore %s: commit failed and may or may not have been applied: %w", s.where, err)
}

// landed reports whether meta/commit holds token: the commit that wrote it
// was applied and nothing was committed after it.
func (s *Store) landed(ctx context.Context, token string) (bool, error) {
	resp, err := s.client.Get(ctx, s.keys.commit)
	if err != nil {
		return false, err
	}
	return len(resp.Kvs) == 1 && string(resp.Kvs[0].Value) == token, nil
}

// gaveUp explains why an Update stopped retrying.
func (s *Store) gaveUp(ctx context.Context, conflicts int, locked bool, holder string) error {
	if cause := context.Cause(ctx); !errors.Is(cause, errBound) {
		return fmt.Errorf("etcd datastore %s: %w", s.where, cause)
	}
	if locked {
		return fmt.Errorf("%w: etcd datastore %s is locked (%s = %q) for more than %s", api.ErrBusy, s.where, s.keys.lock, holder, s.timeout)
	}
	return fmt.Errorf("%w: etcd datastore %s: %d commits conflicted with other writers within %s", api.ErrBusy, s.where, conflicts, s.timeout)
}

// callErr wraps an etcd call's error: ErrBusy if the Store's timeout ran
// out (etcd unreachable or too slow), the context's error if the caller
// gave up.
func (s *Store) callErr(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		if cause := context.Cause(ctx); !errors.Is(cause, errBound) {
			return fmt.Errorf("etcd datastore %s: %s: %w", s.where, what, cause)
		}
		return fmt.Errorf("%w: etcd datastore %s: %s: no answer within %s (%v)", api.ErrBusy, s.where, what, s.timeout, err)
	}
	return fmt.Errorf("etcd datastore %s: %s: %w", s.where, what, err)
}

// usable fails if the store is closed or the caller gave up.
func (s *Store) usable(ctx context.Context) error {
	if s.closed.Load() {
		return fmt.Errorf("etcd datastore %s: %w", s.where, errClosed)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("etcd datastore %s: %w", s.where, err)
	}
	return nil
}

// pause waits before a retry: a random time up to minPause doubled for
// each attempt so far, at most maxPause. It fails when ctx ends first.
func pause(ctx context.Context, attempt int) error {
	limit := maxPause
	if attempt < 8 {
		limit = min(minPause<<attempt, maxPause)
	}
	timer := time.NewTimer(mrand.N(limit) + 1)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// rejected reports whether etcd refused a request outright, before any of
// it could be applied.
func rejected(err error) bool {
	code := codes.Unknown
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		code = ee.Code()
	} else if st, ok := status.FromError(err); ok {
		code = st.Code()
	}
	switch code {
	case codes.InvalidArgument, codes.FailedPrecondition, codes.OutOfRange,
		codes.ResourceExhausted, codes.PermissionDenied, codes.Unauthenticated:
		return true
	}
	return false
}

// unanswered reports whether a call failed for want of an answer in time.
func unanswered(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		return ee.Code() == codes.DeadlineExceeded || ee.Code() == codes.Unavailable
	}
	st, ok := status.FromError(err)
	return ok && (st.Code() == codes.DeadlineExceeded || st.Code() == codes.Unavailable)
}

func newToken() (string, error) {
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// redactAll lists endpoints for errors, without any credentials in them.
func redactAll(endpoints []string) string {
	out := make([]string, len(endpoints))
	for i, ep := range endpoints {
		out[i] = redact(ep)
	}
	return strings.Join(out, ",")
}

// redact drops a URL's user information ("https://user:pw@host:2379").
func redact(ep string) string {
	scheme, rest, ok := strings.Cut(ep, "://")
	if !ok {
		scheme, rest = "", ep
	}
	host, _, _ := strings.Cut(rest, "/")
	if i := strings.LastIndex(host, "@"); i >= 0 {
		rest = rest[i+1:]
	}
	if scheme == "" {
		return rest
	}
	return scheme + "://" + rest
}
