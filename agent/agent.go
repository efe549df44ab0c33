package agent

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/circuit-cni/circuit/agentapi"
	"github.com/circuit-cni/circuit/ds/bolt"
)

// Agent is one node's circuit-agent.
type Agent struct {
	cfg     Config
	log     *logrus.Entry
	k       keys
	local   *bolt.Store // the node's circuit.db: the replica
	view    *view
	dp      Dataplane // the node's kernel: overlays, masquerade
	metrics *metrics

	clientMu sync.Mutex
	client   *clientv3.Client // nil until the first connect

	lease     atomic.Int64 // the current session's lease
	prevLease atomic.Int64 // the one before: its alive key is this agent's
	live      atomic.Bool  // a session listed etcd and watches it

	// rec serializes reconciles (the loop's and the API's): a channel, so
	// that an API request waits for it no longer than its deadline.
	rec          chan struct{}
	kick         chan struct{} // a reconcile is wanted
	overlayKick  chan struct{} // an overlay pass is wanted
	servicesKick chan struct{} // a services pass is wanted
	lb           balancer      // the services loop's memory

	mu        sync.Mutex
	conflicts map[string]bool // blocks etcd gave another node: never used here again
	loaded    bool            // conflicts of earlier runs were read from nodes/<node>
	warned    map[string]bool // conflicts and exhaustion already logged

	hold watchHold // tests: hold the watch as if it fell behind
}

// New checks cfg and opens the node's datastore. Run does the rest.
func New(cfg Config) (*Agent, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	local, err := bolt.Open(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	dp := cfg.Dataplane
	if dp == nil {
		if dp, err = NewKernel(); err != nil {
			local.Close()
			return nil, err
		}
	}
	k := newKeys(cfg.Prefix)
	log := cfg.Log.WithField("node", cfg.Node)
	a := &Agent{
		cfg: cfg, log: log, k: k, local: local, view: newView(k, log), dp: dp, metrics: newMetrics(),
		rec: make(chan struct{}, 1), kick: make(chan struct{}, 1), overlayKick: make(chan struct{}, 1), servicesKick: make(chan struct{}, 1),
		conflicts: map[string]bool{}, warned: map[string]bool{},
	}
	a.metrics.reg.MustRegister(serviceCollector{a})
	return a, nil
}

// Run serves the socket and keeps the node in the cluster until ctx ends;
// then it stops serving, revokes its lease (the node shows lost at once)
// and closes. What it programmed into the kernel stays: containers keep
// talking while the agent is away. It returns an error only if it could
// not start.
func (a *Agent) Run(ctx context.Context) error {
	defer a.local.Close()
	defer a.dp.Close()
	srv, err := a.serve()
	if err != nil {
		return err
	}
	if a.cfg.MetricsAddr != "" {
		stopMetrics, err := a.serveMetrics(ctx, a.cfg.MetricsAddr)
		if err != nil {
			srv.stop()
			return err
		}
		defer stopMetrics()
	}
	a.log.Infof("circuit-agent serving %s; etcd %s, prefix %s", filepath.Join(a.cfg.StateDir, agentapi.SocketName), a.where(), a.cfg.Prefix)
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); a.reconciler(ctx) }()
	go func() { defer wg.Done(); a.overlayLoop(ctx) }()
	go func() { defer wg.Done(); a.servicesLoop(ctx) }()
	a.sessions(ctx)
	wg.Wait()

	srv.stop()
	a.revoke()
	a.clientMu.Lock()
	if a.client != nil {
		_ = a.client.Close()
	}
	a.clientMu.Unlock()
	a.log.Info("circuit-agent stopped")
	return nil
}

// revoke ends the current lease: alive/<node> goes with it.
func (a *Agent) revoke() {
	id := a.lease.Swap(0)
	c := a.etcd()
	if id == 0 || c == nil {
		return
	}
	ctx, cancel := context.WithTimeoutCause(context.Background(), a.cfg.RequestTimeout, errCallBound)
	defer cancel()
	if _, err := c.Revoke(ctx, clientv3.LeaseID(id)); err != nil {
		a.log.Warnf("revoke lease: %v (the node shows lost once it expires)", a.etcdErr(ctx, "revoke lease", err))
	}
}

// etcd is the client, nil before the first connect.
func (a *Agent) etcd() *clientv3.Client {
	a.clientMu.Lock()
	defer a.clientMu.Unlock()
	return a.client
}

// call runs fn with the client under the request bound.
func (a *Agent) call(ctx context.Context, what string, fn func(context.Context, *clientv3.Client) error) error {
	c := a.etcd()
	if c == nil {
		return a.etcdErr(ctx, what, errNoClient)
	}
	ctx, cancel := context.WithTimeoutCause(ctx, a.cfg.RequestTimeout, errCallBound)
	defer cancel()
	start := time.Now()
	err := fn(ctx, c)
	if err != nil {
		err = a.etcdErr(ctx, what, err)
	}
	a.metrics.etcdRequest(start, err)
	return err
}

// warnOnce logs a warning the first time key is seen; forget lets it be
// logged again once the condition cleared.
func (a *Agent) warnOnce(key, format string, args ...any) {
	a.mu.Lock()
	seen := a.warned[key]
	a.warned[key] = true
	a.mu.Unlock()
	if !seen {
		a.log.Warnf(format, args...)
	}
}

func (a *Agent) forget(key string) {
	a.mu.Lock()
	delete(a.warned, key)
	a.mu.Unlock()
}

// lock takes the reconcile lock, giving up when ctx ends.
func (a *Agent) lock(ctx context.Context) error {
	select {
	case a.rec <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for the agent's reconcile: %w", ctx.Err())
	}
}

func (a *Agent) unlock() { <-a.rec }

// wantReconcile asks the loop for a reconcile soon; many asks make one.
func (a *Agent) wantReconcile() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// backoff is a retry's wait: doubling from min to max.
type backoff struct{ next, min, max time.Duration }

func (b *backoff) wait(ctx context.Context) error {
	t := time.NewTimer(b.step())
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// step is the next wait, and doubles the one after.
func (b *backoff) step() time.Duration {
	d := b.peek()
	b.next = min(2*d, b.max)
	return d
}

// peek is the next wait.
func (b *backoff) peek() time.Duration {
	if b.next == 0 {
		return b.min
	}
	return b.next
}

func (b *backoff) reset() { b.next = 0 }

var errStopped = errors.New("agent stopped")
