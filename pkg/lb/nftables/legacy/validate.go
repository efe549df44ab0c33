package legacy

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
	for _, t := range s.Targets {
		if err := validateTarget(s, t); err != nil {
			return nil, err
		}
	}
	if _, _, err := slots(weights(s)); err != nil {
		return nil, api.Errorf(api.ErrInvalid, "%s: %v", s.Prefix(), err)
	}
	return s, nil
}

func validateTarget(s *spec.Spec, t spec.ParsedTarget) error {
	if t.Forward != api.ForwardNAT {
		return api.Errorf(api.ErrUnsupported, "target %s: the nftables backend only forwards by nat (DNAT), not %s; use the ipvs backend",
			t.Addr, t.Forward)
	}
	return nil
}

// weights are the scheduling weights: rr ignores configured weights.
func weights(s *spec.Spec) []int {
	w := make([]int, len(s.Targets))
	for i, t := range s.Targets {
		w[i] = 1
		if s.Scheduler != "rr" {
			w[i] = t.Weight
		}
	}
	return w
}
