package bolt

import (
	"context"
	"fmt"
	"testing"

	"go.etcd.io/bbolt"

	"github.com/circuit-cni/circuit/ds"
)

// The benchmarks run against a store the size of a busy host: 100 networks
// of 10 peers each. The file lives in b.TempDir(), so on a disk-backed /tmp
// every committed Update pays an fsync, as it does in /var/lib/circuit.
const (
	benchNetworks = 100
	benchPeers    = 10
)

// benchStore returns a store holding benchNetworks networks of benchPeers
// peers each.
func benchStore(b *testing.B) *Store {
	b.Helper()
	s, err := Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	err = s.Update(context.Background(), func(tx ds.Tx) error {
		for i := range benchNetworks {
			name := fmt.Sprintf("net%03d", i)
			if err := tx.PutNetwork(testNetwork(name)); err != nil {
				return err
			}
			for j := range benchPeers {
				if err := tx.PutPeer(testPeer(name, fmt.Sprintf("ctr%03d-%02d", i, j), "eth0")); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkUpdatePeer times one Update that puts one peer, as connect and
// disconnect do three times each. "store" is the Store as circuit uses it
// (bbolt opened, flocked, mmapped and closed per transaction); "held" runs
// the same transaction on a handle kept open, so the difference is the
// price of opening the file per transaction.
func BenchmarkUpdatePeer(b *testing.B) {
	p := testPeer("net050", "bench-ctr", "eth0")
	b.Run("store", func(b *testing.B) {
		s := benchStore(b)
		ctx := context.Background()
		for b.Loop() {
			err := s.Update(ctx, func(tx ds.Tx) error { return tx.PutPeer(p) })
			if err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("held", func(b *testing.B) {
		s := benchStore(b)
		db := heldDB(b, s, false)
		for b.Loop() {
			err := db.Update(func(btx *bbolt.Tx) error {
				root, err := migrate(btx)
				if err != nil {
					return err
				}
				return (&tx{btx: btx, root: root}).PutPeer(p)
			})
			if err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkViewListNetworks times one View that lists every network, as
// `circuit network list` and every connect's network lookup do. "store"
// and "held" as in BenchmarkUpdatePeer.
func BenchmarkViewListNetworks(b *testing.B) {
	check := func(b *testing.B, n int) {
		if n != benchNetworks {
			b.Fatalf("listed %d networks, want %d", n, benchNetworks)
		}
	}
	b.Run("store", func(b *testing.B) {
		s := benchStore(b)
		ctx := context.Background()
		for b.Loop() {
			err := s.View(ctx, func(tx ds.Tx) error {
				nets, err := tx.ListNetworks()
				check(b, len(nets))
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("held", func(b *testing.B) {
		s := benchStore(b)
		db := heldDB(b, s, true)
		for b.Loop() {
			err := db.View(func(btx *bbolt.Tx) error {
				root, err := viewRoot(btx)
				if err != nil {
					return err
				}
				nets, err := (&tx{btx: btx, root: root}).ListNetworks()
				check(b, len(nets))
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkOpenClose times only what the Store adds to every transaction:
// opening the file with its lock and closing it again.
func BenchmarkOpenClose(b *testing.B) {
	for _, readOnly := range []bool{true, false} {
		b.Run(fmt.Sprintf("readonly=%v", readOnly), func(b *testing.B) {
			s := benchStore(b)
			ctx := context.Background()
			for b.Loop() {
				db, err := s.openDB(ctx, readOnly)
				if err != nil {
					b.Fatal(err)
				}
				if err := db.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// heldDB opens the store's file once, as a long-lived process would.
func heldDB(b *testing.B, s *Store, readOnly bool) *bbolt.DB {
	b.Helper()
	db, err := s.openDB(context.Background(), readOnly)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = db.Close() })
	return db
}
