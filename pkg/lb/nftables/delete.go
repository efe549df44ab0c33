package nftables

import (
	"bytes"
	"fmt"

	"github.com/google/nftables"

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
	bt := newBatch()
	if last {
		bt.delTable()
		return b.commit(bt)
	}
	vips, err := b.setExists(vipsSet(false))
	if err != nil {
		return err
	}
	for _, step := range b.deleteSteps(svc.Name, cur, vips, false) {
		step(bt)
	}
	if err := b.commit(bt); err == nil || !isNotExist(err) {
		return err
	}
	// Something was already gone (deleted by hand?): delete the rest one
	// step (one element) at a time, skipping what is missing.
	for _, step := range b.deleteSteps(svc.Name, cur, vips, true) {
		bt := newBatch()
		step(bt)
		if err := b.commit(bt); err != nil && !isNotExist(err) {
			return err
		}
	}
	return nil
}

// deleteSteps lists the batch steps deleting a service, in dependency
// order: references before what they reference; fine splits element
// deletions one element to a step.
func (b *Backend) deleteSteps(name string, cur *current, vips, fine bool) []func(*batch) {
	var steps []func(*batch)
	if cur.rec.vip.IsValid() {
		steps = append(steps, func(bt *batch) { bt.delVIP(cur, vips) })
	}
	if cur.v1 {
		svc := &nftables.Chain{Name: serviceChain(name), Table: table()}
		steps = append(steps, func(bt *batch) { bt.flushChain(svc); bt.delChain(svc) })
		for _, t := range cur.v1Target {
			aff := b.hadV1Affinity(name, cur, t)
			steps = append(steps, func(bt *batch) { bt.delV1Target(name, t, aff) })
		}
		steps = append(steps, func(bt *batch) { bt.delSet(ref(v1TargetSet(name))) })
		return append(steps, func(bt *batch) { bt.delObj(counterDef(name)) })
	}
	for _, r := range cur.rules {
		steps = append(steps, func(bt *batch) { bt.delRules([]rule{r}) })
	}
	if cur.hasHdr && cur.hdr.persistence > 0 {
		steps = append(steps, func(bt *batch) {
			bt.delElems(ref(stickyMap(cur.v6())), []nftables.SetElement{{Key: tupleKey(cur.rec.vip, cur.rec.proto)}})
		})
		for _, r := range cur.stickRules {
			steps = append(steps, func(bt *batch) { bt.delRules([]rule{r}) })
		}
		steps = append(steps, func(bt *batch) { bt.delSet(ref(affinityMap(name))) })
	}
	if cur.hasHdr {
		for _, g := range rosterElems(name, cur) {
			if !fine {
				steps = append(steps, func(bt *batch) { bt.delElems(ref(g.set), g.elems) })
				continue
			}
			for _, e := range g.elems {
				steps = append(steps, func(bt *batch) { bt.delElems(ref(g.set), []nftables.SetElement{e}) })
			}
		}
	}
	return append(steps, func(bt *batch) { bt.delObj(counterDef(name)) })
}

// onlyService reports whether cur is the only service in the table.
func (b *Backend) onlyService(cur *current) (bool, error) {
	for _, v6 := range []bool{false, true} {
		elems, err := b.conn.GetSetElements(ref(servicesMap(v6)))
		if err != nil {
			return false, fmt.Errorf("list map %s: %w", servicesMap(v6), err)
		}
		for _, e := range elems {
			if !cur.rec.vip.IsValid() || !bytes.Equal(e.Key, tupleKey(cur.rec.vip, cur.rec.proto)) {
				return false, nil
			}
		}
	}
	return true, nil
}
