package local

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/circuit-cni/circuit/controller"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/pkg/cni"
	"github.com/circuit-cni/circuit/pkg/lb"
)

// backendFor opens the backend a service was created with; "auto" picks
// IPVS when the kernel has it, else nftables.
func (c *Controller) backendFor(name string) (lb.Backend, error) {
	if name == "" || name == "auto" {
		return lb.Auto("")
	}
	b, err := lb.Open(name, "")
	if err != nil {
		return nil, err
	}
	if err := b.Available(); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// normalize checks a service request and fills in defaults.
func normalizeService(svc *controller.Service) error {
	if err := cni.ValidateName(svc.Name); err != nil {
		return controller.Errorf(controller.ErrInvalid, "service name %q: use 1 to 63 letters, digits, '_', '.' or '-'", svc.Name)
	}
	ap, err := lb.ParseAddrPort(svc.Address)
	if err != nil {
		return err
	}
	svc.Address = ap.String()
	if svc.Protocol == "" {
		svc.Protocol = "tcp"
	}
	svc.Protocol = strings.ToLower(svc.Protocol)
	if !slices.Contains([]string{"tcp", "udp", "sctp"}, svc.Protocol) {
		return controller.Errorf(controller.ErrInvalid, "protocol %q: use tcp, udp or sctp", svc.Protocol)
	}
	if svc.Scheduler == "" {
		svc.Scheduler = "rr"
	}
	if err := lb.ValidScheduler(svc.Scheduler); err != nil {
		return err
	}
	if svc.Persistence < 0 {
		return controller.Errorf(controller.ErrInvalid, "persistence must not be negative")
	}
	return nil
}

func is4(addr string) bool {
	ap, err := lb.ParseAddrPort(addr)
	return err == nil && ap.Addr().Is4()
}

func normalizeTarget(t *controller.Target) error {
	ap, err := lb.ParseAddrPort(t.Address)
	if err != nil {
		return err
	}
	t.Address = ap.String()
	if t.Weight == 0 {
		t.Weight = 1
	}
	if t.Weight < 0 || t.Weight > 65535 {
		return controller.Errorf(controller.ErrInvalid, "weight %d: use 1 to 65535", t.Weight)
	}
	if t.Forward == "" {
		t.Forward = "nat"
	}
	if !slices.Contains([]string{"nat", "dr", "tunnel"}, t.Forward) {
		return controller.Errorf(controller.ErrInvalid, "forwarding method %q: use nat, dr or tunnel", t.Forward)
	}
	return nil
}

// CreateService records a service, then programs the kernel; a failed
// kernel write removes the record again.
func (c *Controller) CreateService(ctx context.Context, svc controller.Service) (*controller.Service, error) {
	if err := normalizeService(&svc); err != nil {
		return nil, fmt.Errorf("lb create %s: %w", svc.Name, err)
	}
	unlock, err := c.lock(ctx, "lb")
	if err != nil {
		return nil, fmt.Errorf("lb create %s: %w", svc.Name, err)
	}
	defer unlock()
	b, err := c.backendFor(svc.Backend)
	if err != nil {
		return nil, fmt.Errorf("lb create %s: %w", svc.Name, err)
	}
	defer b.Close()
	svc.Backend = b.Name()
	svc.Targets = []controller.Target{}
	svc.CreatedAt = time.Now().UTC()
	if err := b.Validate(svc); err != nil {
		return nil, fmt.Errorf("lb create %s: %w", svc.Name, err)
	}
	err = c.store.Update(ctx, func(tx ds.Tx) error {
		if _, err := tx.GetService(svc.Name); err == nil {
			return controller.Errorf(controller.ErrExists, "service %s already exists", svc.Name)
		}
		all, err := tx.ListServices()
		if err != nil {
			return err
		}
		for _, o := range all {
			if o.Address == svc.Address && o.Protocol == svc.Protocol {
				return controller.Errorf(controller.ErrExists, "service %s already balances %s/%s", o.Name, svc.Address, svc.Protocol)
			}
		}
		return tx.PutService(&svc)
	})
	if err != nil {
		return nil, fmt.Errorf("lb create %s: %w", svc.Name, err)
	}
	if err := b.Ensure(svc); err != nil {
		b.Delete(svc)
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

func (c *Controller) service(ctx context.Context, name string) (*controller.Service, error) {
	var svc *controller.Service
	err := c.store.View(ctx, func(tx ds.Tx) error {
		var err error
		svc, err = tx.GetService(name)
		return err
	})
	return svc, err
}

// changeTargets records a service's new target list and applies the
// difference to the kernel, one target at a time; on failure the record
// and the kernel go back to how they were.
func (c *Controller) changeTargets(ctx context.Context, name string, edit func(svc *controller.Service) ([]controller.Target, error), remove bool) error {
	unlock, err := c.lock(ctx, "lb")
	if err != nil {
		return err
	}
	defer unlock()
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
	b, err := c.backendFor(old.Backend)
	if err != nil {
		return err
	}
	defer b.Close()
	if err := b.Validate(next); err != nil {
		return err
	}
	err = c.store.Update(ctx, func(tx ds.Tx) error {
		cur, err := tx.GetService(name)
		if err != nil {
			return err
		}
		if !slices.Equal(cur.Targets, old.Targets) {
			return controller.Errorf(controller.ErrBusy, "service %s changed meanwhile; try again", name)
		}
		return tx.PutService(&next)
	})
	if err != nil {
		return err
	}
	for _, t := range changed {
		if remove {
			err = b.RemoveTarget(next, t)
		} else {
			err = b.AddTarget(next, t)
		}
		if err != nil {
			err = fmt.Errorf("%s backend: %w", b.Name(), err)
			if rerr := b.Ensure(*old); rerr != nil {
				c.log.WithError(rerr).Warnf("rollback: restore service %s in the kernel", name)
			}
			if rerr := c.store.Update(context.WithoutCancel(ctx), func(tx ds.Tx) error { return tx.PutService(old) }); rerr != nil {
				c.log.WithError(rerr).Warnf("rollback: restore record of service %s", name)
			}
			return err
		}
	}
	return nil
}

// AddTargets adds real servers to a service.
func (c *Controller) AddTargets(ctx context.Context, service string, targets []controller.Target) error {
	err := c.changeTargets(ctx, service, func(svc *controller.Service) ([]controller.Target, error) {
		if len(targets) == 0 {
			return nil, controller.Errorf(controller.ErrInvalid, "no target given")
		}
		var added []controller.Target
		for _, t := range targets {
			if err := normalizeTarget(&t); err != nil {
				return nil, err
			}
			if slices.ContainsFunc(svc.Targets, func(o controller.Target) bool { return o.Address == t.Address }) {
				return nil, controller.Errorf(controller.ErrExists, "target %s is already in service %s", t.Address, svc.Name)
			}
			if is4(t.Address) != is4(svc.Address) {
				return nil, controller.Errorf(controller.ErrInvalid, "target %s and service address %s are of different IP families", t.Address, svc.Address)
			}
			svc.Targets = append(svc.Targets, t)
			added = append(added, t)
		}
		return added, nil
	}, false)
	if err != nil {
		return fmt.Errorf("lb add %s: %w", service, err)
	}
	return nil
}

// RemoveTargets takes real servers out of a service.
func (c *Controller) RemoveTargets(ctx context.Context, service string, targets []string) error {
	err := c.changeTargets(ctx, service, func(svc *controller.Service) ([]controller.Target, error) {
		if len(targets) == 0 {
			return nil, controller.Errorf(controller.ErrInvalid, "no target given")
		}
		var removed []controller.Target
		for _, addr := range targets {
			ap, err := lb.ParseAddrPort(addr)
			if err != nil {
				return nil, err
			}
			i := slices.IndexFunc(svc.Targets, func(o controller.Target) bool { return o.Address == ap.String() })
			if i < 0 {
				return nil, controller.Errorf(controller.ErrNotFound, "target %s is not in service %s", addr, svc.Name)
			}
			removed = append(removed, svc.Targets[i])
			svc.Targets = slices.Delete(svc.Targets, i, i+1)
		}
		return removed, nil
	}, true)
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
	if b, err := lb.Open(svc.Backend, ""); err == nil {
		derr := b.Delete(*svc)
		b.Close()
		if derr != nil && !errors.Is(derr, controller.ErrUnsupported) {
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
func (c *Controller) ListServices(ctx context.Context) ([]controller.Service, error) {
	var out []controller.Service
	err := c.store.View(ctx, func(tx ds.Tx) error {
		var err error
		out, err = tx.ListServices()
		return err
	})
	return out, err
}

// ShowService adds the kernel's live counters to a service.
func (c *Controller) ShowService(ctx context.Context, service string) (*controller.ServiceStatus, error) {
	svc, err := c.service(ctx, service)
	if err != nil {
		return nil, fmt.Errorf("lb show %s: %w", service, err)
	}
	b, err := c.backendFor(svc.Backend)
	if err != nil {
		return nil, fmt.Errorf("lb show %s: %w", service, err)
	}
	defer b.Close()
	st, err := b.Stats(*svc)
	if err != nil {
		return nil, fmt.Errorf("lb show %s: %s backend: %w", service, svc.Backend, err)
	}
	return st, nil
}

// restoreServices programs every recorded service the kernel lacks
// (Stats says ErrNotFound) or whose targets differ from the record.
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
		b, err := c.backendFor(svc.Backend)
		if err != nil {
			errs = append(errs, fmt.Errorf("restore service %s: %w", svc.Name, err))
			continue
		}
		st, err := b.Stats(svc)
		if err == nil && sameTargets(st.Targets, svc.Targets) {
			b.Close()
			continue
		}
		if err := b.Ensure(svc); err != nil {
			errs = append(errs, fmt.Errorf("restore service %s: %s backend: %w", svc.Name, b.Name(), err))
		} else {
			acts = append(acts, fmt.Sprintf("restored service %s (%s, %s) with %s", svc.Name, svc.Address, plural(len(svc.Targets), "target"), b.Name()))
		}
		b.Close()
	}
	return acts, errors.Join(errs...)
}

// sameTargets compares the kernel's per-target counters' keys with the record.
func sameTargets(kernel map[string]controller.Counters, want []controller.Target) bool {
	if len(kernel) != len(want) {
		return false
	}
	for _, t := range want {
		if _, ok := kernel[t.Address]; !ok {
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
