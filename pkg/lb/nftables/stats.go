package nftables

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/pkg/lb/internal/conntrack"
	"github.com/circuit-cni/circuit/pkg/lb/internal/nsfd"
	"github.com/circuit-cni/circuit/pkg/lb/internal/spec"
)

// Stats reads the service's counters:
//   - Connections: the counter at the top of the service chain (NAT
//     chains see only the first packet of a connection).
//   - Packets, Bytes: the service's @flowsN element, counting both
//     directions (before DNAT and after un-DNAT).
//   - per target: Packets and Bytes from @tbytesN (every packet of its
//     connections, both directions), Connections from @tconnsN (their
//     first packets), both counted after DNAT.
//   - Active: the conntrack entries of the service DNATed to each target
//     (see package conntrack).
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
	st := &spec.Stats{Targets: map[string]spec.Counters{}, Active: map[string]uint64{}, Outdated: cur.v1}
	if st.Service.Connections, err = b.counter(counterDef(svc.Name)); err != nil {
		return nil, err
	}
	vip, proto, v6 := cur.rec.vip, cur.rec.proto, cur.v6()
	if vip.IsValid() {
		flows, err := getElems(b.nl, flowsSet(v6), [][]byte{tupleKey(vip, proto)})
		if err != nil {
			return nil, err
		}
		for _, e := range flows {
			st.Service.Packets, st.Service.Bytes = e.packets, e.bytes
		}
	}
	names := targetNames(svc)
	name := func(t netip.AddrPort) string {
		if n, ok := names[t]; ok {
			return n
		}
		return t.String()
	}
	if cur.v1 {
		if err := b.v1TargetStats(svc.Name, cur, st, name); err != nil {
			return nil, err
		}
	} else if err := b.targetStats(cur, st, name); err != nil {
		return nil, err
	}
	for _, t := range st.Programmed.Targets {
		st.Active[name(netip.MustParseAddrPort(t.Address))] = 0 // every target, 0 included
	}
	if vip.IsValid() {
		active, err := conntrack.Count(nsfd.Fd(b.ns), vip, proto)
		if err != nil {
			return nil, err
		}
		for t, n := range active {
			st.Active[name(t)] = n
			st.ActiveTotal += n
		}
	}
	st.Programmed.Name = svc.Name
	if cur.hasRec {
		st.Programmed.Address, st.Programmed.Persistence = cur.rec.vip.String(), cur.rec.persistence
		st.Programmed.Scheduler = cur.rec.scheduler
		for p, n := range api.Protocols {
			if n == cur.rec.proto {
				st.Programmed.Protocol = p
			}
		}
	}
	return st, nil
}

// targetStats reads the per-target counters of the current layout.
func (b *Backend) targetStats(cur *current, st *spec.Stats, name func(netip.AddrPort) string) error {
	vip, proto, v6 := cur.rec.vip, cur.rec.proto, cur.v6()
	keys := make([][]byte, len(cur.roster))
	for i, e := range cur.roster {
		keys[i] = pairKey(vip, proto, e.addr)
		st.Targets[name(e.addr)] = spec.Counters{}
		st.Programmed.Targets = append(st.Programmed.Targets,
			spec.Target{Address: e.addr.String(), Weight: e.weight, Forward: api.ForwardNAT})
	}
	for _, set := range []string{tbytesSet(v6), tconnsSet(v6)} {
		es, err := getElems(b.nl, set, keys)
		if err != nil {
			return err
		}
		for _, e := range es {
			ap, ok := parseTargetKey(e.key[len(e.key)-len(targetKey(vip)):])
			if !ok {
				continue
			}
			c := st.Targets[name(ap)]
			if set == tconnsSet(v6) {
				c.Connections = e.packets
			} else {
				c.Packets, c.Bytes = e.packets, e.bytes
			}
			st.Targets[name(ap)] = c
		}
	}
	return nil
}

// v1TargetStats reads a first-layout service's per-target connection
// counters (it kept no per-target packets or bytes, nor weights: 0).
func (b *Backend) v1TargetStats(svcName string, cur *current, st *spec.Stats, name func(netip.AddrPort) string) error {
	for _, t := range cur.v1Target {
		n, err := b.counter(&nftables.CounterObj{Table: table(), Name: v1TargetChain(svcName, t)})
		if err != nil {
			return err
		}
		st.Targets[name(t)] = spec.Counters{Connections: n}
		st.Programmed.Targets = append(st.Programmed.Targets, spec.Target{Address: t.String(), Forward: api.ForwardNAT})
	}
	return nil
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
