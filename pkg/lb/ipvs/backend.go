// Package ipvs load-balances services with the kernel's IPVS, spoken to
// over generic netlink. It supports every IPVS scheduler, weights, NAT
// (masquerade), direct routing and tunnel forwarding, persistence, IPv4
// and IPv6, TCP, UDP and SCTP.
//
// It touches only the IPVS services whose address, protocol and port it
// is given and never flushes the IPVS table. Service addresses are put on
// the dummy device circuit-lb0 so that IPVS sees their traffic.
package ipvs

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/pkg/lb/internal/nsfd"
	"github.com/circuit-cni/circuit/pkg/lb/internal/spec"
)

// Name is the backend's name.
const Name = "ipvs"

// Backend programs IPVS in one netns. Its methods are safe for concurrent
// use.
type Backend struct {
	mu sync.Mutex
	ns *os.File
	g  *genl
	nl *netlink.Handle
	ok bool // IPVS answered once; it does not go away
}

// New returns a backend bound to the netns at nsPath ("" = current). It
// succeeds on kernels without IPVS; Available tells.
func New(nsPath string) (*Backend, error) {
	ns, err := nsfd.Open(nsPath)
	if err != nil {
		return nil, fmt.Errorf("lb: ipvs: %w", err)
	}
	b := &Backend{ns: ns}
	if b.g, err = dialGenl(nsfd.Fd(ns)); err == nil {
		if ns != nil {
			// The route family only: the VIP's dummy device and addresses.
			b.nl, err = netlink.NewHandleAt(netns.NsHandle(ns.Fd()), unix.NETLINK_ROUTE)
		} else {
			b.nl, err = netlink.NewHandle(unix.NETLINK_ROUTE)
		}
	}
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("lb: ipvs: %w", err)
	}
	return b, nil
}

// Name returns "ipvs".
func (b *Backend) Name() string { return Name }

// Available asks the kernel for the IPVS netlink family and lists the
// services, which fails unless IPVS is built in or loadable.
func (b *Backend) Available() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.available()
}

func (b *Backend) available() error {
	if b.ok {
		return nil
	}
	if b.g == nil {
		return fmt.Errorf("lb: ipvs: backend is closed")
	}
	err := b.g.resolve()
	if err == nil {
		_, err = b.g.services()
	}
	if err != nil {
		return api.Errorf(api.ErrUnsupported, "IPVS (CONFIG_IP_VS) is not available in this kernel (the kernel has no IPVS netlink family: %v)", err)
	}
	b.ok = true
	return nil
}

// Validate checks svc; IPVS can do every scheduler and forwarding method
// circuit knows.
func (b *Backend) Validate(svc spec.Service) error { return Validate(svc) }

// Validate is Backend.Validate without a backend: it touches no kernel.
func Validate(svc spec.Service) error {
	_, err := spec.Parse(svc)
	return err
}

// Close releases the sockets and the netns handle.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var errs []error
	if b.g != nil {
		errs = append(errs, b.g.c.Close())
		b.g = nil
	}
	if b.nl != nil {
		b.nl.Close()
		b.nl = nil
	}
	if b.ns != nil {
		errs = append(errs, b.ns.Close())
		b.ns = nil
	}
	return api.Join(errs...)
}

// toSvc is the kernel form of a service (key and settings).
func toSvc(s *spec.Spec) *svc {
	k := &svc{addr: s.VIP, proto: uint16(s.Proto), sched: s.Scheduler, netmask: netmaskHost4}
	if s.IPv6() {
		k.netmask = netmaskHost6
	}
	if s.Persistence > 0 {
		k.flags |= svcFlagPersistent
		k.timeout = uint32((s.Persistence + 999_999_999) / 1_000_000_000) // whole seconds, rounded up
	}
	return k
}

func toDest(t spec.ParsedTarget) *dest {
	d := &dest{addr: t.Addr, weight: uint32(t.Weight), fwd: fwdMasq}
	switch t.Forward {
	case api.ForwardDR:
		d.fwd = fwdDirectRoute
	case api.ForwardTunnel:
		d.fwd = fwdTunnel
	}
	return d
}

func sameSettings(a, b *svc) bool {
	return a.sched == b.sched && a.flags&svcFlagPersistent == b.flags&svcFlagPersistent &&
		a.timeout == b.timeout && a.netmask == b.netmask
}

func notFound(err error) bool {
	return errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT)
}

// keyOf is the kernel key of a recorded service, for Delete and Stats,
// which must work even if the record would no longer validate.
func keyOf(rec spec.Service) (*svc, error) {
	vip, err := api.ParseAddrPort(rec.Address)
	if err != nil {
		return nil, err
	}
	proto := rec.Protocol
	if proto == "" {
		proto = api.DefaultProtocol
	}
	if err := api.ValidProtocol(proto); err != nil {
		return nil, err
	}
	return &svc{addr: vip, proto: uint16(api.Protocols[proto])}, nil
}

func vipOf(k *svc) netip.Addr { return k.addr.Addr() }
