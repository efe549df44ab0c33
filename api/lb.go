package api

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// Forwarding methods.
const (
	ForwardNAT    = "nat"
	ForwardDR     = "dr"
	ForwardTunnel = "tunnel"
)

// Defaults a service or target takes for an empty field.
const (
	DefaultProtocol  = "tcp"
	DefaultScheduler = "rr"
	DefaultForward   = ForwardNAT
	DefaultWeight    = 1
	// DefaultDrain is how long a drain circuit starts itself waits for
	// a target's connections to end (lb create --drain).
	DefaultDrain = 30 * time.Second
	// MaxDrain bounds a drain: a target is never held longer.
	MaxDrain = 24 * time.Hour
	// MaxWeight is ipvsadm's limit, applied to both backends.
	MaxWeight = 65535
)

// Backend names; BackendAuto asks the controller to choose.
const (
	BackendIPVS     = "ipvs"
	BackendNftables = "nftables"
	BackendAuto     = "auto"
)

// Schedulers are the IPVS scheduler names circuit knows, with what they do.
// Which a backend implements is the backend's business.
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

// protocolNames lists Protocols in ipvsadm's order, for messages.
var protocolNames = []string{"tcp", "udp", "sctp"}

// Forwards are the forwarding methods, in ipvsadm's order.
var Forwards = []string{ForwardNAT, ForwardDR, ForwardTunnel}

// Backends are the load-balancing backends a user may ask for.
var Backends = []string{BackendAuto, BackendIPVS, BackendNftables}

// ValidScheduler checks a scheduler name (case matters, as for ipvsadm).
func ValidScheduler(name string) error {
	if _, ok := Schedulers[name]; !ok {
		return Errorf(ErrInvalid, "scheduler %s: want one of %s", quote(name), strings.Join(sortedKeys(Schedulers), ", "))
	}
	return nil
}

// ValidProtocol checks a protocol name.
func ValidProtocol(name string) error {
	if _, ok := Protocols[name]; !ok {
		return Errorf(ErrInvalid, "protocol %s: want one of %s", quote(name), strings.Join(protocolNames, ", "))
	}
	return nil
}

// ValidForward checks a forwarding method.
func ValidForward(name string) error {
	if !slices.Contains(Forwards, name) {
		return Errorf(ErrInvalid, "forwarding method %s: want one of %s", quote(name), strings.Join(Forwards, ", "))
	}
	return nil
}

// ValidWeight checks a target's weight as a user gives it: 1 to MaxWeight.
func ValidWeight(w int) error {
	if w < 1 || w > MaxWeight {
		return Errorf(ErrInvalid, "weight %d: use 1 to %d", w, MaxWeight)
	}
	return nil
}

// ValidBackend checks a backend name.
func ValidBackend(name string) error {
	if !slices.Contains(Backends, name) {
		return Errorf(ErrInvalid, "backend %s: want one of %s", quote(name), strings.Join(Backends, ", "))
	}
	return nil
}

// NormalizeService checks a service as a user asks for it and fills in the
// defaults of empty fields (protocol tcp, scheduler rr, backend auto); the
// address is rewritten in its canonical form.
func NormalizeService(svc *Service) error {
	if err := ValidServiceName(svc.Name); err != nil {
		return err
	}
	ap, err := ParseAddrPort(svc.Address)
	if err != nil {
		return err
	}
	svc.Address = ap.String()
	if svc.Protocol == "" {
		svc.Protocol = DefaultProtocol
	}
	if err := ValidProtocol(svc.Protocol); err != nil {
		return err
	}
	if svc.Scheduler == "" {
		svc.Scheduler = DefaultScheduler
	}
	if err := ValidScheduler(svc.Scheduler); err != nil {
		return err
	}
	if svc.Backend == "" {
		svc.Backend = BackendAuto
	}
	if err := ValidBackend(svc.Backend); err != nil {
		return err
	}
	if err := ValidPersistence(svc.Persistence); err != nil {
		return err
	}
	if svc.Drain == 0 {
		svc.Drain = DefaultDrain
	}
	return ValidDrain(svc.Drain)
}

// ValidDrain checks how long a drain may wait: above 0, at most MaxDrain.
func ValidDrain(d time.Duration) error {
	if d <= 0 || d > MaxDrain {
		return Errorf(ErrInvalid, "drain %s: want a duration above 0 and at most %s", d, MaxDrain)
	}
	return nil
}

// ValidPersistence checks a service's persistence: 0 (none), or at least
// the kernel's one-second granularity.
func ValidPersistence(d time.Duration) error {
	if d < 0 {
		return Errorf(ErrInvalid, "persistence must not be negative")
	}
	if d > 0 && d < time.Second {
		return Errorf(ErrInvalid, "persistence %s is below the kernel's 1s granularity", d)
	}
	return nil
}

// NormalizeTarget checks a target of service svc (already normalized) as a
// user gives it, and fills in the default forwarding method; the address
// is rewritten in its canonical form.
func NormalizeTarget(svc *Service, t *Target) error {
	ap, err := ParseAddrPort(t.Address)
	if err != nil {
		return err
	}
	t.Address = ap.String()
	if err := ValidWeight(t.Weight); err != nil {
		return fmt.Errorf("target %s: %w", t.Address, err)
	}
	if t.Forward == "" {
		t.Forward = DefaultForward
	}
	if err := ValidForward(t.Forward); err != nil {
		return fmt.Errorf("target %s: %w", t.Address, err)
	}
	vip, err := ParseAddrPort(svc.Address)
	if err != nil {
		return err
	}
	if ap.Addr().Is6() != vip.Addr().Is6() && t.Forward != ForwardTunnel {
		return Errorf(ErrInvalid, "target %s and service address %s are of different IP families (only tunnel forwarding can mix them)", t.Address, svc.Address)
	}
	if t.Forward != ForwardNAT && ap.Port() != vip.Port() {
		return Errorf(ErrInvalid, "target %s: %s forwarding cannot change the port: use port %d", t.Address, t.Forward, vip.Port())
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

// ChangeTarget applies an lb set to target t of svc: a weight given ends a
// drain (the target takes new connections again), a forwarding method is
// changed as given; the result is checked as NormalizeTarget checks a new
// target.
func ChangeTarget(svc *Service, t Target, ch TargetChange) (Target, error) {
	if ch.Weight == 0 && ch.Forward == "" {
		return t, Errorf(ErrInvalid, "nothing to change for target %s: give a weight or a forwarding method", t.Address)
	}
	if ch.Weight != 0 {
		t.Weight = ch.Weight
		t.DrainUntil, t.DrainOwner = time.Time{}, Process{}
	}
	if ch.Forward != "" {
		t.Forward = ch.Forward
	}
	if err := NormalizeTarget(svc, &t); err != nil {
		return t, err
	}
	return t, nil
}

// DrainDone says how a drain of target addr ended: its connections
// ended, or active were still open when its time was up.
func DrainDone(service, addr string, active uint64) string {
	if active == 0 {
		return fmt.Sprintf("target %s drained from service %s: no connections left", addr, service)
	}
	return fmt.Sprintf("target %s removed from service %s at the end of its drain, %d connection(s) still open", addr, service, active)
}

// DrainInterrupted is the error of a drain stopped before its targets
// went: they stay draining, and whatever comes next finishes them.
func DrainInterrupted(addrs []string, until time.Time, cause error) error {
	return fmt.Errorf("interrupted (%w): %s left draining until %s; the next lb command on the service, gc or restore removes them",
		cause, strings.Join(addrs, ", "), until.UTC().Format(time.RFC3339))
}

// DrainStarted says what a drain waits on.
func DrainStarted(service string, addrs []string, timeout time.Duration) string {
	return fmt.Sprintf("draining %s from service %s: no new connections, up to %s for the open ones to end", strings.Join(addrs, ", "), service, timeout)
}

// TargetIndex finds a target of svc by address, in any of its forms.
func TargetIndex(svc *Service, addr string) (int, error) {
	ap, err := ParseAddrPort(addr)
	if err != nil {
		return -1, err
	}
	i := slices.IndexFunc(svc.Targets, func(o Target) bool { return o.Address == ap.String() })
	if i < 0 {
		return -1, Errorf(ErrNotFound, "target %s is not in service %s", addr, svc.Name)
	}
	return i, nil
}
