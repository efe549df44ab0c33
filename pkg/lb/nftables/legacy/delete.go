package legacy

import (
	"bytes"
	"fmt"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/pkg/lb/internal/spec"
)

// Delete removes the service; a service that is already gone is not an
// error. Deleting the last service deletes the whole table instead, in
// the same single transaction.
func (b *Backend) Delete(svc spec.Service) error {
	if err := api.ValidServiceName(svc.Name); err != nil {
		return fmt.Errorf("lb: %w", err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.delete(svc); err != nil {
		return fmt.Errorf("lb %s: nftables: delete: %w", svc.Name, err)
	}
	return nil
}

func (b *Backend) delete(svc spec.Service) error {
	exists, err := b.tableExists()
	if err != nil || !exists {
		return err
	}
	cur, err := b.readService(svc.Name)
	if err != nil || cur == nil {
		return err
	}
	if s, err := spec.Parse(svc); err == nil {
		cur.fallbackRecord(s)
	}
	last, err := b.onlyService(cur)
	if err != nil {
		return err
	}
	bt := b.newBatch()
	if last {
		bt.c.DelTable(table())
		bt.msgs++
		return b.commit(bt)
	}
	steps := b.deleteSteps(svc.Name, cur)
	for _, step := range steps {
		step(bt)
	}
	if err := b.commit(bt); err == nil || !isNotExist(err) {
		return err
	}
	// Something was already gone (deleted by hand?): delete the rest one
	// step at a time, skipping what is missing.
	for _, step := range steps {
		bt := b.newBatch()
		step(bt)
		if err := b.commit(bt); err != nil && !isNotExist(err) {
			return err
		}
	}
	return nil
}

// deleteSteps lists the batch steps deleting a service, in dependency
// order: references before what they reference.
func (b *Backend) deleteSteps(name string, cur *current) []func(*batch) {
	var steps []func(*batch)
	if cur.rec.vip.IsValid() {
		steps = append(steps, func(bt *batch) { bt.delVIP(cur.rec.vip, cur.rec.proto) })
	}
	ch := svcChainDef(name)
	steps = append(steps, func(bt *batch) { bt.flushChain(ch); bt.delChain(ch) })
	for _, t := range cur.targets {
		aff := cur.hadAffinity(b, name, t)
		steps = append(steps, func(bt *batch) { bt.delTarget(name, t, aff) })
	}
	return append(steps,
		func(bt *batch) { bt.delSet(targetSetRef(name)) },
		func(bt *batch) { bt.delObj(counterDef(name)) })
}

// onlyService reports whether cur is the only service in the table.
func (b *Backend) onlyService(cur *current) (bool, error) {
	for _, v6 := range []bool{false, true} {
		elems, err := b.conn.GetSetElements(servicesRef(v6))
		if err != nil {
			return false, fmt.Errorf("list map %s: %w", servicesMap(v6), err)
		}
		for _, e := range elems {
			if !cur.rec.vip.IsValid() || !bytes.Equal(e.Key, cur.key()) {
				return false, nil
			}
		}
	}
	return true, nil
}
