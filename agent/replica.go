package agent

import (
	"context"
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"time"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
)

// The replica is the cluster as this node needs it, in the node's own
// circuit.db, where circuit reads it like any local record: a connect or
// a start hook never waits on etcd. The agent writes only what the cluster
// owns, on the record as it is inside the bolt transaction: local fields
// (QoS, OwnedBridge, GC, a service's BootID) are circuit's and survive.

// replicate brings the replica to st: every cluster network with this
// node's blocks, every cluster service; what left etcd leaves the replica.
func (a *Agent) replicate(ctx context.Context, st *state, mtu int) error {
	var errs []error
	for _, cn := range st.networks {
		errs = append(errs, a.replicateNetwork(ctx, st, cn.net.Name, mtu))
	}
	for _, s := range st.services {
		errs = append(errs, a.replicateService(ctx, st, s.Name))
	}
	var nets []string
	var svcs []string
	err := a.local.View(ctx, func(tx ds.Tx) error {
		ns, err := tx.ListNetworks()
		for _, n := range ns {
			if _, ok := st.networks[n.Name]; !ok && n.Cluster != nil {
				nets = append(nets, n.Name)
			}
		}
		if err != nil {
			return err
		}
		ss, err := tx.ListServices()
		for _, s := range ss {
			if _, ok := st.services[s.Name]; !ok && s.Cluster {
				svcs = append(svcs, s.Name)
			}
		}
		return err
	})
	errs = append(errs, err)
	for _, n := range nets {
		errs = append(errs, a.replicateNetwork(ctx, st, n, mtu))
	}
	for _, s := range svcs {
		errs = append(errs, a.replicateService(ctx, st, s))
	}
	return errors.Join(errs...)
}

// replicateNetwork brings one network's replica to st: created or updated
// with the cluster's fields, this node's blocks and its overlay's MTU (0:
// unknown, the replica's is kept), or deleted once gone from etcd (kept,
// and logged, while local peers use it). A local network of the same name
// is never touched.
func (a *Agent) replicateNetwork(ctx context.Context, st *state, name string, mtu int) error {
	cn, inCluster := st.networks[name]
	var blocks []string
	if inCluster {
		var mine []netip.Prefix
		for _, b := range st.held(name, a.cfg.Node) {
			if !a.conflict(b) {
				mine = append(mine, b)
			}
		}
		blocks = sortedCIDRs(mine)
	}
	conflictKey := "local-network/" + name
	var note func()
	err := a.changeReplica(ctx, func(tx ds.Tx, write bool) (bool, error) {
		note = nil
		cur, err := tx.GetNetwork(name)
		if err != nil && !errors.Is(err, api.ErrNotFound) {
			return false, err
		}
		if cur != nil && cur.Cluster == nil {
			if inCluster {
				note = func() {
					a.warnOnce(conflictKey, "cluster network %s is not replicated here: this node has a local network of that name (delete it to use the cluster's)", name)
				}
			}
			return false, nil
		}
		if !inCluster {
			if cur == nil {
				return false, nil
			}
			peers, err := tx.ListPeers(name)
			if err != nil {
				return false, err
			}
			if len(peers) > 0 {
				note = func() {
					a.warnOnce("gone/"+name, "cluster network %s was deleted from etcd but %d peer(s) here still use it: keeping its replica until they disconnect", name, len(peers))
				}
				return false, nil
			}
			if !write {
				return true, nil
			}
			note = func() { a.log.Infof("cluster network %s deleted: replica removed", name) }
			return true, tx.DeleteNetwork(name)
		}
		want := api.Network{Name: name, CreatedAt: cn.net.CreatedAt}
		if cur != nil {
			want = *cur // circuit's fields stay as they are
		}
		c := *cn.net.Cluster
		c.Blocks, c.Node, c.MTU = blocks, a.cfg.Node, mtu
		if mtu == 0 && cur != nil && cur.Cluster != nil {
			c.MTU = cur.Cluster.MTU
		}
		want.Config, want.Type, want.Plugins = cn.net.Config, cn.net.Type, slices.Clone(cn.net.Plugins)
		want.CNIVersion, want.IsList, want.Cluster = cn.net.CNIVersion, cn.net.IsList, &c
		if cur != nil && reflect.DeepEqual(*cur, want) {
			return false, nil
		}
		if !write {
			return true, nil
		}
		if cur == nil {
			note = func() { a.log.Infof("cluster network %s replicated here (blocks %v)", name, blocks) }
		}
		return true, tx.PutNetwork(&want)
	})
	if err != nil {
		return err
	}
	if inCluster {
		a.forget("gone/" + name)
	}
	if note != nil {
		note()
	} else {
		a.forget(conflictKey)
	}
	return nil
}

// replicateService brings one cluster service's replica to st: the
// service as this node balances it (services.go), so circuit's lb show and
// lb list say what the node's kernel does: container targets where their
// containers are, draining while they are away, the backend this node
// chose for "auto".
func (a *Agent) replicateService(ctx context.Context, st *state, name string) error {
	s, inCluster := st.services[name]
	if inCluster {
		s.Targets, _ = a.planTargets(st, s, time.Now())
		if b := a.ownedBackend(name); b != "" {
			s.Backend = b
		}
	}
	var note func()
	err := a.changeReplica(ctx, func(tx ds.Tx, write bool) (bool, error) {
		note = nil
		cur, err := tx.GetService(name)
		if err != nil && !errors.Is(err, api.ErrNotFound) {
			return false, err
		}
		switch {
		case cur != nil && !cur.Cluster:
			if inCluster {
				note = func() {
					a.warnOnce("local-service/"+name, "cluster service %s is not replicated here: this node has a local service of that name", name)
				}
			}
			return false, nil
		case !inCluster:
			if cur == nil || !write {
				return cur != nil, nil
			}
			note = func() { a.log.Infof("cluster service %s deleted: replica removed", name) }
			return true, tx.DeleteService(name)
		}
		want := s
		want.Cluster = true
		if cur != nil {
			want.BootID = cur.BootID // the boot this node last programmed it in
			// "auto" is resolved by each node to the backend it has.
			if want.Backend == api.BackendAuto && cur.Backend != "" {
				want.Backend = cur.Backend
			}
			if reflect.DeepEqual(*cur, want) {
				return false, nil
			}
		}
		if !write {
			return true, nil
		}
		return true, tx.PutService(&want)
	})
	if note != nil && err == nil {
		note()
	}
	return err
}

// changeReplica runs step on the replica: first in a read-only
// transaction, where it only finds out whether it would write; then, if it
// would, in a read-write one, on the records as they are by then. A
// replica already in line (the common case) costs no exclusive lock, which
// circuit's hooks would wait for.
func (a *Agent) changeReplica(ctx context.Context, step func(tx ds.Tx, write bool) (bool, error)) error {
	var needed bool
	err := a.local.View(ctx, func(tx ds.Tx) (err error) {
		needed, err = step(tx, false)
		return err
	})
	if err != nil || !needed {
		return err
	}
	return a.local.Update(ctx, func(tx ds.Tx) error {
		_, err := step(tx, true)
		return err
	})
}
