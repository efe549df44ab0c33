package bolt

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"testing"
	"time"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/ds/dstest"
	"go.etcd.io/bbolt"
)

func openStore(t *testing.T, dir string, opts ...Option) *Store {
	t.Helper()
	s, err := Open(dir, opts...)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func update(t *testing.T, s *Store, fn func(ds.Tx) error) {
	t.Helper()
	if err := s.Update(context.Background(), fn); err != nil {
		t.Fatalf("Update: %v", err)
	}
}

func view(t *testing.T, s *Store, fn func(ds.Tx) error) {
	t.Helper()
	if err := s.View(context.Background(), fn); err != nil {
		t.Fatalf("View: %v", err)
	}
}

var (
	testNetwork = dstest.Network
	testPeer    = dstest.Peer
	testService = dstest.Service
)

func equal[T any](t *testing.T, what string, got, want T) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s:\n got  %+v\n want %+v", what, got, want)
	}
}

// The contract every datastore keeps (ds/dstest), on bbolt, with the schema
// read by Open and by the first transaction (as the CLI opens it).
func TestContract(t *testing.T) {
	for name, opts := range map[string][]Option{"open": nil, "first use": {WithSchemaOnFirstUse()}} {
		t.Run(name, func(t *testing.T) { contract(t, opts...) })
	}
}

func contract(t *testing.T, opts ...Option) {
	dstest.Run(t, func(t *testing.T) dstest.Harness {
		dir := t.TempDir()
		return dstest.Harness{
			Open: func(t *testing.T, bound time.Duration) ds.Datastore {
				return openStore(t, dir, append([]Option{WithTimeout(bound)}, opts...)...)
			},
			Busy: func(t *testing.T) func() {
				db, err := bbolt.Open(filepath.Join(dir, FileName), 0o600, &bbolt.Options{Timeout: 5 * time.Second})
				if err != nil {
					t.Fatal(err)
				}
				return func() { db.Close() }
			},
			SetSchema: func(t *testing.T, v int) { writeSchema(t, filepath.Join(dir, FileName), strconv.Itoa(v)) },
			Schema:    schemaVersion,
		}
	})
}

func TestDeletePeer(t *testing.T) {
	s := openStore(t, t.TempDir())
	update(t, s, func(tx ds.Tx) error {
		if err := tx.PutNetwork(testNetwork("alpha")); err != nil {
			return err
		}
		for _, ifname := range []string{"eth0", "eth1"} {
			if err := tx.PutPeer(testPeer("alpha", "c1", ifname)); err != nil {
				return err
			}
		}
		return nil
	})
	update(t, s, func(tx ds.Tx) error { return tx.DeletePeer("alpha", "c1", "eth0") })
	view(t, s, func(tx ds.Tx) error {
		peers, err := tx.ListPeers("alpha")
		equal(t, "peers", peers, []api.Peer{*testPeer("alpha", "c1", "eth1")})
		return err
	})
	// Deleting the container's last peer drops its bucket too.
	update(t, s, func(dtx ds.Tx) error {
		if err := dtx.DeletePeer("alpha", "c1", "eth1"); err != nil {
			return err
		}
		if peerBucket(dtx.(*tx).network("alpha"), "c1") != nil {
			t.Error("container bucket left behind after its last peer was deleted")
		}
		return nil
	})
}

func TestWritesInViewFail(t *testing.T) {
	s := openStore(t, t.TempDir())
	update(t, s, func(tx ds.Tx) error {
		if err := tx.PutNetwork(testNetwork("alpha")); err != nil {
			return err
		}
		return tx.PutService(testService("web"))
	})
	writes := func(tx ds.Tx) map[string]error {
		return map[string]error{
			"PutNetwork":    tx.PutNetwork(testNetwork("beta")),
			"DeleteNetwork": tx.DeleteNetwork("alpha"),
			"PutPeer":       tx.PutPeer(testPeer("alpha", "c1", "eth0")),
			"DeletePeer":    tx.DeletePeer("alpha", "c1", "eth0"),
			"PutService":    tx.PutService(testService("api")),
			"DeleteService": tx.DeleteService("web"),
		}
	}
	view(t, s, func(tx ds.Tx) error {
		for op, err := range writes(tx) {
			if !errors.Is(err, errReadOnly) {
				t.Errorf("%s in View: %v, want errReadOnly", op, err)
			}
		}
		return nil
	})
	view(t, s, func(tx ds.Tx) error {
		nets, _ := tx.ListNetworks()
		svcs, _ := tx.ListServices()
		if len(nets) != 1 || len(svcs) != 1 {
			t.Errorf("View changed the store: %d networks, %d services", len(nets), len(svcs))
		}
		return nil
	})

	// The same in a View of a store whose file is gone.
	if err := os.Remove(s.Path()); err != nil {
		t.Fatal(err)
	}
	view(t, s, func(tx ds.Tx) error {
		for op, err := range writes(tx) {
			if !errors.Is(err, errReadOnly) {
				t.Errorf("%s in View of a missing file: %v, want errReadOnly", op, err)
			}
		}
		return nil
	})
}

func TestViewOfMissingFileIsEmptyAndDoesNotCreateIt(t *testing.T) {
	s := openStore(t, t.TempDir())
	update(t, s, func(tx ds.Tx) error { return tx.PutNetwork(testNetwork("alpha")) })
	if err := os.Remove(s.Path()); err != nil {
		t.Fatal(err)
	}
	view(t, s, func(tx ds.Tx) error {
		if nets, err := tx.ListNetworks(); err != nil || len(nets) != 0 {
			t.Errorf("ListNetworks = %v, %v; want empty", nets, err)
		}
		if peers, err := tx.ListPeers(""); err != nil || len(peers) != 0 {
			t.Errorf("ListPeers = %v, %v; want empty", peers, err)
		}
		if svcs, err := tx.ListServices(); err != nil || len(svcs) != 0 {
			t.Errorf("ListServices = %v, %v; want empty", svcs, err)
		}
		if _, err := tx.GetNetwork("alpha"); !errors.Is(err, api.ErrNotFound) {
			t.Errorf("GetNetwork = %v, want ErrNotFound", err)
		}
		if _, err := tx.GetPeer("alpha", "c", "eth0"); !errors.Is(err, api.ErrNotFound) {
			t.Errorf("GetPeer = %v, want ErrNotFound", err)
		}
		if _, err := tx.GetService("web"); !errors.Is(err, api.ErrNotFound) {
			t.Errorf("GetService = %v, want ErrNotFound", err)
		}
		return nil
	})
	if _, err := os.Stat(s.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("View recreated the file: stat = %v", err)
	}
	// The next Update recreates it.
	update(t, s, func(tx ds.Tx) error { return tx.PutService(testService("web")) })
	view(t, s, func(tx ds.Tx) error {
		_, err := tx.GetService("web")
		return err
	})
}
