// Package legacy is a frozen copy of the nftables backend's first layout
// (v1, as of commit e6b6094: a chain, a counter and an affinity set per
// target, dispatched from the service chain through an anonymous vmap).
//
// It exists so that tests can build a table in that layout and check that
// the current backend migrates it in place, and so that the benchmark can
// measure it as the baseline. Product code never imports it. Only Fill was
// added: many services in one transaction, as a benchmark fills a table.
package legacy

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
const Name = "nftables-v1"

// Backend programs services into the "inet circuit" table of one netns.
// Its methods are safe for concurrent use; changes by several processes
// at once are not coordinated (the caller serializes service changes).
type Backend struct {
	mu   sync.Mutex
	ns   *os.File
	conn *nftables.Conn

	txs      atomic.Int64 // committed transactions (tests)
	lastMsgs atomic.Int64 // messages in the last transaction (tests)
}

// New returns a backend bound to the netns at nsPath ("" = current).
func New(nsPath string) (*Backend, error) {
	ns, err := nsfd.Open(nsPath)
	if err != nil {
		return nil, fmt.Errorf("lb: nftables: %w", err)
	}
	// Not a lasting connection: each request gets a fresh socket, so a
	// failed batch cannot leave unread acks behind for the next one.
	c, err := nftables.New(nftables.WithNetNSFd(nsfd.Fd(ns)))
	if err != nil {
		if ns != nil {
			ns.Close()
		}
		return nil, fmt.Errorf("lb: nftables: %w", err)
	}
	return &Backend{ns: ns, conn: c}, nil
}

// Name returns "nftables".
func (b *Backend) Name() string { return Name }

// Available reports whether the kernel speaks nf_tables.
func (b *Backend) Available() error {
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

// Close releases the netns handle.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ns != nil {
		err := b.ns.Close()
		b.ns = nil
		return err
	}
	return nil
}

// newBatch queues on a fresh Conn (no socket until Flush), so a batch
// abandoned on error can never be sent with a later one.
func (b *Backend) newBatch() *batch {
	c, err := nftables.New(nftables.WithNetNSFd(nsfd.Fd(b.ns)))
	return &batch{c: c, err: err}
}

// commit sends the batch as one transaction.
func (b *Backend) commit(bt *batch) error {
	if bt.err != nil {
		return bt.err
	}
	if err := bt.c.Flush(); err != nil {
		return err
	}
	b.txs.Add(1)
	b.lastMsgs.Store(int64(bt.msgs))
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
