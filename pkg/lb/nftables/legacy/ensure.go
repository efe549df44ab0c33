package legacy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/pkg/lb/internal/spec"
)

// Ensure makes the kernel's view of svc exactly svc, creating the table
// and the service as needed, in one transaction.
func (b *Backend) Ensure(svc spec.Service) error {
	s, err := validate(svc)
	if err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.ensure(s); err != nil {
		return fmt.Errorf("%s: nftables: %w", s.Prefix(), err)
	}
	return nil
}

func (b *Backend) ensure(s *spec.Spec) error {
	exists, err := b.tableExists()
	if err != nil {
		return err
	}
	if !exists {
		bt := b.newBatch()
		bt.createTable()
		bt.createService(s)
		err := b.commit(bt)
		switch {
		case errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EOPNOTSUPP):
			return fmt.Errorf("create table inet %s: %w (the kernel lacks an nftables feature this backend needs: "+
				"nat, numgen, jhash, ct, masquerade or dynamic sets): %w", tableName, err, api.ErrUnsupported)
		case err == nil || !errors.Is(err, unix.EEXIST):
			return wrapCommit("create table inet "+tableName, err)
		}
		// Another process created the table meanwhile: go on with it.
	}
	cur, err := b.readService(s.Name)
	if err != nil {
		return err
	}
	bt := b.newBatch()
	if cur == nil {
		bt.createService(s)
	} else {
		bt.updateService(b, s, cur)
	}
	return wrapCommit("program service", b.commit(bt))
}

// AddTarget adds t (already part of svc) in one transaction that touches
// only this service's chain, the new target's objects and one element of
// the service's target set, with no reads. If that fails (e.g. the
// service is not programmed), it falls back to Ensure.
func (b *Backend) AddTarget(svc spec.Service, t spec.Target) error {
	return b.changeTarget(svc, t, true)
}

// RemoveTarget removes t (no longer part of svc) the same way.
func (b *Backend) RemoveTarget(svc spec.Service, t spec.Target) error {
	return b.changeTarget(svc, t, false)
}

func (b *Backend) changeTarget(svc spec.Service, t spec.Target, add bool) error {
	s, err := validate(svc)
	if err != nil {
		return err
	}
	verb := map[bool]string{true: "add", false: "remove"}[add]
	ap, err := api.ParseAddrPort(t.Address)
	if err != nil {
		return fmt.Errorf("%s: %s target: %w", s.Prefix(), verb, err)
	}
	if slices.Contains(addrs(s.Targets), ap) != add {
		return fmt.Errorf("%s: %s target %s: pass the service as it is after the change: %w",
			s.Prefix(), verb, ap, api.ErrInvalid)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	bt := b.newBatch()
	elem := targetElems([]netip.AddrPort{ap})
	if add {
		bt.addElems(targetSetRef(s.Name), elem)
		bt.addTarget(s, ap)
	}
	bt.flushChain(svcChainDef(s.Name))
	bt.fail(bt.addServiceRules(s))
	if !add {
		bt.delTarget(s.Name, ap, s.Persistence > 0)
		bt.delElems(targetSetRef(s.Name), elem)
	}
	if err := b.commit(bt); err != nil {
		if err := b.ensure(s); err != nil {
			return fmt.Errorf("%s: %s target %s: nftables: %w", s.Prefix(), verb, ap, err)
		}
	}
	return nil
}

// createService queues every object of a service that is not programmed.
func (bt *batch) createService(s *spec.Spec) {
	bt.addSet(targetSetDef(s.Name, s.IPv6()), targetElems(addrs(s.Targets)))
	for _, t := range s.Targets {
		bt.addTarget(s, t.Addr)
	}
	bt.addObj(counterDef(s.Name))
	bt.addChain(svcChainDef(s.Name))
	bt.fail(bt.addServiceRules(s))
	bt.addVIP(s)
}

// updateService queues the changes from cur to s. Adds are idempotent,
// so objects someone deleted by hand come back.
func (bt *batch) updateService(b *Backend, s *spec.Spec, cur *current) {
	if cur.hasRec && (cur.rec.vip != s.VIP || cur.rec.proto != s.Proto) {
		bt.delVIP(cur.rec.vip, cur.rec.proto)
	}
	bt.flushChain(svcChainDef(s.Name)) // first: it references the rest
	want := addrs(s.Targets)
	var stale []netip.AddrPort
	for _, t := range cur.targets {
		if !slices.Contains(want, t) {
			stale = append(stale, t)
			bt.delTarget(s.Name, t, cur.hadAffinity(b, s.Name, t))
		}
	}
	for _, t := range want {
		had := slices.Contains(cur.targets, t) && cur.hadAffinity(b, s.Name, t)
		bt.addTarget(s, t)
		if had && s.Persistence == 0 {
			bt.delSet(&nftables.Set{Table: table(), Name: affinitySet(s.Name, t)})
		}
	}
	if cur.v6 != s.IPv6() {
		// The key type changes with the family: replace the set.
		bt.delSet(targetSetRef(s.Name))
		bt.addSet(targetSetDef(s.Name, s.IPv6()), targetElems(want))
	} else {
		bt.delElems(targetSetRef(s.Name), targetElems(stale))
		bt.addElems(targetSetRef(s.Name), targetElems(want))
	}
	bt.addObj(counterDef(s.Name))
	bt.addChain(svcChainDef(s.Name))
	bt.fail(bt.addServiceRules(s))
	bt.addVIP(s)
}

// addVIP sends the service address to the service chain and counts it.
func (bt *batch) addVIP(s *spec.Spec) {
	v6 := s.IPv6()
	bt.addElems(servicesRef(v6), []nftables.SetElement{serviceElem(s)})
	bt.addElems(flowsRef(v6), []nftables.SetElement{{Key: tupleKey(s.VIP, s.Proto)}})
}

func (bt *batch) delVIP(vip netip.AddrPort, proto uint8) {
	v6 := vip.Addr().Is6()
	bt.delElems(servicesRef(v6), []nftables.SetElement{{Key: tupleKey(vip, proto)}})
	bt.delElems(flowsRef(v6), []nftables.SetElement{{Key: tupleKey(vip, proto)}})
}

// References to existing sets: element changes need only table and name.
func servicesRef(v6 bool) *nftables.Set {
	return &nftables.Set{Table: table(), Name: servicesMap(v6), IsMap: true}
}
func flowsRef(v6 bool) *nftables.Set { return &nftables.Set{Table: table(), Name: flowsSet(v6)} }
func targetSetRef(name string) *nftables.Set {
	return &nftables.Set{Table: table(), Name: targetSet(name)}
}

func wrapCommit(what string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.EEXIST) || errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("%s: %w (is the address already used by another service?): %w", what, err, api.ErrExists)
	}
	return fmt.Errorf("%s: %w", what, err)
}
