package lb

import (
	"net/netip"

	"github.com/circuit-cni/circuit/controller"
	"github.com/circuit-cni/circuit/pkg/lb/internal/spec"
)

// ParseAddrPort parses a literal "10.0.0.1:80" or "[fd00::1]:80". It
// refuses a missing port, port 0, hostnames, zones, IPv4-mapped IPv6 and
// unspecified or multicast addresses, with errors wrapping
// controller.ErrInvalid.
func ParseAddrPort(s string) (netip.AddrPort, error) { return spec.ParseAddrPort(s) }

// ValidScheduler checks an IPVS scheduler name: rr, wrr, lc, wlc, lblc,
// lblcr, dh, sh, sed, nq or mh. Whether a backend implements it is
// Backend.Validate's business.
func ValidScheduler(name string) error { return spec.ValidScheduler(name) }

// ValidProtocol checks a protocol name: tcp, udp or sctp.
func ValidProtocol(name string) error { return spec.ValidProtocol(name) }

// ValidForward checks a forwarding method: nat, dr or tunnel.
func ValidForward(name string) error { return spec.ValidForward(name) }

// ValidName checks a service name: 1-63 of A-Z a-z 0-9 _ . -.
func ValidName(name string) error { return spec.ValidName(name) }

// Check validates svc independently of any backend, with the defaults a
// backend applies to empty fields: protocol tcp, scheduler rr,
// forwarding nat, weight 1.
func Check(svc controller.Service) error {
	_, err := spec.Parse(svc)
	return err
}

// Defaults Check and the backends apply to empty fields.
const (
	DefaultProtocol  = spec.DefaultProtocol
	DefaultScheduler = spec.DefaultScheduler
	DefaultForward   = spec.ForwardNAT
)
