package nftables

import (
	"errors"
	"fmt"
	"slices"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/pkg/lb/internal/spec"
)

// AddTarget adds t (already part of svc). Like RemoveTarget and SetTarget
// it reads the service's roster (one request) and sends one transaction of
// element changes: the targets map, the per-target counters and the slots
// the change moves. No rule, chain or verdict changes, so the kernel does
// not re-validate the table. When the rules must change too (the number
// of live targets crossed a slot step, or the service is missing or in the
// first layout), or anything fails, it falls back to Ensure.
func (b *Backend) AddTarget(svc spec.Service, t spec.Target) error {
	return b.changeTarget(svc, t, "add")
}

// RemoveTarget removes t (no longer part of svc); one already gone is not
// an error. Its connections keep their DNAT until they end.
func (b *Backend) RemoveTarget(svc spec.Service, t spec.Target) error {
	return b.changeTarget(svc, t, "remove")
}

// SetTarget changes t's weight in place (svc is the service after the
// change). Weight 0 drains it: it loses its slots, and its connections
// keep their DNAT until they end.
func (b *Backend) SetTarget(svc spec.Service, t spec.Target) error {
	return b.changeTarget(svc, t, "set")
}

func (b *Backend) changeTarget(svc spec.Service, t spec.Target, verb string) error {
	s, err := validate(svc)
	if err != nil {
		return err
	}
	pt, err := spec.ParseTarget(s, t)
	if err != nil {
		return fmt.Errorf("%s: %s target: %w", s.Prefix(), verb, err)
	}
	i := slices.IndexFunc(s.Targets, func(x spec.ParsedTarget) bool { return x.Addr == pt.Addr })
	if (i >= 0) != (verb != "remove") || (verb == "set" && s.Targets[i] != pt) {
		return fmt.Errorf("%s: %s target %s: pass the service as it is after the change: %w",
			s.Prefix(), verb, pt.Addr, api.ErrInvalid)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.syncTargets(s); err != nil {
		if err := b.ensure(s); err != nil {
			return fmt.Errorf("%s: %s target %s: nftables: %w", s.Prefix(), verb, pt.Addr, err)
		}
	}
	return nil
}

// errRules: the change needs more than elements.
var errRules = errors.New("the service's rules must change")

// syncTargets brings a programmed service's targets to s's with element
// changes only.
func (b *Backend) syncTargets(s *spec.Spec) error {
	p, err := newPlan(s)
	if err != nil {
		return err
	}
	hdr, ok, roster, err := b.readRoster(s.VIP, s.Proto)
	if err != nil {
		return err
	}
	if !ok || hdr != p.hdr {
		return errRules
	}
	bt := newBatch()
	bt.applyRoster(p, hdr, true, roster, nextRoster(roster, s.Targets))
	return b.commit(bt)
}
