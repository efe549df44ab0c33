package local

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
)

// A drain gives a target weight 0 in the kernel (no new connections, the
// open ones go on), records when it ends at the latest and which circuit
// process waits on it, and removes the target when the kernel counts no
// active connection to it or the time is up. The waiting process may be
// interrupted or killed, or the host rebooted: a draining target whose
// waiter is gone is finished by the next lb command on its service, by gc
// and by restore, on the same terms, so no target is ever left at weight
// 0 for good.

// drainPoll is how often a drain reads the kernel's connection counts.
const drainPoll = 200 * time.Millisecond

// SetTarget changes one target's weight or forwarding in place: IPVS edits
// the destination and the nftables backend changes elements, so open
// connections stay where they are. A weight ends a drain.
func (c *Controller) SetTarget(ctx context.Context, service string, ch api.TargetChange) error {
	if err := c.refuseClusterDrain(ctx, service, "lb set"); err != nil {
		return err
	}
	err := c.changeTargets(ctx, service, func(svc *api.Service) ([]api.Target, error) {
		i, err := api.TargetIndex(svc, ch.Address)
		if err != nil {
			return nil, err
		}
		t, err := api.ChangeTarget(svc, svc.Targets[i], ch)
		if err != nil {
			return nil, err
		}
		svc.Targets[i] = t
		return []api.Target{t}, nil
	}, opSet)
	if err != nil {
		return fmt.Errorf("lb set %s: %w", service, err)
	}
	return nil
}

// refuseClusterDrain: a cluster service's targets are every node's, and
// change through circuit-agent, which has no set or drain.
func (c *Controller) refuseClusterDrain(ctx context.Context, service, what string) error {
	if svc, err := c.service(ctx, service); err == nil && svc.Cluster {
		return fmt.Errorf("%s %s: %w", what, service, api.Errorf(api.ErrUnsupported, "a cluster service's targets change with lb add and lb remove"))
	}
	return nil
}

// DrainTargets drains targets and waits until each is gone.
func (c *Controller) DrainTargets(ctx context.Context, req api.DrainRequest) (*api.Report, error) {
	wrap := func(err error) error { return fmt.Errorf("lb remove %s: %w", req.Service, err) }
	fail := func(err error) (*api.Report, error) { return nil, wrap(err) }
	if err := api.ValidDrain(req.Timeout); err != nil {
		return fail(err)
	}
	if len(req.Targets) == 0 {
		return fail(api.Errorf(api.ErrInvalid, "no target given"))
	}
	if err := c.refuseClusterDrain(ctx, req.Service, "lb remove"); err != nil {
		return nil, err
	}
	self := c.k.procs.Self()
	until := time.Now().Add(req.Timeout).UTC().Round(time.Millisecond)
	var addrs []string
	err := c.changeTargets(ctx, req.Service, func(svc *api.Service) ([]api.Target, error) {
		var changed []api.Target
		for _, a := range req.Targets {
			i, err := api.TargetIndex(svc, a)
			if err != nil {
				return nil, err
			}
			t := &svc.Targets[i]
			if t.Draining() && c.ownerRuns(&t.DrainOwner) {
				return nil, api.Errorf(api.ErrBusy, "target %s is already draining, for circuit process %d", t.Address, t.DrainOwner.PID)
			}
			t.DrainUntil, t.DrainOwner = until, self
			changed = append(changed, *t)
			addrs = append(addrs, t.Address)
		}
		return changed, nil
	}, opSet)
	if err != nil {
		return fail(err)
	}
	if req.Progress != nil {
		req.Progress(api.DrainStarted(req.Service, addrs, req.Timeout))
	}
	rep := &api.Report{Actions: []string{}}
	tick := time.NewTicker(drainPoll)
	defer tick.Stop()
	interrupted := func() (*api.Report, error) {
		c.abandonDrains(req.Service, addrs, until)
		return rep, wrap(api.DrainInterrupted(addrs, until, ctx.Err()))
	}
	for {
		if ctx.Err() != nil {
			return interrupted()
		}
		var left []string
		for _, a := range addrs {
			line, err := c.drainStep(ctx, req.Service, a, until, self)
			if err != nil && ctx.Err() != nil {
				return interrupted() // what failed was waiting on ctx
			}
			if err != nil {
				c.abandonDrains(req.Service, addrs, until)
				return rep, wrap(err)
			}
			if line != "" {
				rep.Actions = append(rep.Actions, line)
				continue
			}
			left = append(left, a)
		}
		if addrs = left; len(addrs) == 0 {
			return rep, nil
		}
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}

// drainStep removes the target addr when its drain is over and says so;
// "" while it still drains. A target that another command took meanwhile
// (lb set, lb remove, a new drain) is no longer this drain's.
func (c *Controller) drainStep(ctx context.Context, service, addr string, until time.Time, self api.Process) (string, error) {
	ours := func(t api.Target) bool { return t.Address == addr && t.DrainUntil.Equal(until) && t.DrainOwner == self }
	svc, err := c.service(ctx, service)
	if errors.Is(err, api.ErrNotFound) {
		return fmt.Sprintf("stopped draining %s: service %s was deleted", addr, service), nil
	}
	if err != nil {
		return "", err
	}
	if !slices.ContainsFunc(svc.Targets, ours) {
		return fmt.Sprintf("stopped draining %s: another command changed it", addr), nil
	}
	active, err := c.activeConns(svc)
	if err != nil {
		return "", err
	}
	if active[addr] > 0 && time.Now().Before(until) {
		return "", nil
	}
	var line string
	err = c.changeTargets(ctx, service, func(svc *api.Service) ([]api.Target, error) {
		i := slices.IndexFunc(svc.Targets, ours)
		if i < 0 {
			line = fmt.Sprintf("stopped draining %s: another command changed it", addr)
			return nil, nil
		}
		t := svc.Targets[i]
		svc.Targets = slices.Delete(svc.Targets, i, i+1)
		line = api.DrainDone(service, addr, active[addr])
		return []api.Target{t}, nil
	}, opRemove)
	return line, err
}

// activeConns reads the connections each target of svc holds; none when
// the kernel has no such service (after a reboot).
func (c *Controller) activeConns(svc *api.Service) (map[string]uint64, error) {
	b, err := c.k.lb(svc.Backend)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	st, err := b.Stats(toLB(*svc))
	if errors.Is(err, api.ErrNotFound) {
		return map[string]uint64{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s backend: %w", b.Name(), err)
	}
	return st.Active, nil
}

// abandonDrains gives up waiting on drains: their owner is cleared, so the
// next command on the service finishes them without waiting for this
// process to exit.
func (c *Controller) abandonDrains(service string, addrs []string, until time.Time) {
	err := c.store.Update(context.Background(), func(tx ds.Tx) error {
		svc, err := tx.GetService(service)
		if err != nil {
			return err
		}
		for i, t := range svc.Targets {
			if slices.Contains(addrs, t.Address) && t.DrainUntil.Equal(until) {
				svc.Targets[i].DrainOwner = api.Process{}
			}
		}
		return tx.PutService(svc)
	})
	if err != nil && !errors.Is(err, api.ErrNotFound) {
		c.log.WithError(err).Warnf("leave the drains of service %s to the next command", service)
	}
}

// leftDrains reports whether svc has a draining target no live process
// waits on.
func (c *Controller) leftDrains(svc *api.Service) bool {
	return slices.ContainsFunc(svc.Targets, func(t api.Target) bool { return t.Draining() && !c.ownerRuns(&t.DrainOwner) })
}

// finishDrainsLocking is finishDrains under the lb lock.
func (c *Controller) finishDrainsLocking(ctx context.Context, service string) error {
	unlock, err := c.lock(ctx, "lb")
	if err != nil {
		return err
	}
	defer unlock()
	_, err = c.finishDrains(ctx, service, false)
	return err
}

// finishDrains removes the draining targets of a service that no live
// process waits on, once they hold no connection or their time is up; the
// caller holds the lb lock. With dryRun it only says what it would do.
func (c *Controller) finishDrains(ctx context.Context, service string, dryRun bool) ([]string, error) {
	svc, err := c.service(ctx, service)
	if err != nil || !c.leftDrains(svc) {
		return nil, nil // a missing service is the caller's to report
	}
	active, err := c.activeConns(svc)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	over := func(t api.Target) bool {
		return t.Draining() && !c.ownerRuns(&t.DrainOwner) && (active[t.Address] == 0 || !now.Before(t.DrainUntil))
	}
	var lines []string
	for _, t := range svc.Targets {
		if over(t) {
			lines = append(lines, api.DrainDone(service, t.Address, active[t.Address]))
		}
	}
	if len(lines) == 0 {
		return nil, nil
	}
	if dryRun {
		for i := range lines {
			lines[i] = "would finish a drain: " + lines[i]
		}
		return lines, nil
	}
	err = c.changeTargetsLocked(ctx, service, func(svc *api.Service) ([]api.Target, error) {
		var gone []api.Target
		svc.Targets = slices.DeleteFunc(svc.Targets, func(t api.Target) bool {
			if over(t) {
				gone = append(gone, t)
				return true
			}
			return false
		})
		return gone, nil
	}, opRemove)
	if err != nil {
		return nil, err
	}
	for i := range lines {
		lines[i] = "finished an interrupted drain: " + lines[i]
	}
	return lines, nil
}

// gcDrains finishes every service's interrupted drains.
func (c *Controller) gcDrains(ctx context.Context, dryRun bool) ([]string, error) {
	unlock, err := c.lock(ctx, "lb")
	if err != nil {
		return nil, err
	}
	defer unlock()
	svcs, err := c.ListServices(ctx)
	if err != nil {
		return nil, err
	}
	var lines []string
	var errs []error
	for _, s := range svcs {
		if s.Cluster {
			continue
		}
		l, err := c.finishDrains(ctx, s.Name, dryRun)
		lines = append(lines, l...)
		if err != nil {
			errs = append(errs, fmt.Errorf("gc: drains of service %s: %w", s.Name, err))
		}
	}
	return lines, joinErrors(errs...)
}
