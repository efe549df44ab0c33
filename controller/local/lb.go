package local

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/pkg/lb"
)

// toLB maps a service record to the load balancer's own description.
func toLB(s api.Service) lb.Service {
	out := lb.Service{Name: s.Name, Address: s.Address, Protocol: s.Protocol, Scheduler: s.Scheduler, Persistence: s.Persistence}
	for _, t := range s.Targets {
		out.Targets = append(out.Targets, toLBTarget(t))
	}
	return out
}

// toLBTarget is what the kernel holds of a target: weight 0 while it
// drains (no new connections).
func toLBTarget(t api.Target) lb.Target {
	w := t.Weight
	if t.Draining() {
		w = 0
	}
	return lb.Target{Address: t.Address, Weight: w, Forward: t.Forward}
}

// status maps a backend's counters onto a service record.
func status(s api.Service, st *lb.Stats) *api.ServiceStatus {
	out := &api.ServiceStatus{Service: s, Stats: api.Counters(st.Service), Targets: map[string]api.Counters{}, Active: map[string]uint64{}}
	for addr, c := range st.Targets {
		out.Targets[addr] = api.Counters(c)
	}
	for _, t := range s.Targets {
		out.Active[t.Address] = st.Active[t.Address]
	}
	return out
}

// CreateService records a service, then programs the kernel; a failed
// kernel write removes the record again.
func (c *Controller) CreateService(ctx context.Context, svc api.Service) (*api.Service, error) {
	if err := api.NormalizeService(&svc); err != nil {
		return nil, fmt.Errorf("lb create %s: %w", svc.Name, err)
	}
	if svc.Cluster {
		s, err := c.createClusterService(ctx, svc)
		if err != nil {
			return nil, fmt.Errorf("lb create %s: %w", svc.Name, err)
		}
		return s, nil
	}
	unlock, err := c.lock(ctx, "lb")
	if err != nil {
		return nil, fmt.Errorf("lb create %s: %w", svc.Name, err)
	}
	defer unlock()
	b, err := c.k.lb(svc.Backend)
	if err != nil {
		return nil, fmt.Errorf("lb create %s: %w", svc.Name, err)
	}
	defer b.Close()
	svc.Backend = b.Name()
	svc.Targets = []api.Target{}
	svc.CreatedAt = time.Now().UTC()
	if err := b.Validate(toLB(svc)); err != nil {
		return nil, fmt.Errorf("lb create %s: %w", svc.Name, err)
	}
	// Whatever the kernel already balances on this address is not circuit's.
	if err := c.foreign(b, &svc); err != nil {
		return nil, fmt.Errorf("lb create %s: %w", svc.Name, err)
	}
	svc.BootID = c.k.procs.BootID()
	err = c.store.Update(ctx, func(tx ds.Tx) error {
		if _, err := tx.GetService(svc.Name); err == nil {
			return api.Errorf(api.ErrExists, "service %s already exists", svc.Name)
		}
		all, err := tx.ListServices()
		if err != nil {
			return err
		}
		for _, o := range all {
			if o.Address == svc.Address && o.Protocol == svc.Protocol {
				return api.Errorf(api.ErrExists, "service %s already balances %s/%s", o.Name, svc.Address, svc.Protocol)
			}
		}
		return tx.PutService(&svc)
	})
	if err != nil {
		return nil, fmt.Errorf("lb create %s: %w", svc.Name, err)
	}
	if err := b.Ensure(toLB(svc)); err != nil {
		b.Delete(toLB(svc))
		c.forgetService(ctx, svc.Name)
		return nil, fmt.Errorf("lb create %s: %s backend: %w", svc.Name, b.Name(), err)
	}
	return &svc, nil
}

func (c *Controller) forgetService(ctx context.Context, name string) {
	err := c.store.Update(context.WithoutCancel(ctx), func(tx ds.Tx) error { return tx.DeleteService(name) })
	if err != nil {
		c.log.WithError(err).Warnf("rollback: forget service %s", name)
	}
}

func (c *Controller) service(ctx context.Context, name string) (*api.Service, error) {
	var svc *api.Service
	err := c.store.View(ctx, func(tx ds.Tx) error {
		var err error
		svc, err = tx.GetService(name)
		return err
	})
	return svc, err
}

// targetOp is what changeTargets does to the kernel for each target the
// edit changed.
type targetOp int

const (
	opAdd targetOp = iota
	opRemove
	opSet
)

// changeTargets records a service's new target list and applies the
// difference to the kernel, one target at a time; on failure the record
// and the kernel go back to how they were. Drains their waiters left are
// finished first.
func (c *Controller) changeTargets(ctx context.Context, name string, edit func(svc *api.Service) ([]api.Target, error), op targetOp) error {
	unlock, err := c.lock(ctx, "lb")
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := c.finishDrains(ctx, name, false); err != nil {
		return err
	}
	return c.changeTargetsLocked(ctx, name, edit, op)
}

func (c *Controller) changeTargetsLocked(ctx context.Context, name string, edit func(svc *api.Service) ([]api.Target, error), op targetOp) error {
	old, err := c.service(ctx, name)
	if err != nil {
		return err
	}
	next := *old
	next.Targets = slices.Clone(old.Targets)
	changed, err := edit(&next)
	if err != nil {
		return err
	}
	if len(changed) == 0 {
		return nil
	}
	b, err := c.k.lb(old.Backend)
	if err != nil {
		return err
	}
	defer b.Close()
	if err := b.Validate(toLB(next)); err != nil {
		return err
	}
	if err := c.foreign(b, old); err != nil {
		return err
	}
	err = c.store.Update(ctx, func(tx ds.Tx) error {
		cur, err := tx.GetService(name)
		if err != nil {
			return err
		}
		if !slices.Equal(cur.Targets, old.Targets) {
			return api.Errorf(api.ErrBusy, "service %s changed meanwhile; try again", name)
		}
		cur.Targets = next.Targets // the one field this command owns
		return tx.PutService(cur)
	})
	if err != nil {
		return err
	}
	for _, t := range changed {
		switch op {
		case opRemove:
			err = b.RemoveTarget(toLB(next), toLBTarget(t))
		case opSet:
			err = b.SetTarget(toLB(next), toLBTarget(t))
		default:
			err = b.AddTarget(toLB(next), toLBTarget(t))
		}
		if err != nil {
			err = fmt.Errorf("%s backend: %w", b.Name(), err)
			if rerr := b.Ensure(toLB(*old)); rerr != nil {
				c.log.WithError(rerr).Warnf("rollback: restore service %s in the kernel", name)
			}
			rerr := c.store.Update(context.WithoutCancel(ctx), func(tx ds.Tx) error {
				cur, err := tx.GetService(name)
				if err != nil {
					return err
				}
				cur.Targets = old.Targets
				return tx.PutService(cur)
			})
			if rerr != nil {
				c.log.WithError(rerr).Warnf("rollback: restore record of service %s", name)
			}
			return err
		}
	}
	return nil
}

// AddTargets adds real servers to a service.
func (c *Controller) AddTargets(ctx context.Context, service string, targets []api.Target) error {
	if svc, err := c.service(ctx, service); err == nil && svc.Cluster {
		if err := c.clusterTargets(ctx, service, targets, nil); err != nil {
			return fmt.Errorf("lb add %s: %w", service, err)
		}
		return nil
	}
	err := c.changeTargets(ctx, service, func(svc *api.Service) ([]api.Target, error) {
		if len(targets) == 0 {
			return nil, api.Errorf(api.ErrInvalid, "no target given")
		}
		var added []api.Target
		for _, t := range targets {
			if err := api.NormalizeTarget(svc, &t); err != nil {
				return nil, err
			}
			if slices.ContainsFunc(svc.Targets, func(o api.Target) bool { return o.Address == t.Address }) {
				return nil, api.Errorf(api.ErrExists, "target %s is already in service %s", t.Address, svc.Name)
			}
			svc.Targets = append(svc.Targets, t)
			added = append(added, t)
		}
		return added, nil
	}, opAdd)
	if err != nil {
		return fmt.Errorf("lb add %s: %w", service, err)
	}
	return nil
}

// RemoveTargets takes real servers out of a service.
func (c *Controller) RemoveTargets(ctx context.Context, service string, targets []string) error {
	if svc, err := c.service(ctx, service); err == nil && svc.Cluster {
		if targets == nil {
			targets = []string{}
		}
		if err := c.clusterTargets(ctx, service, nil, targets); err != nil {
			return fmt.Errorf("lb remove %s: %w", service, err)
		}
		return nil
	}
	err := c.changeTargets(ctx, service, func(svc *api.Service) ([]api.Target, error) {
		if len(targets) == 0 {
			return nil, api.Errorf(api.ErrInvalid, "no target given")
		}
		var removed []api.Target
		for _, addr := range targets {
			ap, err := api.ParseAddrPort(addr)
			if err != nil {
				return nil, err
			}
			i := slices.IndexFunc(svc.Targets, func(o api.Target) bool { return o.Address == ap.String() })
			if i < 0 {
				return nil, api.Errorf(api.ErrNotFound, "target %s is not in service %s", addr, svc.Name)
			}
			removed = append(removed, svc.Targets[i])
			svc.Targets = slices.Delete(svc.Targets, i, i+1)
		}
		return removed, nil
	}, opRemove)
	if err != nil {
		return fmt.Errorf("lb remove %s: %w", service, err)
	}
	return nil
}

// DeleteService removes a service from the kernel and the datastore; a
// kernel side that is already gone is not an error.
func (c *Controller) DeleteService(ctx context.Context, service string) error {
	unlock, err := c.lock(ctx, "lb")
	if err != nil {
		return fmt.Errorf("lb delete %s: %w", service, err)
	}
	defer unlock()
	svc, err := c.service(ctx, service)
	if err != nil {
		return fmt.Errorf("lb delete %s: %w", service, err)
	}
	if svc.Cluster {
		if err := c.deleteClusterService(ctx, service); err != nil {
			return fmt.Errorf("lb delete %s: %w", service, err)
		}
		return nil
	}
	if b, err := c.k.lb(svc.Backend); err == nil {
		var derr error
		if ferr := c.foreign(b, svc); ferr != nil {
			c.log.Warnf("lb delete %s: %v", service, ferr) // the record goes, the kernel's service stays
		} else {
			derr = b.Delete(toLB(*svc))
		}
		b.Close()
		if derr != nil && !errors.Is(derr, api.ErrUnsupported) {
			return fmt.Errorf("lb delete %s: %s backend: %w", service, svc.Backend, derr)
		}
	}
	err = c.store.Update(ctx, func(tx ds.Tx) error { return tx.DeleteService(service) })
	if err != nil {
		return fmt.Errorf("lb delete %s: %w", service, err)
	}
	return nil
}

// ListServices returns the recorded services, sorted by name.
func (c *Controller) ListServices(ctx context.Context) ([]api.Service, error) {
	var out []api.Service
	err := c.store.View(ctx, func(tx ds.Tx) error {
		var err error
		out, err = tx.ListServices()
		return err
	})
	return out, err
}

// ShowService adds the kernel's live counters to a service.
func (c *Controller) ShowService(ctx context.Context, service string) (*api.ServiceStatus, error) {
	svc, err := c.service(ctx, service)
	if err != nil {
		return nil, fmt.Errorf("lb show %s: %w", service, err)
	}
	if c.leftDrains(svc) {
		if err := c.finishDrainsLocking(ctx, service); err != nil {
			return nil, fmt.Errorf("lb show %s: %w", service, err)
		}
		if svc, err = c.service(ctx, service); err != nil {
			return nil, fmt.Errorf("lb show %s: %w", service, err)
		}
	}
	b, err := c.k.lb(svc.Backend)
	if err != nil {
		return nil, fmt.Errorf("lb show %s: %w", service, err)
	}
	defer b.Close()
	st, err := b.Stats(toLB(*svc))
	if err != nil {
		return nil, fmt.Errorf("lb show %s: %s backend: %w", service, svc.Backend, err)
	}
	return status(*svc, st), nil
}

// restoreServices programs every recorded service the kernel lacks, and
// repairs the targets (missing, extra, other weight or forwarding) of one
// it holds and circuit owns. A service on the same address that is not
// circuit's is left alone, and said so.
func (c *Controller) restoreServices(ctx context.Context) ([]string, error) {
	unlock, err := c.lock(ctx, "lb")
	if err != nil {
		return nil, err
	}
	defer unlock()
	svcs, err := c.ListServices(ctx)
	if err != nil {
		return nil, err
	}
	var acts []string
	var errs []error
	for _, svc := range svcs {
		if svc.Cluster {
			continue // every node's agent programs the cluster's services
		}
		done, err := c.finishDrains(ctx, svc.Name, false)
		acts = append(acts, done...)
		if err != nil {
			errs = append(errs, fmt.Errorf("restore service %s: %w", svc.Name, err))
			continue
		}
		if len(done) > 0 {
			cur, err := c.service(ctx, svc.Name)
			if err != nil {
				errs = append(errs, fmt.Errorf("restore service %s: %w", svc.Name, err))
				continue
			}
			svc = *cur
		}
		act, err := c.restoreService(ctx, &svc)
		if err != nil {
			errs = append(errs, fmt.Errorf("restore service %s: %w", svc.Name, err))
		}
		if act != "" {
			acts = append(acts, act)
		}
	}
	return acts, joinErrors(errs...)
}

func (c *Controller) restoreService(ctx context.Context, svc *api.Service) (string, error) {
	b, err := c.k.lb(svc.Backend)
	if err != nil {
		return "", err
	}
	defer b.Close()
	verb := "restored"
	st, err := b.Stats(toLB(*svc))
	switch {
	case errors.Is(err, api.ErrNotFound):
	case err != nil:
		return "", fmt.Errorf("%s backend: %w", b.Name(), err)
	default:
		if err := c.foreign(b, svc); err != nil {
			return "", err
		}
		switch {
		case st.Outdated: // an older circuit's layout: moved in place
			verb = "migrated to the current layout"
		case sameTargets(st.Programmed.Targets, svc.Targets):
			return "", nil
		default:
			verb = "repaired the targets of"
		}
	}
	if err := b.Ensure(toLB(*svc)); err != nil {
		return "", fmt.Errorf("%s backend: %w", b.Name(), err)
	}
	if boot := c.k.procs.BootID(); svc.BootID != boot {
		err := c.store.Update(ctx, func(tx ds.Tx) error {
			cur, err := tx.GetService(svc.Name)
			if err != nil {
				return err
			}
			cur.BootID = boot
			return tx.PutService(cur)
		})
		if err != nil {
			return "", err
		}
	}
	return fmt.Sprintf("%s service %s (%s, %s) with %s", verb, svc.Name, svc.Address, plural(len(svc.Targets), "target"), b.Name()), nil
}

// foreign refuses a kernel service on svc's address that is not circuit's.
// nftables services live in circuit's own table. IPVS has no owner field,
// so an IPVS service is circuit's only if the record says circuit
// programmed it during this boot and the kernel's still has the scheduler
// and persistence circuit gave it.
func (c *Controller) foreign(b lb.Backend, svc *api.Service) error {
	if b.Name() != api.BackendIPVS {
		return nil
	}
	st, err := b.Stats(toLB(*svc))
	if errors.Is(err, api.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s backend: %w", b.Name(), err)
	}
	k := st.Programmed
	if svc.BootID == c.k.procs.BootID() && k.Scheduler == svc.Scheduler && k.Persistence.Round(time.Second) == svc.Persistence.Round(time.Second) {
		return nil
	}
	return api.Errorf(api.ErrExists, "the kernel's IPVS service %s/%s (scheduler %s, %s) is not circuit's: left alone",
		k.Address, k.Protocol, k.Scheduler, plural(len(k.Targets), "real server"))
}

// sameTargets compares the targets the kernel holds with the record: the
// same addresses and weights (0 for a draining target), and the same
// forwarding where the backend can read it back.
func sameTargets(kernel []lb.Target, want []api.Target) bool {
	if len(kernel) != len(want) {
		return false
	}
	for _, t := range want {
		i := slices.IndexFunc(kernel, func(k lb.Target) bool { return k.Address == t.Address })
		if i < 0 {
			return false
		}
		k, w := kernel[i], toLBTarget(t)
		if k.Weight != w.Weight || (k.Forward != "" && k.Forward != w.Forward) {
			return false
		}
	}
	return true
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
