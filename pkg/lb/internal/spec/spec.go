// Package spec holds the load balancer's own types (what a caller asks a
// backend for, and what a backend reports) and parses a Service once, so
// that every backend works from the same validated, normalized Spec. The
// rules themselves (names, addresses, protocols, schedulers, weights) are
// circuit's, in package api.
package spec

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/circuit-cni/circuit/api"
)

// Service is a load-balanced service as a caller describes it to a backend.
type Service struct {
	Name        string
	Address     string // ip:port, IPv6 bracketed
	Protocol    string // tcp, udp or sctp; "" is tcp
	Scheduler   string // an IPVS scheduler name; "" is rr
	Persistence time.Duration
	Targets     []Target
}

// Target is one real server of a Service.
type Target struct {
	Address string // ip:port
	// Weight is 1..api.MaxWeight, or 0: draining. A draining target gets
	// no new connection; the ones it has go on until they end. Users never
	// set 0 (api.ValidWeight refuses it): the controller does, to drain.
	Weight  int
	Forward string // nat, dr or tunnel; "" is nat
}

// Counters are the kernel's statistics of a service or target: new
// connections, and packets and bytes in both directions.
type Counters struct {
	Connections uint64
	Packets     uint64
	Bytes       uint64
}

// Stats are a programmed service's counters, and its targets' by address,
// with the service as the kernel holds it.
type Stats struct {
	Service Counters
	Targets map[string]Counters
	// Active is the connections each target holds now, keyed as Targets
	// (IPVS: the destination's established connections, and for UDP every
	// one it holds; nftables: the conntrack entries of the service DNATed
	// to the target, but for TCP's TIME_WAIT and CLOSE ones), and
	// ActiveTotal their sum. A drain may end when a target's count is 0.
	// (Not a Counters field: controller/local converts Counters to
	// api.Counters, which must keep the same fields.)
	Active      map[string]uint64
	ActiveTotal uint64
	// Programmed is what the kernel holds for the service, as far as the
	// backend can read it back: scheduler, persistence, and the targets
	// with their weights and forwarding ("" where it cannot tell).
	Programmed Service
	// Outdated reports that the kernel holds the service in an older
	// layout of the backend; Ensure (or any target change) moves it to the
	// current one in place.
	Outdated bool
}

// Spec is a validated service.
type Spec struct {
	Name        string
	VIP         netip.AddrPort
	Protocol    string // tcp, udp or sctp
	Proto       uint8  // IP protocol number
	Scheduler   string
	Persistence time.Duration
	Targets     []ParsedTarget
}

// ParsedTarget is a validated target.
type ParsedTarget struct {
	Addr    netip.AddrPort
	Weight  int    // 1..MaxWeight, or 0: draining
	Forward string // nat, dr or tunnel
}

// Draining reports whether the target takes no new connections.
func (t ParsedTarget) Draining() bool { return t.Weight == 0 }

// IPv6 reports whether the service address is IPv6.
func (s *Spec) IPv6() bool { return s.VIP.Addr().Is6() }

// Prefix is the "lb NAME:" context for errors about this service.
func (s *Spec) Prefix() string { return "lb " + s.Name }

// Parse validates svc and fills defaults: protocol tcp, scheduler rr and
// forwarding nat. A weight of 0 stays 0 (draining).
func Parse(svc Service) (*Spec, error) {
	if err := api.ValidServiceName(svc.Name); err != nil {
		return nil, fmt.Errorf("lb: %w", err)
	}
	s := &Spec{Name: svc.Name, Persistence: svc.Persistence}
	wrap := func(err error) (*Spec, error) { return nil, fmt.Errorf("%s: %w", s.Prefix(), err) }
	vip, err := api.ParseAddrPort(svc.Address)
	if err != nil {
		return wrap(err)
	}
	s.VIP = vip
	s.Protocol = orDefault(svc.Protocol, api.DefaultProtocol)
	if err := api.ValidProtocol(s.Protocol); err != nil {
		return wrap(err)
	}
	s.Proto = api.Protocols[s.Protocol]
	s.Scheduler = orDefault(svc.Scheduler, api.DefaultScheduler)
	if err := api.ValidScheduler(s.Scheduler); err != nil {
		return wrap(err)
	}
	if s.Persistence < 0 {
		return wrap(api.Errorf(api.ErrInvalid, "negative persistence %s", s.Persistence))
	}
	if s.Persistence > 0 && s.Persistence < time.Second {
		return wrap(api.Errorf(api.ErrInvalid, "persistence %s is below the kernel's 1s granularity", s.Persistence))
	}
	seen := map[netip.AddrPort]bool{}
	for _, t := range svc.Targets {
		pt, err := ParseTarget(s, t)
		if err != nil {
			return wrap(err)
		}
		if seen[pt.Addr] {
			return wrap(api.Errorf(api.ErrInvalid, "target %s listed twice", pt.Addr))
		}
		seen[pt.Addr] = true
		s.Targets = append(s.Targets, pt)
	}
	return s, nil
}

// ParseTarget validates one target of service s.
func ParseTarget(s *Spec, t Target) (ParsedTarget, error) {
	addr, err := api.ParseAddrPort(t.Address)
	if err != nil {
		return ParsedTarget{}, fmt.Errorf("target: %w", err)
	}
	pt := ParsedTarget{Addr: addr, Weight: t.Weight, Forward: orDefault(t.Forward, api.ForwardNAT)}
	bad := func(format string, a ...any) (ParsedTarget, error) {
		return ParsedTarget{}, api.Errorf(api.ErrInvalid, "target %s: %s", addr, fmt.Sprintf(format, a...))
	}
	if err := api.ValidForward(pt.Forward); err != nil {
		return ParsedTarget{}, fmt.Errorf("target %s: %w", addr, err)
	}
	// 0 is draining, which only the controller asks for; api.ValidWeight
	// judges the rest as it judges a user's weight.
	if pt.Weight != 0 {
		if err := api.ValidWeight(pt.Weight); err != nil {
			return ParsedTarget{}, fmt.Errorf("target %s: %w", addr, err)
		}
	}
	if addr.Addr().Is6() != s.VIP.Addr().Is6() && pt.Forward != api.ForwardTunnel {
		return bad("address family differs from the service address %s (only tunnel forwarding can mix families)", s.VIP)
	}
	if pt.Forward != api.ForwardNAT && addr.Port() != s.VIP.Port() {
		return bad("%s forwarding cannot change the port: use port %d", pt.Forward, s.VIP.Port())
	}
	return pt, nil
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// SchedulerName describes a scheduler for messages.
func SchedulerName(s string) string {
	if d, ok := api.Schedulers[s]; ok {
		return d
	}
	return strings.ToLower(s)
}
