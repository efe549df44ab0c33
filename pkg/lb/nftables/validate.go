package nftables

import (
	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/pkg/lb/internal/spec"
)

// Schedulers the nftables backend implements: rr and wrr with numgen, sh
// with jhash of the client address. The rest need connection counts or
// tables only IPVS keeps.
var nftSchedulers = map[string]bool{"rr": true, "wrr": true, "sh": true}

// validate parses svc and refuses what this backend cannot do.
func validate(svc spec.Service) (*spec.Spec, error) {
	s, err := spec.Parse(svc)
	if err != nil {
		return nil, err
	}
	if !nftSchedulers[s.Scheduler] {
		return nil, api.Errorf(api.ErrUnsupported, "the nftables backend cannot do %s scheduling (%s); use rr, wrr or sh, or the ipvs backend",
			api.Schedulers[s.Scheduler], s.Scheduler)
	}
	live := 0
	for _, t := range s.Targets {
		if t.Forward != api.ForwardNAT {
			return nil, api.Errorf(api.ErrUnsupported, "target %s: the nftables backend only forwards by nat (DNAT), not %s; use the ipvs backend",
				t.Addr, t.Forward)
		}
		if !t.Draining() {
			live++
		}
	}
	if _, err := slotCount(live); err != nil {
		return nil, api.Errorf(api.ErrUnsupported, "%s: %v", s.Prefix(), err)
	}
	return s, nil
}
