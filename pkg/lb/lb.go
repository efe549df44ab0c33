// Package lb programs load-balanced services into the kernel, through one
// of two backends:
//
//   - "ipvs" (pkg/lb/ipvs): the kernel's IPVS, with every scheduler and
//     forwarding method;
//   - "nftables" (pkg/lb/nftables): DNAT in an nftables table circuit owns,
//     for kernels without IPVS; rr, wrr and sh, NAT forwarding only.
//
// Both speak netlink only; neither runs a tool. Each backend is bound to
// one network namespace.
package lb

import (
	"fmt"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/pkg/lb/ipvs"
	"github.com/circuit-cni/circuit/pkg/lb/nftables"
)

// Backend programs services into one kernel load balancer.
//
// Methods identify a service by svc.Name (nftables) or by its address,
// protocol and port (IPVS), and touch nothing else. Errors wrap
// controller sentinels: ErrUnsupported (the kernel or backend cannot do
// it), ErrInvalid (bad service), ErrNotFound, ErrExists.
type Backend interface {
	// Name is "ipvs" or "nftables".
	Name() string
	// Available reports, wrapping ErrUnsupported and naming the kernel
	// feature, whether this kernel can run the backend.
	Available() error
	// Validate checks that the backend can honour svc (scheduler,
	// forwarding, protocol), saying which backend refuses what and why.
	Validate(svc Service) error
	// Ensure makes the kernel's view of svc exactly svc, targets
	// included: create or update. Idempotent; used for create, restore
	// and any change.
	Ensure(svc Service) error
	// AddTarget and RemoveTarget apply one target change. svc is the
	// service as recorded after the change (t included, or not), so a
	// backend may instead resynchronize just that service.
	AddTarget(svc Service, t Target) error
	RemoveTarget(svc Service, t Target) error
	// SetTarget changes one target's weight and/or forwarding in place
	// (svc is the service after the change): IPVS edits the destination,
	// nftables changes elements only. Weight 0 drains the target: no new
	// connections, the existing ones go on (see Stats' Active).
	SetTarget(svc Service, t Target) error
	// Delete removes the service; a service already gone is not an error.
	Delete(svc Service) error
	// Stats returns svc with the kernel's counters; ErrNotFound if the
	// service is not programmed.
	Stats(svc Service) (*Stats, error)
	// Close releases the backend's sockets; kernel state stays.
	Close() error
}

var (
	_ Backend = (*ipvs.Backend)(nil)
	_ Backend = (*nftables.Backend)(nil)
)

// Backend names.
const (
	IPVS     = ipvs.Name
	Nftables = nftables.Name
	// AutoName asks Open to choose, as Auto does.
	AutoName = "auto"
)

// Open returns the named backend ("ipvs", "nftables" or "auto") bound to
// the network namespace at nsPath ("" = the current one). Open does not
// check Available (except for "auto").
func Open(name, nsPath string) (Backend, error) {
	switch name {
	case IPVS:
		return ipvs.New(nsPath)
	case Nftables:
		return nftables.New(nsPath)
	case AutoName:
		return Auto(nsPath)
	}
	return nil, api.Errorf(api.ErrInvalid, "lb: backend %q: want %s, %s or %s", name, IPVS, Nftables, AutoName)
}

// Auto returns the IPVS backend when the kernel has IPVS, else nftables.
func Auto(nsPath string) (Backend, error) {
	var errs []error
	for _, name := range []string{IPVS, Nftables} {
		b, err := Open(name, nsPath)
		if err == nil {
			if err = b.Available(); err == nil {
				return b, nil
			}
			b.Close()
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("lb: no load-balancing backend available: %w", api.Join(errs...))
}

// Validate checks, touching no kernel, that the named backend ("ipvs" or
// "nftables") can honour svc, exactly as Backend.Validate does.
func Validate(backend string, svc Service) error {
	switch backend {
	case IPVS:
		return ipvs.Validate(svc)
	case Nftables:
		return nftables.Validate(svc)
	}
	return api.Errorf(api.ErrInvalid, "lb: backend %q: want %s or %s", backend, IPVS, Nftables)
}
