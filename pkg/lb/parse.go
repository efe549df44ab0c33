package lb

import "github.com/circuit-cni/circuit/pkg/lb/internal/spec"

// The load balancer's own types: what a caller asks a backend for, and
// what a backend reports. The caller (circuit's controller) maps its
// records to them.
type (
	Service  = spec.Service
	Target   = spec.Target
	Counters = spec.Counters
	Stats    = spec.Stats
)

// Check validates svc independently of any backend, with the defaults a
// backend applies to empty fields: protocol tcp, scheduler rr, forwarding
// nat. A target's weight 0 means draining (only the controller sets it).
func Check(svc Service) error {
	_, err := spec.Parse(svc)
	return err
}
