// Package dstest is the contract every ds.Datastore must keep, as a test
// suite: ds/bolt runs it in the unit tier, and a networked store (etcd, for
// circuit-agent) runs the same suite against a real server.
//
// The contract, as callers rely on it:
//   - A commit is all or nothing: Update commits only if fn returns nil,
//     and fn's error is returned as is.
//   - Readers see committed state only, never a write in progress.
//   - Update's fn may run more than once (a networked store retries on a
//     conflict), so it must have no effect outside the transaction.
//   - Concurrent writers, through any number of handles or processes, never
//     lose an update.
//   - A store that cannot commit within its bound returns an error matching
//     api.ErrBusy.
//   - Missing objects give errors matching api.ErrNotFound; keys are judged
//     by circuit's rules (package api) and refused with api.ErrInvalid;
//     listings are sorted; a schema newer than the code is refused.
//   - Getters return copies that outlive the transaction; network records
//     never carry peers, and deleting a network deletes its peers.
package dstest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/internal/ruletable"
)

// Harness gives the suite one empty store per test.
type Harness struct {
	// Open opens a new handle on this test's store. A transaction waits at
	// most bound (0: the store's default) before failing with ErrBusy.
	Open func(t *testing.T, bound time.Duration) ds.Datastore
	// Busy, if set, keeps every handle from committing until release.
	Busy func(t *testing.T) (release func())
	// SetSchema, if set, marks the store as written by a circuit whose
	// schema is version.
	SetSchema func(t *testing.T, version int)
	// Schema is the schema version the store writes.
	Schema int
}

// Run runs the suite; newHarness makes a fresh, empty store per test.
func Run(t *testing.T, newHarness func(t *testing.T) Harness) {
	for _, tc := range []struct {
		name string
		fn   func(*testing.T, Harness)
	}{
		{"NetworkRoundTrip", testNetworkRoundTrip},
		{"NetworkRecordsHaveNoPeers", testNetworkHasNoPeers},
		{"PeersSorted", testPeersSorted},
		{"ContainerPeers", testContainerPeers},
		{"ServicesSorted", testServicesSorted},
		{"NotFound", testNotFound},
		{"DeleteNetworkDeletesPeers", testDeleteNetwork},
		{"DeletePeer", testDeletePeer},
		{"AllOrNothing", testAllOrNothing},
		{"ReadersSeeCommittedOnly", testCommittedOnly},
		{"WritesInViewFail", testWritesInView},
		{"ConcurrentWritersLoseNothing", testConcurrentWriters},
		{"Busy", testBusy},
		{"NewerSchemaRefused", testNewerSchema},
		{"Rules", testRules},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newHarness(t)) })
	}
}

var ctx = context.Background()

// Update runs fn in an Update of s and fails the test on error.
func Update(t *testing.T, s ds.Datastore, fn func(ds.Tx) error) {
	t.Helper()
	if err := s.Update(ctx, fn); err != nil {
		t.Fatalf("Update: %v", err)
	}
}

// View runs fn in a View of s and fails the test on error.
func View(t *testing.T, s ds.Datastore, fn func(ds.Tx) error) {
	t.Helper()
	if err := s.View(ctx, fn); err != nil {
		t.Fatalf("View: %v", err)
	}
}

var created = time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)

// Network is a full network record for tests.
func Network(name string) *api.Network {
	return &api.Network{
		Name:       name,
		Type:       "bridge",
		Plugins:    []string{"bridge", "bandwidth"},
		CNIVersion: "1.0.0",
		IsList:     true,
		Config:     json.RawMessage(`{"cniVersion":"1.0.0","name":"` + name + `","plugins":[{"type":"bridge"}]}`),
		CreatedAt:  created,
		QoS:        &api.QoSPolicy{Rate: 1e6, Delay: 5 * time.Millisecond, Direction: api.DirBoth},
	}
}

// Peer is a full peer record for tests.
func Peer(network, cid, ifname string) *api.Peer {
	return &api.Peer{
		Network:     network,
		ContainerID: cid,
		PID:         4242,
		IfName:      ifname,
		IPs:         []string{"10.1.0.2/24", "fd00::2/64"},
		MAC:         "02:42:ac:11:00:02",
		HostIf:      "veth1234",
		Netns:       "/var/lib/circuit/netns/" + cid,
		State:       api.PeerConnected,
		ConnectedAt: created,
		QoS:         &api.QoSPolicy{Loss: 1.5},
		Owner:       &api.Process{PID: 77, Start: 12345},
	}
}

// Service is a full service record for tests.
func Service(name string) *api.Service {
	return &api.Service{
		Name:        name,
		Address:     "[fd00::1]:80",
		Protocol:    "tcp",
		Scheduler:   "rr",
		Persistence: time.Minute,
		Backend:     "ipvs",
		Targets:     []api.Target{{Address: "10.1.0.2:80", Weight: 1, Forward: "nat"}},
		CreatedAt:   created,
	}
}

func equal[T any](t *testing.T, what string, got, want T) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s:\n got  %+v\n want %+v", what, got, want)
	}
}

func testNetworkRoundTrip(t *testing.T, h Harness) {
	s := h.Open(t, 0)
	want := Network("alpha")
	Update(t, s, func(tx ds.Tx) error { return tx.PutNetwork(want) })
	var got *api.Network
	View(t, s, func(tx ds.Tx) error {
		var err error
		got, err = tx.GetNetwork("alpha")
		return err
	})
	// Read after the transaction ended: a copy, not the store's memory.
	equal(t, "GetNetwork", got, want)
	// Another handle sees it too.
	View(t, h.Open(t, 0), func(tx ds.Tx) error {
		got, err := tx.GetNetwork("alpha")
		if err == nil {
			equal(t, "GetNetwork through another handle", got, want)
		}
		return err
	})
}

func testNetworkHasNoPeers(t *testing.T, h Harness) {
	s := h.Open(t, 0)
	n := Network("alpha")
	n.Peers = []api.Peer{*Peer("alpha", "ghost", "eth0")}
	Update(t, s, func(tx ds.Tx) error {
		if err := tx.PutNetwork(n); err != nil {
			return err
		}
		return tx.PutPeer(Peer("alpha", "c1", "eth0"))
	})
	if len(n.Peers) != 1 {
		t.Errorf("PutNetwork changed the caller's Peers: %v", n.Peers)
	}
	// Replacing the network keeps its peers; records never carry them.
	n2 := Network("alpha")
	n2.Type = "macvlan"
	Update(t, s, func(tx ds.Tx) error { return tx.PutNetwork(n2) })
	View(t, s, func(tx ds.Tx) error {
		got, err := tx.GetNetwork("alpha")
		if err != nil {
			return err
		}
		if got.Peers != nil || got.Type != "macvlan" {
			t.Errorf("GetNetwork = %+v, want type macvlan and no peers", got)
		}
		nets, err := tx.ListNetworks()
		if err != nil {
			return err
		}
		if len(nets) != 1 || nets[0].Peers != nil {
			t.Errorf("ListNetworks = %+v, want one network without peers", nets)
		}
		peers, err := tx.ListPeers("alpha")
		equal(t, "peers after replacing the network", peers, []api.Peer{*Peer("alpha", "c1", "eth0")})
		return err
	})
}

func testPeersSorted(t *testing.T, h Harness) {
	s := h.Open(t, 0)
	keys := [][3]string{{"beta", "c2", "eth0"}, {"alpha", "c2", "eth1"}, {"alpha", "c2", "eth0"}, {"alpha", "c1", "net9"}, {"beta", "c1", "eth0"}}
	Update(t, s, func(tx ds.Tx) error {
		for _, name := range []string{"beta", "alpha", "gamma"} {
			if err := tx.PutNetwork(Network(name)); err != nil {
				return err
			}
		}
		for _, k := range keys {
			if err := tx.PutPeer(Peer(k[0], k[1], k[2])); err != nil {
				return err
			}
		}
		return nil
	})
	var got *api.Peer
	var all, alpha, gamma []api.Peer
	var nets []api.Network
	View(t, s, func(tx ds.Tx) error {
		var err error
		if got, err = tx.GetPeer("alpha", "c2", "eth1"); err != nil {
			return err
		}
		if all, err = tx.ListPeers(""); err != nil {
			return err
		}
		if alpha, err = tx.ListPeers("alpha"); err != nil {
			return err
		}
		if gamma, err = tx.ListPeers("gamma"); err != nil {
			return err
		}
		nets, err = tx.ListNetworks()
		return err
	})
	equal(t, "GetPeer", got, Peer("alpha", "c2", "eth1"))
	want := []api.Peer{*Peer("alpha", "c1", "net9"), *Peer("alpha", "c2", "eth0"), *Peer("alpha", "c2", "eth1"), *Peer("beta", "c1", "eth0"), *Peer("beta", "c2", "eth0")}
	equal(t, `ListPeers("")`, all, want)
	equal(t, `ListPeers("alpha")`, alpha, want[:3])
	if gamma == nil || len(gamma) != 0 {
		t.Errorf(`ListPeers("gamma") = %#v, want an empty non-nil slice`, gamma)
	}
	var names []string
	for _, n := range nets {
		names = append(names, n.Name)
	}
	equal(t, "ListNetworks names", names, []string{"alpha", "beta", "gamma"})
}

func testContainerPeers(t *testing.T, h Harness) {
	s := h.Open(t, 0)
	Update(t, s, func(tx ds.Tx) error {
		for _, name := range []string{"alpha", "beta"} {
			if err := tx.PutNetwork(Network(name)); err != nil {
				return err
			}
		}
		for _, k := range [][3]string{{"alpha", "c1", "eth1"}, {"alpha", "c1", "eth0"}, {"alpha", "c2", "eth0"}, {"alpha", "c10", "eth0"}, {"beta", "c1", "eth0"}} {
			if err := tx.PutPeer(Peer(k[0], k[1], k[2])); err != nil {
				return err
			}
		}
		return nil
	})
	var c1, none []api.Peer
	var missing, invalid error
	View(t, s, func(tx ds.Tx) error {
		var err error
		if c1, err = tx.ContainerPeers("alpha", "c1"); err != nil {
			return err
		}
		if none, err = tx.ContainerPeers("beta", "c2"); err != nil {
			return err
		}
		_, missing = tx.ContainerPeers("gamma", "c1")
		_, invalid = tx.ContainerPeers("alpha", "../c1")
		return nil
	})
	// c10 shares c1's prefix and is not c1's.
	equal(t, `ContainerPeers("alpha", "c1")`, c1, []api.Peer{*Peer("alpha", "c1", "eth0"), *Peer("alpha", "c1", "eth1")})
	if none == nil || len(none) != 0 {
		t.Errorf(`ContainerPeers("beta", "c2") = %#v, want an empty non-nil slice`, none)
	}
	if !errors.Is(missing, api.ErrNotFound) {
		t.Errorf(`ContainerPeers on a missing network: %v, want ErrNotFound`, missing)
	}
	if !errors.Is(invalid, api.ErrInvalid) {
		t.Errorf(`ContainerPeers with container ID "../c1": %v, want ErrInvalid`, invalid)
	}
}

func testServicesSorted(t *testing.T, h Harness) {
	s := h.Open(t, 0)
	Update(t, s, func(tx ds.Tx) error {
		for _, name := range []string{"web", "api", "db"} {
			if err := tx.PutService(Service(name)); err != nil {
				return err
			}
		}
		return nil
	})
	var got *api.Service
	var list []api.Service
	View(t, s, func(tx ds.Tx) error {
		var err error
		if got, err = tx.GetService("db"); err != nil {
			return err
		}
		list, err = tx.ListServices()
		return err
	})
	equal(t, "GetService", got, Service("db"))
	equal(t, "ListServices", list, []api.Service{*Service("api"), *Service("db"), *Service("web")})
	Update(t, s, func(tx ds.Tx) error { return tx.DeleteService("db") })
	View(t, s, func(tx ds.Tx) error {
		if _, err := tx.GetService("db"); !errors.Is(err, api.ErrNotFound) {
			t.Errorf("GetService after delete: %v, want ErrNotFound", err)
		}
		return nil
	})
}

func testNotFound(t *testing.T, h Harness) {
	s := h.Open(t, 0)
	Update(t, s, func(tx ds.Tx) error { return tx.PutNetwork(Network("alpha")) })
	check := func(what string, err error, wantMsg string) {
		t.Helper()
		if !errors.Is(err, api.ErrNotFound) {
			t.Errorf("%s: %v, want ErrNotFound", what, err)
		} else if err.Error() != wantMsg {
			t.Errorf("%s: message %q, want %q", what, err, wantMsg)
		}
	}
	View(t, s, func(tx ds.Tx) error {
		_, err := tx.GetNetwork("x")
		check("GetNetwork", err, `network "x": not found`)
		_, err = tx.GetPeer("x", "c1", "eth0")
		check("GetPeer, missing network", err, `network "x": not found`)
		_, err = tx.GetPeer("alpha", "c1", "eth0")
		check("GetPeer", err, `peer "c1/eth0" on network "alpha": not found`)
		_, err = tx.ListPeers("x")
		check("ListPeers", err, `network "x": not found`)
		_, err = tx.GetService("web")
		check("GetService", err, `service "web": not found`)
		return nil
	})
	Update(t, s, func(tx ds.Tx) error {
		check("DeleteNetwork", tx.DeleteNetwork("x"), `network "x": not found`)
		check("DeletePeer", tx.DeletePeer("alpha", "c1", "eth0"), `peer "c1/eth0" on network "alpha": not found`)
		check("DeleteService", tx.DeleteService("web"), `service "web": not found`)
		if err := tx.PutPeer(Peer("x", "c1", "eth0")); !errors.Is(err, api.ErrNotFound) {
			t.Errorf("PutPeer on a missing network: %v, want ErrNotFound", err)
		}
		return nil
	})
}

func testDeleteNetwork(t *testing.T, h Harness) {
	s := h.Open(t, 0)
	Update(t, s, func(tx ds.Tx) error {
		for _, n := range []string{"alpha", "beta"} {
			if err := tx.PutNetwork(Network(n)); err != nil {
				return err
			}
			for _, cid := range []string{"c1", "c2"} {
				if err := tx.PutPeer(Peer(n, cid, "eth0")); err != nil {
					return err
				}
			}
		}
		return nil
	})
	Update(t, s, func(tx ds.Tx) error { return tx.DeleteNetwork("alpha") })
	// A network of the same name starts with no peers.
	Update(t, s, func(tx ds.Tx) error { return tx.PutNetwork(Network("alpha")) })
	View(t, s, func(tx ds.Tx) error {
		if _, err := tx.GetPeer("alpha", "c1", "eth0"); !errors.Is(err, api.ErrNotFound) {
			t.Errorf("GetPeer after DeleteNetwork: %v, want ErrNotFound", err)
		}
		peers, err := tx.ListPeers("")
		equal(t, "peers left", peers, []api.Peer{*Peer("beta", "c1", "eth0"), *Peer("beta", "c2", "eth0")})
		return err
	})
}

func testDeletePeer(t *testing.T, h Harness) {
	s := h.Open(t, 0)
	Update(t, s, func(tx ds.Tx) error {
		if err := tx.PutNetwork(Network("alpha")); err != nil {
			return err
		}
		for _, ifname := range []string{"eth0", "eth1"} {
			if err := tx.PutPeer(Peer("alpha", "c1", ifname)); err != nil {
				return err
			}
		}
		return nil
	})
	Update(t, s, func(tx ds.Tx) error { return tx.DeletePeer("alpha", "c1", "eth0") })
	View(t, s, func(tx ds.Tx) error {
		peers, err := tx.ListPeers("alpha")
		equal(t, "peers", peers, []api.Peer{*Peer("alpha", "c1", "eth1")})
		return err
	})
	Update(t, s, func(tx ds.Tx) error { return tx.DeletePeer("alpha", "c1", "eth1") })
	View(t, s, func(tx ds.Tx) error {
		peers, err := tx.ContainerPeers("alpha", "c1")
		if err == nil && len(peers) != 0 {
			t.Errorf("peers after deleting both: %+v", peers)
		}
		return err
	})
}

func testAllOrNothing(t *testing.T, h Harness) {
	s := h.Open(t, 0)
	Update(t, s, func(tx ds.Tx) error { return tx.PutNetwork(Network("keep")) })
	boom := errors.New("boom")
	err := s.Update(ctx, func(tx ds.Tx) error {
		if err := tx.PutNetwork(Network("alpha")); err != nil {
			return err
		}
		if err := tx.PutService(Service("web")); err != nil {
			return err
		}
		if err := tx.DeleteNetwork("keep"); err != nil {
			return err
		}
		return boom
	})
	if err != boom {
		t.Fatalf("Update = %v, want fn's error as is", err)
	}
	View(t, s, func(tx ds.Tx) error {
		nets, err := tx.ListNetworks()
		if err != nil {
			return err
		}
		if len(nets) != 1 || nets[0].Name != "keep" {
			t.Errorf("networks after a failed Update = %+v, want only keep", nets)
		}
		if svcs, err := tx.ListServices(); err != nil || len(svcs) != 0 {
			t.Errorf("services after a failed Update = %+v, %v; want none", svcs, err)
		}
		return nil
	})
}

// testCommittedOnly races readers against writes that are never
// committed: whatever the interleaving, no reader may see them.
func testCommittedOnly(t *testing.T, h Harness) {
	s := h.Open(t, 0)
	Update(t, s, func(tx ds.Tx) error { return tx.PutNetwork(Network("base")) })
	written := make(chan struct{})
	abort := errors.New("abort")
	done := make(chan error, 1)
	go func() {
		done <- s.Update(ctx, func(tx ds.Tx) error {
			if err := tx.PutNetwork(Network("dirty")); err != nil {
				return err
			}
			select {
			case <-written:
			default:
				close(written) // a retried fn writes again; signal once
			}
			return abort
		})
	}()
	<-written
	r := h.Open(t, 0)
	View(t, r, func(tx ds.Tx) error {
		if _, err := tx.GetNetwork("dirty"); !errors.Is(err, api.ErrNotFound) {
			t.Errorf("a reader saw an uncommitted write: %v", err)
		}
		return nil
	})
	if err := <-done; err != abort {
		t.Fatalf("Update = %v, want fn's error", err)
	}
	// A committed write is seen by the next reader, on any handle.
	Update(t, s, func(tx ds.Tx) error { return tx.PutNetwork(Network("clean")) })
	View(t, r, func(tx ds.Tx) error { _, err := tx.GetNetwork("clean"); return err })
}

func testWritesInView(t *testing.T, h Harness) {
	s := h.Open(t, 0)
	Update(t, s, func(tx ds.Tx) error {
		if err := tx.PutNetwork(Network("alpha")); err != nil {
			return err
		}
		return tx.PutService(Service("web"))
	})
	View(t, s, func(tx ds.Tx) error {
		for op, err := range map[string]error{
			"PutNetwork":    tx.PutNetwork(Network("beta")),
			"DeleteNetwork": tx.DeleteNetwork("alpha"),
			"PutPeer":       tx.PutPeer(Peer("alpha", "c1", "eth0")),
			"DeletePeer":    tx.DeletePeer("alpha", "c1", "eth0"),
			"PutService":    tx.PutService(Service("api")),
			"DeleteService": tx.DeleteService("web"),
		} {
			if err == nil {
				t.Errorf("%s in View succeeded", op)
			}
		}
		return nil
	})
	View(t, s, func(tx ds.Tx) error {
		nets, _ := tx.ListNetworks()
		svcs, _ := tx.ListServices()
		if len(nets) != 1 || len(svcs) != 1 {
			t.Errorf("View changed the store: %d networks, %d services", len(nets), len(svcs))
		}
		return nil
	})
}

// testConcurrentWriters increments records from several handles at once:
// each its own peer's PID, and one shared target weight. A lost update
// shows as a short count.
func testConcurrentWriters(t *testing.T, h Harness) {
	const writers, rounds = 4, 25
	setup := h.Open(t, 0)
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		s := h.Open(t, 30*time.Second)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				err := s.Update(ctx, func(tx ds.Tx) error { return Increment(tx, fmt.Sprintf("c%d", w)) })
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	View(t, setup, func(tx ds.Tx) error {
		svc, err := tx.GetService("shared")
		if err != nil {
			return err
		}
		if got := svc.Targets[0].Weight; got != writers*rounds {
			t.Errorf("shared count %d, want %d: updates were lost", got, writers*rounds)
		}
		peers, err := tx.ListPeers("net")
		for _, p := range peers {
			if p.PID != rounds {
				t.Errorf("%s count %d, want %d", p.ContainerID, p.PID, rounds)
			}
		}
		return err
	})
}

func testBusy(t *testing.T, h Harness) {
	if h.Busy == nil {
		t.Skip("this store has no way to be held busy")
	}
	const bound = 300 * time.Millisecond
	s := h.Open(t, bound)
	Update(t, s, func(tx ds.Tx) error { return tx.PutNetwork(Network("alpha")) })
	release := h.Busy(t)
	defer release()
	ran := false
	start := time.Now()
	err := s.Update(ctx, func(tx ds.Tx) error { ran = true; return tx.DeleteNetwork("alpha") })
	if !errors.Is(err, api.ErrBusy) {
		t.Fatalf("Update while the store is held: %v, want ErrBusy", err)
	}
	// It waited its bound first (50ms of slack for polling stores); no
	// upper bound: a loaded machine may take longer with nothing wrong.
	if elapsed := time.Since(start); elapsed < bound-100*time.Millisecond {
		t.Errorf("gave up after %v, before its %v bound", elapsed, bound)
	}
	release()
	if ran {
		View(t, s, func(tx ds.Tx) error {
			_, err := tx.GetNetwork("alpha")
			if err != nil {
				t.Errorf("a busy Update's fn ran and its change was committed: %v", err)
			}
			return nil
		})
	}
}

func testNewerSchema(t *testing.T, h Harness) {
	if h.SetSchema == nil {
		t.Skip("this store cannot be marked with another schema")
	}
	s := h.Open(t, 0)
	Update(t, s, func(tx ds.Tx) error { return tx.PutNetwork(Network("alpha")) })
	h.SetSchema(t, h.Schema+1)
	want := fmt.Sprintf("schema version %d is newer than this circuit supports (%d)", h.Schema+1, h.Schema)
	ran := false
	err := s.Update(ctx, func(tx ds.Tx) error { ran = true; return nil })
	if err == nil || !strings.Contains(err.Error(), want) || ran {
		t.Errorf("Update on a newer schema = %v (fn ran: %v), want %q", err, ran, want)
	}
	err = s.View(ctx, func(tx ds.Tx) error { ran = true; return nil })
	if err == nil || !strings.Contains(err.Error(), want) || ran {
		t.Errorf("View on a newer schema = %v (fn ran: %v), want %q", err, ran, want)
	}
}

// testRules runs the shared rule table's names and IDs through the keys.
func testRules(t *testing.T, h Harness) {
	s := h.Open(t, 0)
	Update(t, s, func(tx ds.Tx) error { return tx.PutNetwork(Network("ok")) })
	for _, tc := range ruletable.Of(ruletable.NetworkName, ruletable.ServiceName, ruletable.ContainerID, ruletable.IfName) {
		t.Run(tc.Name(), func(t *testing.T) {
			err := s.Update(ctx, func(tx ds.Tx) error {
				switch tc.Kind {
				case ruletable.NetworkName:
					return tx.PutNetwork(Network(tc.Value))
				case ruletable.ServiceName:
					return tx.PutService(Service(tc.Value))
				case ruletable.ContainerID:
					return tx.PutPeer(Peer("ok", tc.Value, "eth0"))
				}
				return tx.PutPeer(Peer("ok", "c1", tc.Value))
			})
			switch {
			case tc.Valid && err != nil:
				t.Errorf("%s %q refused: %v", tc.Kind, tc.Value, err)
			case !tc.Valid && !errors.Is(err, api.ErrInvalid):
				t.Errorf("%s %q: %v, want ErrInvalid", tc.Kind, tc.Value, err)
			}
		})
	}
	Update(t, s, func(tx ds.Tx) error {
		for op, err := range map[string]error{
			"PutNetwork": tx.PutNetwork(nil),
			"PutPeer":    tx.PutPeer(nil),
			"PutService": tx.PutService(nil),
		} {
			if !errors.Is(err, api.ErrInvalid) {
				t.Errorf("%s(nil): %v, want ErrInvalid", op, err)
			}
		}
		return nil
	})
}

// Increment counts one update in a store, for tests of concurrent writers:
// the PID of peer id on network "net" (its own record), and the weight of
// service "shared"'s target (a record every writer shares). A lost update
// shows as a short count. It creates what is missing.
func Increment(tx ds.Tx, id string) error {
	if _, err := tx.GetNetwork("net"); errors.Is(err, api.ErrNotFound) {
		if err := tx.PutNetwork(Network("net")); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	p, err := tx.GetPeer("net", id, "eth0")
	if errors.Is(err, api.ErrNotFound) {
		p, err = Peer("net", id, "eth0"), nil
		p.PID = 0
	}
	if err != nil {
		return err
	}
	p.PID++
	if err := tx.PutPeer(p); err != nil {
		return err
	}
	svc, err := tx.GetService("shared")
	if errors.Is(err, api.ErrNotFound) {
		svc, err = Service("shared"), nil
		svc.Targets[0].Weight = 0
	}
	if err != nil {
		return err
	}
	svc.Targets[0].Weight++
	return tx.PutService(svc)
}
