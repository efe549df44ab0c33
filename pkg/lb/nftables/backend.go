// Package nftables load-balances services with nftables DNAT in one table,
// "inet circuit", that circuit owns: it never touches other tables and never
// flushes the ruleset.
//
// The layout is built so that adding, removing, re-weighting or draining
// a target changes elements of table-wide maps only: no rule, no chain, no
// verdict-map element. What the kernel charges for (see README.md):
// re-validating the table's jump graph on any commit that adds a jump, a
// verdict element or a NAT rule; finding a set by walking the table's list
// of sets; checking a map's elements against every rule bound to it; and
// visiting every chain on every commit. Hence table-wide maps, a sharded
// slots map, and chains shared by services.
//
// Per IP family N (4 or 6), keyed by the service's VIP tuple
// (addr . l4proto . port):
//
//	map services  VIP -> goto pick-G               (nat prerouting/output)
//	set flows     VIP, counted                      (service packets/bytes)
//	set vips      VIP                               (hairpin: one of ours)
//	map targets   VIP . index -> target . weight    (the record; index ~0: header)
//	set tbytes    VIP . target, counted             (per-target packets/bytes)
//	set tconns    VIP . target, counted             (per-target new connections)
//	map sticky    VIP -> jump stick-G               (persistent services)
//	map slotsN-K  VIP . slot -> target addr . port  (the scheduler's table, 256 shards)
//
// Services share 256 chains pick-G (and stick-G), G a hash of the name.
// A service's rules there start by matching its VIP: a counter; for
// persistence "dnat to ip saddr map @aff-NAME"; "dnat to ip daddr . meta
// l4proto . th dport . numgen inc mod S map @slotsN-K" (jhash of the
// client for sh); drop. Each service has its own numgen, so rr is strict
// per service.
//
// Slots: see slots.go. Weight 0 drains a target: no slot, its connections
// keep their DNAT in conntrack. The table is created with the first
// service and deleted with the last; a table of the first layout (v1) is
// moved service by service (migrate.go).
package nftables

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/pkg/lb/internal/nsfd"
	"github.com/circuit-cni/circuit/pkg/lb/internal/spec"
)

// Name is the backend's name.
const Name = "nftables"

// Backend programs services into the "inet circuit" table of one netns.
// Its methods are safe for concurrent use; changes by several processes
// at once are not coordinated (the caller serializes service changes).
type Backend struct {
	mu   sync.Mutex
	ns   *os.File
	conn *nftables.Conn // reads
	nl   *nlConn        // batches and element reads

	txs      atomic.Int64 // committed transactions (tests)
	lastMsgs atomic.Int64 // messages in the last transaction (tests)
	lastOps  []uint16     // their nf_tables message types (tests)
}

// New returns a backend bound to the netns at nsPath ("" = current).
// Its sockets last until Close: closing a netfilter socket waits for the
// kernel to free what the last transactions deleted (an RCU grace
// period), which would otherwise land in every call.
func New(nsPath string) (*Backend, error) {
	ns, err := nsfd.Open(nsPath)
	if err != nil {
		return nil, fmt.Errorf("lb: nftables: %w", err)
	}
	b := &Backend{ns: ns}
	if b.conn, err = nftables.New(nftables.WithNetNSFd(nsfd.Fd(ns)), nftables.AsLasting()); err == nil {
		b.nl, err = dial(nsfd.Fd(ns))
	}
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("lb: nftables: %w", err)
	}
	return b, nil
}

// Name returns "nftables".
func (b *Backend) Name() string { return Name }

// Available reports whether the kernel speaks nf_tables.
func (b *Backend) Available() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conn == nil {
		return fmt.Errorf("lb: nftables: backend is closed")
	}
	if _, err := b.conn.ListTablesOfFamily(nftables.TableFamilyINet); err != nil {
		return api.Errorf(api.ErrUnsupported, "nftables (CONFIG_NF_TABLES) is not available in this kernel: %v", err)
	}
	return nil
}

// Validate refuses what this backend cannot do: schedulers other than
// rr, wrr and sh, and forwarding other than nat.
func (b *Backend) Validate(svc spec.Service) error { return Validate(svc) }

// Validate is Backend.Validate without a backend: it touches no kernel.
func Validate(svc spec.Service) error {
	_, err := validate(svc)
	return err
}

// Close releases the sockets and the netns handle.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var errs []error
	if b.conn != nil {
		errs = append(errs, b.conn.CloseLasting())
		b.conn = nil
	}
	if b.nl != nil {
		errs = append(errs, b.nl.Close())
		b.nl = nil
	}
	if b.ns != nil {
		errs = append(errs, b.ns.Close())
		b.ns = nil
	}
	return errors.Join(errs...)
}

// commit sends the batch as one transaction.
func (b *Backend) commit(bt *batch) error {
	if bt.err != nil {
		return bt.err
	}
	if len(bt.msgs) == 0 {
		return nil
	}
	if err := sendBatch(b.nl, bt.msgs); err != nil {
		return err
	}
	b.txs.Add(1)
	b.lastMsgs.Store(int64(len(bt.msgs)))
	b.lastOps = b.lastOps[:0]
	for _, m := range bt.msgs {
		b.lastOps = append(b.lastOps, uint16(m.Header.Type)&0xff)
	}
	return nil
}

// isNotExist reports ENOENT. Some google/nftables getters format errors
// with %v, so the errno is also recognized by its text.
func isNotExist(err error) bool {
	return err != nil && (errors.Is(err, unix.ENOENT) || strings.Contains(err.Error(), unix.ENOENT.Error()))
}

func (b *Backend) tableExists() (bool, error) {
	_, err := b.conn.ListTableOfFamily(tableName, nftables.TableFamilyINet)
	switch {
	case err == nil:
		return true, nil
	case isNotExist(err):
		return false, nil
	default:
		return false, fmt.Errorf("list table inet %s: %w", tableName, err)
	}
}
