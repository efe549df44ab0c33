package fake

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/pkg/lb"
)

// SetActive sets the connections a target holds now (what a drain waits
// on); 0 ends them.
func (f *Fake) SetActive(service, target string, n uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.active[service] == nil {
		f.active[service] = map[string]uint64{}
	}
	f.active[service][target] = n
}

// SetTarget changes a target's weight or forwarding in place, as the local
// controller does.
func (f *Fake) SetTarget(ctx context.Context, service string, ch api.TargetChange) error {
	return f.run("SetTarget", func() error {
		if err := f.setTarget(service, ch); err != nil {
			return fmt.Errorf("lb set %s: %w", service, err)
		}
		return nil
	})
}

func (f *Fake) setTarget(service string, ch api.TargetChange) error {
	s, err := f.service(service)
	if err != nil {
		return err
	}
	f.finishDrains(s, false)
	next := cloneService(*s)
	i, err := api.TargetIndex(&next, ch.Address)
	if err != nil {
		return err
	}
	t, err := api.ChangeTarget(&next, next.Targets[i], ch)
	if err != nil {
		return err
	}
	next.Targets[i] = t
	if err := lb.Validate(s.Backend, toLB(next)); err != nil {
		return err
	}
	*s = next
	return nil
}

// DrainTargets gives the targets no new connections and removes each when
// its connections end (SetActive 0) or the timeout passed; interrupted, it
// leaves them draining for the next lb command, gc or restore.
func (f *Fake) DrainTargets(ctx context.Context, req api.DrainRequest) (*api.Report, error) {
	var until time.Time
	addrs, err := call(f, "DrainTargets", func() (addrs []string, err error) {
		addrs, until, err = f.startDrain(req)
		return addrs, err
	})
	if err != nil {
		return nil, fmt.Errorf("lb remove %s: %w", req.Service, err)
	}
	if req.Progress != nil {
		req.Progress(api.DrainStarted(req.Service, addrs, req.Timeout))
	}
	r := &api.Report{Actions: []string{}}
	defer func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, a := range addrs {
			delete(f.draining, req.Service+"/"+a)
		}
	}()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for len(addrs) > 0 {
		if err := ctx.Err(); err != nil {
			return r, fmt.Errorf("lb remove %s: %w", req.Service, api.DrainInterrupted(addrs, until, err))
		}
		f.mu.Lock()
		var left []string
		for _, a := range addrs {
			if line := f.drainStep(req.Service, a, until); line != "" {
				r.Actions = append(r.Actions, line)
				delete(f.draining, req.Service+"/"+a)
				continue
			}
			left = append(left, a)
		}
		addrs = left
		f.mu.Unlock()
		if len(addrs) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return r, fmt.Errorf("lb remove %s: %w", req.Service, api.DrainInterrupted(addrs, until, ctx.Err()))
		case <-tick.C:
		}
	}
	return r, nil
}

func (f *Fake) startDrain(req api.DrainRequest) ([]string, time.Time, error) {
	if err := api.ValidDrain(req.Timeout); err != nil {
		return nil, time.Time{}, err
	}
	s, err := f.service(req.Service)
	if err != nil {
		return nil, time.Time{}, err
	}
	if len(req.Targets) == 0 {
		return nil, time.Time{}, api.Errorf(api.ErrInvalid, "no target given")
	}
	f.finishDrains(s, false)
	next := cloneService(*s)
	until := time.Now().Add(req.Timeout).UTC()
	var addrs []string
	for _, a := range req.Targets {
		i, err := api.TargetIndex(&next, a)
		if err != nil {
			return nil, time.Time{}, err
		}
		t := &next.Targets[i]
		if f.draining[s.Name+"/"+t.Address] {
			return nil, time.Time{}, api.Errorf(api.ErrBusy, "target %s is already draining, by another circuit process", t.Address)
		}
		t.DrainUntil = until
		addrs = append(addrs, t.Address)
	}
	*s = next
	for _, a := range addrs {
		f.draining[s.Name+"/"+a] = true
	}
	return addrs, until, nil
}

// drainStep removes a target whose drain is over and says so; "" while it
// still drains. A target that lb set or lb remove took meanwhile is no
// longer this drain's.
func (f *Fake) drainStep(service, addr string, until time.Time) string {
	s, ok := f.services[service]
	if !ok {
		return fmt.Sprintf("target %s left service %s with it", addr, service)
	}
	i := slices.IndexFunc(s.Targets, func(t api.Target) bool { return t.Address == addr })
	if i < 0 || !s.Targets[i].Draining() || !s.Targets[i].DrainUntil.Equal(until) {
		return fmt.Sprintf("stopped draining %s: another command changed it", addr)
	}
	active := f.active[service][addr]
	if active > 0 && time.Now().Before(until) {
		return ""
	}
	s.Targets = slices.Delete(slices.Clone(s.Targets), i, i+1)
	return api.DrainDone(service, addr, active)
}

// finishDrains removes the draining targets no DrainTargets call waits on
// any more whose connections ended or whose time is up.
func (f *Fake) finishDrains(s *api.Service, dryRun bool) []string {
	var out []string
	kept := s.Targets[:0:0]
	for _, t := range s.Targets {
		active := f.active[s.Name][t.Address]
		if !t.Draining() || f.draining[s.Name+"/"+t.Address] || (active > 0 && time.Now().Before(t.DrainUntil)) {
			kept = append(kept, t)
			continue
		}
		line := api.DrainDone(s.Name, t.Address, active)
		if dryRun {
			out = append(out, "would finish: "+line)
			kept = append(kept, t)
			continue
		}
		out = append(out, "finished an interrupted drain: "+line)
	}
	if !dryRun {
		s.Targets = kept
	}
	return out
}
