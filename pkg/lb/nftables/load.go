package nftables

import (
	"fmt"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/pkg/lb/internal/spec"
)

// loadChunk is how many new services one Load transaction holds.
const loadChunk = 1000

// Load programs many services at once, as a restore or a benchmark does:
// the ones not programmed yet are created together, loadChunk to a
// transaction (one Ensure each would make the kernel re-validate the
// table once per service, since each adds a goto to the services map);
// the ones already programmed go through Ensure.
func (b *Backend) Load(svcs []spec.Service) error {
	plans := make([]*plan, 0, len(svcs))
	for _, svc := range svcs {
		s, err := validate(svc)
		if err != nil {
			return err
		}
		p, err := newPlan(s)
		if err != nil {
			return api.Errorf(api.ErrUnsupported, "%s: %v", s.Prefix(), err)
		}
		plans = append(plans, p)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(plans) > 0 {
		// The first one creates or upgrades the table.
		if err := b.ensure(plans[0].s); err != nil {
			return fmt.Errorf("%s: nftables: %w", plans[0].s.Prefix(), err)
		}
		plans = plans[1:]
	}
	bt := newBatch()
	n := 0
	for i, p := range plans {
		cur, err := b.readService(p.s.Name)
		if err != nil {
			return fmt.Errorf("%s: nftables: %w", p.s.Prefix(), err)
		}
		if cur != nil {
			if err := b.ensure(p.s); err != nil {
				return fmt.Errorf("%s: nftables: %w", p.s.Prefix(), err)
			}
			continue
		}
		bt.createService(p)
		if n++; n == loadChunk || i == len(plans)-1 {
			if err := b.commit(bt); err != nil {
				return fmt.Errorf("lb: nftables: load %d services: %w", n, wrapCommit("program services", err))
			}
			bt, n = newBatch(), 0
		}
	}
	return b.commit(bt)
}
