package nftables

import (
	"bytes"
	"fmt"
	"net/netip"

	"github.com/google/nftables"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/pkg/lb/internal/spec"
)

// Stats reads the service's counters:
//   - Connections: the counter at the top of the service chain. NAT chains
//     see only the first packet of a connection, so its packet count is
//     the number of new connections.
//   - Packets, Bytes: the service's @flowsN element, counting both
//     directions (before DNAT and after un-DNAT).
//   - per target: Connections, from the target chain's counter. Per-target
//     packets and bytes are not tracked by this backend (always 0).
func (b *Backend) Stats(svc spec.Service) (*spec.Stats, error) {
	if err := api.ValidServiceName(svc.Name); err != nil {
		return nil, fmt.Errorf("lb: %w", err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	st, err := b.stats(svc)
	if err != nil {
		return nil, fmt.Errorf("lb %s: nftables: stats: %w", svc.Name, err)
	}
	return st, nil
}

func (b *Backend) stats(svc spec.Service) (*spec.Stats, error) {
	exists, err := b.tableExists()
	if err != nil {
		return nil, err
	}
	var cur *current
	if exists {
		if cur, err = b.readService(svc.Name); err != nil {
			return nil, err
		}
	}
	if cur == nil {
		return nil, api.Errorf(api.ErrNotFound, "service is not programmed")
	}
	if s, err := spec.Parse(svc); err == nil {
		cur.fallbackRecord(s)
	}
	st := &spec.Stats{Targets: map[string]spec.Counters{}}
	if st.Service.Connections, err = b.counter(counterDef(svc.Name)); err != nil {
		return nil, err
	}
	if cur.rec.vip.IsValid() {
		flows, err := b.conn.GetSetElements(flowsRef(cur.rec.vip.Addr().Is6()))
		if err != nil {
			return nil, fmt.Errorf("list set %s: %w", flowsSet(cur.rec.vip.Addr().Is6()), err)
		}
		for _, e := range flows {
			if bytes.Equal(e.Key, cur.key()) && e.Counter != nil {
				st.Service.Packets, st.Service.Bytes = e.Counter.Packets, e.Counter.Bytes
			}
		}
	}
	names := targetNames(svc)
	for _, t := range cur.targets {
		n, err := b.counter(targetCounterDef(svc.Name, t))
		if err != nil {
			return nil, err
		}
		name, ok := names[t]
		if !ok {
			name = t.String()
		}
		st.Targets[name] = spec.Counters{Connections: n}
		// Weights live in the slots; only the target set is read back.
		st.Programmed.Targets = append(st.Programmed.Targets, spec.Target{Address: t.String(), Forward: api.ForwardNAT})
	}
	st.Programmed.Name = svc.Name
	if cur.hasRec {
		st.Programmed.Address, st.Programmed.Persistence = cur.rec.vip.String(), cur.rec.persistence
	}
	return st, nil
}

// counter returns the packet count of a named counter.
func (b *Backend) counter(o *nftables.CounterObj) (uint64, error) {
	obj, err := b.conn.GetObject(o)
	if err != nil {
		return 0, fmt.Errorf("get counter %s: %w", o.Name, err)
	}
	if c, ok := obj.(*nftables.CounterObj); ok {
		return c.Packets, nil
	}
	return 0, fmt.Errorf("counter %s: unexpected object %T", o.Name, obj)
}

// targetNames maps parsed target addresses to the strings the caller used.
func targetNames(svc spec.Service) map[netip.AddrPort]string {
	m := map[netip.AddrPort]string{}
	for _, t := range svc.Targets {
		if ap, err := api.ParseAddrPort(t.Address); err == nil {
			m[ap] = t.Address
		}
	}
	return m
}
