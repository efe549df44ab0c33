package ipvs

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/pkg/lb/internal/spec"
)

// Ensure makes the IPVS service with svc's address, protocol and port
// exactly svc: settings and the set of real servers.
func (b *Backend) Ensure(svc spec.Service) error {
	s, err := spec.Parse(svc)
	if err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.ensure(s); err != nil {
		return fmt.Errorf("%s: ipvs: %w", s.Prefix(), err)
	}
	return nil
}

func (b *Backend) ensure(s *spec.Spec) error {
	if err := b.available(); err != nil {
		return err
	}
	if err := b.ensureVIP(s.VIP.Addr()); err != nil {
		return err
	}
	want := toSvc(s)
	cur, err := b.g.getService(want)
	switch {
	case notFound(err):
		if err := b.g.newService(want); err != nil {
			return fmt.Errorf("add service %s/%s: %w", s.VIP, s.Protocol, schedErr(s, err))
		}
	case err != nil:
		return fmt.Errorf("get service %s/%s: %w", s.VIP, s.Protocol, err)
	case !sameSettings(cur, want):
		if err := b.g.setService(want); err != nil {
			return fmt.Errorf("update service %s/%s: %w", s.VIP, s.Protocol, schedErr(s, err))
		}
	}
	have, err := b.g.dests(want)
	if err != nil {
		return fmt.Errorf("list real servers: %w", err)
	}
	for _, d := range have {
		if !slices.ContainsFunc(s.Targets, func(t spec.ParsedTarget) bool { return t.Addr == d.addr }) {
			if err := b.g.delDest(want, d); err != nil && !notFound(err) {
				return fmt.Errorf("remove target %s: %w", d.addr, err)
			}
		}
	}
	for _, t := range s.Targets {
		d := toDest(t)
		i := slices.IndexFunc(have, func(h *dest) bool { return h.addr == t.Addr })
		switch {
		case i < 0:
			err = b.g.newDest(want, d)
		case have[i].weight != d.weight || have[i].fwd != d.fwd:
			err = b.g.setDest(want, d)
		default:
			continue
		}
		if err != nil {
			return fmt.Errorf("target %s: %w", t.Addr, err)
		}
	}
	return nil
}

// schedErr explains ENOENT from adding a service: the scheduler module
// is missing.
func schedErr(s *spec.Spec, err error) error {
	if errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("scheduler %s (ip_vs_%s) is not available in this kernel: %v: %w",
			s.Scheduler, s.Scheduler, err, api.ErrUnsupported)
	}
	return err
}

// AddTarget adds (or updates) one real server; if the service is missing
// it runs Ensure instead.
func (b *Backend) AddTarget(svc spec.Service, t spec.Target) error {
	return b.changeTarget(svc, t, "add")
}

// RemoveTarget removes one real server; one already gone is no error.
func (b *Backend) RemoveTarget(svc spec.Service, t spec.Target) error {
	return b.changeTarget(svc, t, "remove")
}

// SetTarget edits one real server's weight and forwarding in place
// (IPVS_CMD_SET_DEST): its connections stay. Weight 0 quiesces it: IPVS
// schedules it no new connection. A real server that is missing is added.
func (b *Backend) SetTarget(svc spec.Service, t spec.Target) error {
	return b.changeTarget(svc, t, "set")
}

func (b *Backend) changeTarget(svc spec.Service, t spec.Target, verb string) error {
	s, err := spec.Parse(svc)
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
	if err := b.available(); err != nil {
		return err
	}
	k, d := toSvc(s), toDest(pt)
	switch verb {
	case "add":
		if err = b.g.newDest(k, d); errors.Is(err, unix.EEXIST) {
			err = b.g.setDest(k, d)
		}
	case "set":
		if err = b.g.setDest(k, d); errors.Is(err, unix.ENOENT) {
			err = b.g.newDest(k, d)
		}
	default:
		if err = b.g.delDest(k, d); errors.Is(err, unix.ENOENT) {
			err = nil // already gone
		}
	}
	if errors.Is(err, unix.ESRCH) {
		err = b.ensure(s) // the service itself is missing
	}
	if err != nil {
		return fmt.Errorf("%s: ipvs: %s target %s: %w", s.Prefix(), verb, pt.Addr, err)
	}
	return nil
}

// Delete removes the IPVS service (gone already is fine) and releases its
// address.
func (b *Backend) Delete(svc spec.Service) error {
	k, err := keyOf(svc)
	if err != nil {
		return fmt.Errorf("lb %s: ipvs: delete: %w", svc.Name, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.available(); err != nil {
		return err
	}
	if err := b.g.delService(k); err != nil && !notFound(err) {
		return fmt.Errorf("lb %s: ipvs: delete service %s: %w", svc.Name, k.addr, err)
	}
	if err := b.releaseVIP(vipOf(k)); err != nil {
		return fmt.Errorf("lb %s: ipvs: delete: %w", svc.Name, err)
	}
	return nil
}

// Stats reads IPVS's counters of the service and its real servers:
// Packets and Bytes add both directions (with NAT, IPVS sees replies).
// Active is what a drain waits on: for TCP and SCTP a real server's active
// (established) connections, not the inactive ones IPVS keeps minutes
// after they ended (FIN_WAIT, TIME_WAIT, CLOSE); UDP has no established
// state, so there every connection IPVS holds counts.
func (b *Backend) Stats(svc spec.Service) (*spec.Stats, error) {
	k, err := keyOf(svc)
	if err != nil {
		return nil, fmt.Errorf("lb %s: ipvs: stats: %w", svc.Name, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.available(); err != nil {
		return nil, err
	}
	cur, err := b.g.getService(k)
	if notFound(err) {
		return nil, api.Errorf(api.ErrNotFound, "lb %s: ipvs: service %s is not programmed", svc.Name, k.addr)
	}
	if err != nil {
		return nil, fmt.Errorf("lb %s: ipvs: stats: %w", svc.Name, err)
	}
	ds, err := b.g.dests(k)
	if err != nil {
		return nil, fmt.Errorf("lb %s: ipvs: stats: list real servers: %w", svc.Name, err)
	}
	st := &spec.Stats{Service: counters(cur.stats), Targets: map[string]spec.Counters{}, Active: map[string]uint64{},
		Programmed: programmed(svc.Name, cur, ds)}
	names := map[string]string{}
	for _, t := range svc.Targets {
		if ap, err := api.ParseAddrPort(t.Address); err == nil {
			names[ap.String()] = t.Address
		}
	}
	for _, d := range ds {
		name, ok := names[d.addr.String()]
		if !ok {
			name = d.addr.String()
		}
		st.Targets[name] = counters(d.stats)
		st.Active[name] = uint64(d.active)
		if strings.EqualFold(svc.Protocol, "udp") {
			st.Active[name] += uint64(d.inactive)
		}
		st.ActiveTotal += st.Active[name]
	}
	return st, nil
}

func counters(s stats) spec.Counters {
	return spec.Counters{Connections: s.conns, Packets: s.inPkts + s.outPkts, Bytes: s.inBytes + s.outBytes}
}

// programmed reads back a service as the kernel holds it.
func programmed(name string, s *svc, ds []*dest) spec.Service {
	out := spec.Service{Name: name, Address: s.addr.String(), Scheduler: s.sched}
	for p, n := range api.Protocols {
		if uint16(n) == s.proto {
			out.Protocol = p
		}
	}
	if s.flags&svcFlagPersistent != 0 {
		out.Persistence = time.Duration(s.timeout) * time.Second
	}
	for _, d := range ds {
		fwd := api.ForwardNAT
		switch d.fwd {
		case fwdDirectRoute:
			fwd = api.ForwardDR
		case fwdTunnel:
			fwd = api.ForwardTunnel
		}
		out.Targets = append(out.Targets, spec.Target{Address: d.addr.String(), Weight: int(d.weight), Forward: fwd})
	}
	return out
}
