package spec

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/circuit-cni/circuit/controller"
	"github.com/circuit-cni/circuit/internal/ident"
)

// Forwarding methods.
const (
	ForwardNAT    = "nat"
	ForwardDR     = "dr"
	ForwardTunnel = "tunnel"
)

// Defaults applied to empty fields.
const (
	DefaultProtocol  = "tcp"
	DefaultScheduler = "rr"
	DefaultWeight    = 1
	// MaxWeight is ipvsadm's limit, applied to both backends.
	MaxWeight = 65535
)

// Schedulers are the IPVS scheduler names circuit knows, with what they do.
var Schedulers = map[string]string{
	"rr":    "round-robin",
	"wrr":   "weighted round-robin",
	"lc":    "least-connection",
	"wlc":   "weighted least-connection",
	"lblc":  "locality-based least-connection",
	"lblcr": "locality-based least-connection with replication",
	"dh":    "destination hashing",
	"sh":    "source hashing",
	"sed":   "shortest expected delay",
	"nq":    "never queue",
	"mh":    "maglev hashing",
}

// Protocols maps a protocol name to its IP protocol number.
var Protocols = map[string]uint8{"tcp": 6, "udp": 17, "sctp": 132}

var forwards = []string{ForwardNAT, ForwardDR, ForwardTunnel}

// Spec is a validated service.
type Spec struct {
	Name        string
	VIP         netip.AddrPort
	Protocol    string // tcp, udp or sctp
	Proto       uint8  // IP protocol number
	Scheduler   string
	Persistence time.Duration
	Targets     []Target
}

// Target is a validated target.
type Target struct {
	Addr    netip.AddrPort
	Weight  int    // 1..MaxWeight
	Forward string // nat, dr or tunnel
}

// IPv6 reports whether the service address is IPv6.
func (s *Spec) IPv6() bool { return s.VIP.Addr().Is6() }

// Prefix is the "lb NAME:" context for errors about this service.
func (s *Spec) Prefix() string { return "lb " + s.Name }

// ValidName checks a service name: it becomes part of kernel object names.
func ValidName(name string) error {
	if !ident.Valid(name, 63, false, "_.-") {
		return controller.Errorf(controller.ErrInvalid, "service name %q: want 1-63 characters of A-Z a-z 0-9 _ . -", name)
	}
	return nil
}

// ValidScheduler checks a scheduler name against the known IPVS schedulers.
func ValidScheduler(name string) error {
	if _, ok := Schedulers[name]; !ok {
		return controller.Errorf(controller.ErrInvalid, "scheduler %q: want one of %s", name, strings.Join(sortedKeys(Schedulers), ", "))
	}
	return nil
}

// ValidProtocol checks a protocol name.
func ValidProtocol(name string) error {
	if _, ok := Protocols[name]; !ok {
		return controller.Errorf(controller.ErrInvalid, "protocol %q: want one of %s", name, strings.Join(sortedKeys(Protocols), ", "))
	}
	return nil
}

// ValidForward checks a forwarding method.
func ValidForward(name string) error {
	if !slices.Contains(forwards, name) {
		return controller.Errorf(controller.ErrInvalid, "forwarding %q: want one of %s", name, strings.Join(forwards, ", "))
	}
	return nil
}

// Parse validates svc and fills defaults: protocol tcp, scheduler rr,
// forwarding nat and weight 1 (a weight of 0 means "unset": circuit has no
// drained state, a target is removed instead).
func Parse(svc controller.Service) (*Spec, error) {
	if err := ValidName(svc.Name); err != nil {
		return nil, fmt.Errorf("lb: %w", err)
	}
	// time.Duration(...) accepts controller.Duration as well as time.Duration.
	s := &Spec{Name: svc.Name, Persistence: time.Duration(svc.Persistence)}
	wrap := func(err error) (*Spec, error) { return nil, fmt.Errorf("%s: %w", s.Prefix(), err) }
	vip, err := ParseAddrPort(svc.Address)
	if err != nil {
		return wrap(err)
	}
	s.VIP = vip
	s.Protocol = orDefault(strings.ToLower(svc.Protocol), DefaultProtocol)
	if err := ValidProtocol(s.Protocol); err != nil {
		return wrap(err)
	}
	s.Proto = Protocols[s.Protocol]
	s.Scheduler = orDefault(strings.ToLower(svc.Scheduler), DefaultScheduler)
	if err := ValidScheduler(s.Scheduler); err != nil {
		return wrap(err)
	}
	if s.Persistence < 0 {
		return wrap(controller.Errorf(controller.ErrInvalid, "negative persistence %s", s.Persistence))
	}
	if s.Persistence > 0 && s.Persistence < time.Second {
		return wrap(controller.Errorf(controller.ErrInvalid, "persistence %s is below the kernel's 1s granularity", s.Persistence))
	}
	seen := map[netip.AddrPort]bool{}
	for _, t := range svc.Targets {
		pt, err := ParseTarget(s, t)
		if err != nil {
			return wrap(err)
		}
		if seen[pt.Addr] {
			return wrap(controller.Errorf(controller.ErrInvalid, "target %s listed twice", pt.Addr))
		}
		seen[pt.Addr] = true
		s.Targets = append(s.Targets, pt)
	}
	return s, nil
}

// ParseTarget validates one target of service s.
func ParseTarget(s *Spec, t controller.Target) (Target, error) {
	addr, err := ParseAddrPort(t.Address)
	if err != nil {
		return Target{}, fmt.Errorf("target: %w", err)
	}
	pt := Target{Addr: addr, Weight: t.Weight, Forward: orDefault(strings.ToLower(t.Forward), ForwardNAT)}
	bad := func(format string, a ...any) (Target, error) {
		return Target{}, controller.Errorf(controller.ErrInvalid, "target %s: %s", addr, fmt.Sprintf(format, a...))
	}
	if err := ValidForward(pt.Forward); err != nil {
		return Target{}, fmt.Errorf("target %s: %w", addr, err)
	}
	switch {
	case pt.Weight < 0 || pt.Weight > MaxWeight:
		return bad("weight %d out of range 0-%d", pt.Weight, MaxWeight)
	case pt.Weight == 0:
		pt.Weight = DefaultWeight
	}
	if addr.Addr().Is6() != s.VIP.Addr().Is6() && pt.Forward != ForwardTunnel {
		return bad("address family differs from the service address %s (only tunnel forwarding can mix families)", s.VIP)
	}
	if pt.Forward != ForwardNAT && addr.Port() != s.VIP.Port() {
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

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
