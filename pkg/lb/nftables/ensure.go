package nftables

import (
	"errors"
	"fmt"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/pkg/lb/internal/spec"
)

// Ensure makes the kernel's view of svc exactly svc, creating the table
// and the service as needed, in one transaction. A service in the first
// layout is moved to the current one in place (see migrate.go).
func (b *Backend) Ensure(svc spec.Service) error {
	s, err := validate(svc)
	if err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.ensure(s); err != nil {
		return fmt.Errorf("%s: nftables: %w", s.Prefix(), err)
	}
	return nil
}

func (b *Backend) ensure(s *spec.Spec) error {
	p, err := newPlan(s)
	if err != nil {
		return api.Errorf(api.ErrUnsupported, "%v", err)
	}
	t, err := b.readTable()
	if err != nil {
		return err
	}
	if !t.exists {
		bt := newBatch()
		bt.createTable()
		bt.createService(p)
		err := b.commit(bt)
		switch {
		case errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EOPNOTSUPP):
			return fmt.Errorf("create table inet %s: %w (the kernel lacks an nftables feature this backend needs: "+
				"nat, numgen, jhash, ct, masquerade or dynamic sets): %w", tableName, err, api.ErrUnsupported)
		case err == nil || !errors.Is(err, unix.EEXIST):
			return wrapCommit("create table inet "+tableName, err)
		}
		// Another process created the table meanwhile: go on with it.
		if t, err = b.readTable(); err != nil {
			return err
		}
	}
	cur, err := b.readService(s.Name)
	if err != nil {
		return err
	}
	bt := newBatch()
	if !t.current {
		vips, err := b.allVIPs()
		if err != nil {
			return err
		}
		bt.upgradeTable(vips)
	}
	switch {
	case cur == nil:
		bt.createService(p)
	case cur.v1:
		bt.migrate(b, p, cur)
	default:
		bt.updateService(p, cur)
	}
	if err := b.commit(bt); err != nil {
		return wrapCommit("program service", err)
	}
	if cur != nil && cur.v1 && t.v1Sets {
		b.dropV1Sets()
	}
	return nil
}

// createService queues every object of a service that is not programmed.
func (b *batch) createService(p *plan) {
	b.writeRules(p, nil)
	b.applyRoster(p, header{}, false, nil, p.entries())
	b.addVIP(p)
}

// updateService queues the changes from cur to p. Adds are idempotent,
// so objects someone deleted by hand come back.
func (b *batch) updateService(p *plan, cur *current) {
	if cur.rec.vip != p.s.VIP || cur.rec.proto != p.s.Proto {
		b.delVIP(cur, true)
		if cur.hasHdr {
			b.purgeRoster(p.s.Name, cur)
		}
		b.writeRules(p, cur)
		b.applyRoster(p, header{}, false, nil, p.entries())
	} else {
		b.writeRules(p, cur)
		b.applyRoster(p, cur.hdr, cur.hasHdr, cur.roster, nextRoster(cur.roster, p.s.Targets))
	}
	b.addVIP(p)
}

// delVIP deletes cur's address from the services map, flows and, if the
// table has the current layout's sets, vips.
func (b *batch) delVIP(cur *current, vips bool) {
	k := []nftables.SetElement{{Key: tupleKey(cur.rec.vip, cur.rec.proto)}}
	b.delElems(ref(servicesMap(cur.v6())), k)
	b.delElems(ref(flowsSet(cur.v6())), k)
	if vips {
		b.delElems(ref(vipsSet(cur.v6())), k)
	}
}

// tableState is what Ensure needs to know of the table.
type tableState struct {
	exists  bool
	current bool // has the current layout's maps
	v1Sets  bool // still has sets only the first layout uses
}

func (b *Backend) readTable() (tableState, error) {
	var t tableState
	var err error
	if t.exists, err = b.tableExists(); err != nil || !t.exists {
		return t, err
	}
	if t.current, err = b.setExists(targetsMap(false)); err != nil {
		return t, err
	}
	t.v1Sets, err = b.setExists(v1RecentPrefix + "4")
	return t, err
}

// allVIPs reads the keys of both services maps (upgrade only).
func (b *Backend) allVIPs() ([2][][]byte, error) {
	var out [2][][]byte
	for i, v6 := range []bool{false, true} {
		elems, err := b.conn.GetSetElements(ref(servicesMap(v6)))
		if err != nil {
			return out, fmt.Errorf("list map %s: %w", servicesMap(v6), err)
		}
		for _, e := range elems {
			out[i] = append(out[i], e.Key)
		}
	}
	return out, nil
}

func (b *Backend) setExists(name string) (bool, error) {
	_, err := b.conn.GetSetByName(table(), name)
	switch {
	case err == nil:
		return true, nil
	case isNotExist(err):
		return false, nil
	}
	return false, fmt.Errorf("get set %s: %w", name, err)
}

func wrapCommit(what string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.EEXIST) || errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("%s: %w (is the address already used by another service?): %w", what, err, api.ErrExists)
	}
	return fmt.Errorf("%s: %w", what, err)
}
