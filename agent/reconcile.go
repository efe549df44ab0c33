package agent

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"time"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
)

// reconciler runs a reconcile whenever one is wanted (a listing, a watch
// event, a notify, every resync), one at a time, until ctx ends. One that
// failed (etcd slow, the datastore busy) is tried again soon, backing off
// up to the resync period, rather than waiting for the next event.
func (a *Agent) reconciler(ctx context.Context) {
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	b := backoff{min: 200 * time.Millisecond, max: a.cfg.Resync}
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.kick:
		case <-retry.C:
		}
		if !a.live.Load() {
			continue // the next session's listing asks again
		}
		if err := a.lock(ctx); err != nil {
			return
		}
		start := time.Now()
		err := a.reconcile(ctx, "")
		a.unlock()
		a.metrics.reconciled("cluster", start, err)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			a.log.Warnf("reconcile: %v (again in %s)", err, b.peek())
			retry.Reset(b.step())
		default:
			b.reset()
		}
	}
}

// reconcile brings the node in line with its view of etcd, for every
// network or only one: the replica's blocks re-confirmed, blocks claimed
// where needed, the replica written, this node's peers published. The
// caller holds the reconcile lock.
func (a *Agent) reconcile(ctx context.Context, network string) error {
	st := a.view.snapshot()
	if st == nil {
		return nil
	}
	rev, err := a.confirm(ctx, st)
	if err != nil {
		return err
	}
	// Claims are seen back through the watch before the next step reads
	// the view: no block is claimed twice over, and the replica never
	// loses one for a moment.
	if rev > 0 {
		if err := a.waitRev(ctx, rev); err != nil {
			return err
		}
		st = a.view.snapshot()
	}
	shadowed, err := a.localNetworks(ctx)
	if err != nil {
		return err
	}
	var errs []error
	names := sortedKeys(st.networks)
	// A network this node cannot replicate (a local one has its name)
	// gets no block here.
	names = slices.DeleteFunc(names, func(n string) bool { return shadowed[n] || (network != "" && n != network) })
	rev = 0
	for _, name := range names {
		r, err := a.ensureBlocks(ctx, st, st.networks[name])
		if err != nil && !errors.Is(err, errNetworkGone) {
			errs = append(errs, err)
		}
		rev = max(rev, r)
	}
	if rev > 0 {
		if err := a.waitRev(ctx, rev); err != nil {
			return errors.Join(append(errs, err)...)
		}
		st = a.view.snapshot()
	}
	mtu := a.overlayMTU()
	if network != "" {
		errs = append(errs, a.replicateNetwork(ctx, st, network, mtu))
	} else {
		errs = append(errs, a.replicate(ctx, st, mtu))
	}
	errs = append(errs, a.publishVTEPs(ctx), a.publish(ctx, network))
	a.kickOverlay()
	return errors.Join(errs...)
}

// publishVTEPs refreshes nodes/<node> when the VTEPs it publishes are not
// those of the replica (a network came or went): the other nodes then
// learn at once, not at the next heartbeat, how to reach this node's blocks.
func (a *Agent) publishVTEPs(ctx context.Context) error {
	want, err := a.vteps(ctx)
	if err != nil {
		return err
	}
	st := a.view.snapshot()
	if st == nil {
		return nil
	}
	if have, ok := st.nodes[a.cfg.Node]; ok && reflect.DeepEqual(have.VTEPs, want) && have.Address == a.cfg.AdvertiseAddr {
		return nil
	}
	return a.putNode(ctx)
}

// waitRev waits, within a request's bound, until the view has seen rev:
// the agent's own write, come back through the watch.
func (a *Agent) waitRev(ctx context.Context, rev int64) error {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.RequestTimeout)
	defer cancel()
	if err := a.view.waitRev(ctx, rev); err != nil {
		return api.Errorf(api.ErrUnavailable, "this agent's watch of etcd has not reached revision %d within %s", rev, a.cfg.RequestTimeout)
	}
	return nil
}

// localNetworks are the names of this node's local (non-cluster) networks.
func (a *Agent) localNetworks(ctx context.Context) (map[string]bool, error) {
	out := map[string]bool{}
	err := a.local.View(ctx, func(tx ds.Tx) error {
		ns, err := tx.ListNetworks()
		for _, n := range ns {
			if n.Cluster == nil {
				out[n.Name] = true
			}
		}
		return err
	})
	return out, err
}
