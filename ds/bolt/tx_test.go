package bolt

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/circuit-cni/circuit/controller"
	"github.com/circuit-cni/circuit/ds"
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

var created = time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)

func testNetwork(name string) *controller.Network {
	return &controller.Network{
		Name:       name,
		Type:       "bridge",
		Plugins:    []string{"bridge", "bandwidth"},
		CNIVersion: "1.0.0",
		IsList:     true,
		Config:     json.RawMessage(`{"cniVersion":"1.0.0","name":"` + name + `","plugins":[{"type":"bridge"}]}`),
		CreatedAt:  created,
		QoS:        &controller.QoSPolicy{Rate: 1e6, Delay: 5 * time.Millisecond, Direction: controller.DirBoth},
	}
}

func testPeer(network, cid, ifname string) *controller.Peer {
	return &controller.Peer{
		Network:     network,
		ContainerID: cid,
		PID:         4242,
		IfName:      ifname,
		IPs:         []string{"10.1.0.2/24", "fd00::2/64"},
		MAC:         "02:42:ac:11:00:02",
		HostIf:      "veth1234",
		Netns:       "/var/lib/circuit/netns/" + cid,
		State:       controller.PeerConnected,
		ConnectedAt: created,
		QoS:         &controller.QoSPolicy{Loss: 1.5},
	}
}

func testService(name string) *controller.Service {
	return &controller.Service{
		Name:        name,
		Address:     "[fd00::1]:80",
		Protocol:    "tcp",
		Scheduler:   "rr",
		Persistence: time.Minute,
		Backend:     "ipvs",
		Targets:     []controller.Target{{Address: "10.1.0.2:80", Weight: 1, Forward: "nat"}},
		CreatedAt:   created,
	}
}

func equal[T any](t *testing.T, what string, got, want T) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s:\n got  %+v\n want %+v", what, got, want)
	}
}

func TestNetworkRoundTrip(t *testing.T) {
	s := openStore(t, t.TempDir())
	want := testNetwork("alpha")
	update(t, s, func(tx ds.Tx) error { return tx.PutNetwork(want) })

	var got *controller.Network
	view(t, s, func(tx ds.Tx) error {
		var err error
		got, err = tx.GetNetwork("alpha")
		return err
	})
	// Read after the transaction and the file are closed: the copy must
	// not point into bbolt's unmapped memory.
	equal(t, "GetNetwork", got, want)
}

func TestPutNetworkStripsPeersAndKeepsStoredPeers(t *testing.T) {
	s := openStore(t, t.TempDir())
	n := testNetwork("alpha")
	n.Peers = []controller.Peer{*testPeer("alpha", "ghost", "eth0")}
	update(t, s, func(tx ds.Tx) error {
		if err := tx.PutNetwork(n); err != nil {
			return err
		}
		return tx.PutPeer(testPeer("alpha", "c1", "eth0"))
	})
	if len(n.Peers) != 1 {
		t.Errorf("PutNetwork changed the caller's Peers: %v", n.Peers)
	}
	view(t, s, func(tx ds.Tx) error {
		got, err := tx.GetNetwork("alpha")
		if err == nil && got.Peers != nil {
			t.Errorf("GetNetwork returned stored Peers %+v", got.Peers)
		}
		return err
	})
	if raw := readRaw(t, s.Path(), "v1", "networks", "alpha", "config"); strings.Contains(raw, "ghost") {
		t.Errorf("network record holds peers: %s", raw)
	}

	// Replacing the network keeps its peers.
	n2 := testNetwork("alpha")
	n2.Type = "macvlan"
	update(t, s, func(tx ds.Tx) error { return tx.PutNetwork(n2) })

	view(t, s, func(tx ds.Tx) error {
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
		if err != nil {
			return err
		}
		equal(t, "peers after replacing the network", peers, []controller.Peer{*testPeer("alpha", "c1", "eth0")})
		return nil
	})
}

func TestPeerRoundTripAndSortedLists(t *testing.T) {
	s := openStore(t, t.TempDir())
	// Put in an order unlike the sorted one.
	keys := [][3]string{
		{"beta", "c2", "eth0"},
		{"alpha", "c2", "eth1"},
		{"alpha", "c2", "eth0"},
		{"alpha", "c1", "net9"},
		{"beta", "c1", "eth0"},
	}
	update(t, s, func(tx ds.Tx) error {
		for _, name := range []string{"beta", "alpha", "gamma"} {
			if err := tx.PutNetwork(testNetwork(name)); err != nil {
				return err
			}
		}
		for _, k := range keys {
			if err := tx.PutPeer(testPeer(k[0], k[1], k[2])); err != nil {
				return err
			}
		}
		return nil
	})

	var got *controller.Peer
	var all, alpha, gamma []controller.Peer
	var nets []controller.Network
	view(t, s, func(tx ds.Tx) error {
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
	equal(t, "GetPeer", got, testPeer("alpha", "c2", "eth1"))

	want := []controller.Peer{
		*testPeer("alpha", "c1", "net9"),
		*testPeer("alpha", "c2", "eth0"),
		*testPeer("alpha", "c2", "eth1"),
		*testPeer("beta", "c1", "eth0"),
		*testPeer("beta", "c2", "eth0"),
	}
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

// ContainerPeers answers for one container without reading the others,
// and knows a missing network from a container with no interface there.
func TestContainerPeers(t *testing.T) {
	s := openStore(t, t.TempDir())
	update(t, s, func(tx ds.Tx) error {
		for _, name := range []string{"alpha", "beta"} {
			if err := tx.PutNetwork(testNetwork(name)); err != nil {
				return err
			}
		}
		for _, k := range [][3]string{{"alpha", "c1", "eth1"}, {"alpha", "c1", "eth0"}, {"alpha", "c2", "eth0"}, {"beta", "c1", "eth0"}} {
			if err := tx.PutPeer(testPeer(k[0], k[1], k[2])); err != nil {
				return err
			}
		}
		return nil
	})
	var c1, none []controller.Peer
	var missing, invalid error
	view(t, s, func(tx ds.Tx) error {
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
	equal(t, `ContainerPeers("alpha", "c1")`, c1, []controller.Peer{*testPeer("alpha", "c1", "eth0"), *testPeer("alpha", "c1", "eth1")})
	if none == nil || len(none) != 0 {
		t.Errorf(`ContainerPeers("beta", "c2") = %#v, want an empty non-nil slice`, none)
	}
	if !errors.Is(missing, controller.ErrNotFound) {
		t.Errorf(`ContainerPeers on a missing network: %v, want ErrNotFound`, missing)
	}
	if !errors.Is(invalid, controller.ErrInvalid) {
		t.Errorf(`ContainerPeers with container ID "../c1": %v, want ErrInvalid`, invalid)
	}
}

func TestServiceRoundTripAndSortedList(t *testing.T) {
	s := openStore(t, t.TempDir())
	update(t, s, func(tx ds.Tx) error {
		for _, name := range []string{"web", "api", "db"} {
			if err := tx.PutService(testService(name)); err != nil {
				return err
			}
		}
		return nil
	})
	var got *controller.Service
	var list []controller.Service
	view(t, s, func(tx ds.Tx) error {
		var err error
		if got, err = tx.GetService("db"); err != nil {
			return err
		}
		list, err = tx.ListServices()
		return err
	})
	equal(t, "GetService", got, testService("db"))
	equal(t, "ListServices", list, []controller.Service{*testService("api"), *testService("db"), *testService("web")})

	update(t, s, func(tx ds.Tx) error { return tx.DeleteService("db") })
	view(t, s, func(tx ds.Tx) error {
		if _, err := tx.GetService("db"); !errors.Is(err, controller.ErrNotFound) {
			t.Errorf("GetService after delete: %v, want ErrNotFound", err)
		}
		return nil
	})
}

func TestNotFound(t *testing.T) {
	s := openStore(t, t.TempDir())
	update(t, s, func(tx ds.Tx) error { return tx.PutNetwork(testNetwork("alpha")) })

	check := func(what string, err error, wantMsg string) {
		t.Helper()
		if !errors.Is(err, controller.ErrNotFound) {
			t.Errorf("%s: %v, want ErrNotFound", what, err)
		} else if err.Error() != wantMsg {
			t.Errorf("%s: message %q, want %q", what, err, wantMsg)
		}
	}
	view(t, s, func(tx ds.Tx) error {
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
	update(t, s, func(tx ds.Tx) error {
		check("DeleteNetwork", tx.DeleteNetwork("x"), `network "x": not found`)
		check("DeletePeer", tx.DeletePeer("alpha", "c1", "eth0"), `peer "c1/eth0" on network "alpha": not found`)
		check("DeleteService", tx.DeleteService("web"), `service "web": not found`)
		err := tx.PutPeer(testPeer("x", "c1", "eth0"))
		if !errors.Is(err, controller.ErrNotFound) {
			t.Errorf("PutPeer on a missing network: %v, want ErrNotFound", err)
		}
		return nil
	})
}

func TestDeleteNetworkDeletesPeers(t *testing.T) {
	s := openStore(t, t.TempDir())
	update(t, s, func(tx ds.Tx) error {
		for _, n := range []string{"alpha", "beta"} {
			if err := tx.PutNetwork(testNetwork(n)); err != nil {
				return err
			}
			for _, cid := range []string{"c1", "c2"} {
				if err := tx.PutPeer(testPeer(n, cid, "eth0")); err != nil {
					return err
				}
			}
		}
		return nil
	})
	update(t, s, func(tx ds.Tx) error { return tx.DeleteNetwork("alpha") })
	// A network of the same name starts with no peers.
	update(t, s, func(tx ds.Tx) error { return tx.PutNetwork(testNetwork("alpha")) })

	view(t, s, func(tx ds.Tx) error {
		if _, err := tx.GetPeer("alpha", "c1", "eth0"); !errors.Is(err, controller.ErrNotFound) {
			t.Errorf("GetPeer after DeleteNetwork: %v, want ErrNotFound", err)
		}
		peers, err := tx.ListPeers("")
		if err != nil {
			return err
		}
		equal(t, "peers left", peers, []controller.Peer{*testPeer("beta", "c1", "eth0"), *testPeer("beta", "c2", "eth0")})
		return nil
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
		equal(t, "peers", peers, []controller.Peer{*testPeer("alpha", "c1", "eth1")})
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

func TestRollbackWhenFnFails(t *testing.T) {
	s := openStore(t, t.TempDir())
	update(t, s, func(tx ds.Tx) error { return tx.PutNetwork(testNetwork("keep")) })

	boom := errors.New("boom")
	err := s.Update(context.Background(), func(tx ds.Tx) error {
		if err := tx.PutNetwork(testNetwork("alpha")); err != nil {
			return err
		}
		if err := tx.PutService(testService("web")); err != nil {
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
	view(t, s, func(tx ds.Tx) error {
		nets, err := tx.ListNetworks()
		if err != nil {
			return err
		}
		if len(nets) != 1 || nets[0].Name != "keep" {
			t.Errorf("networks after rollback = %+v, want only keep", nets)
		}
		if svcs, err := tx.ListServices(); err != nil || len(svcs) != 0 {
			t.Errorf("services after rollback = %+v, %v; want none", svcs, err)
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
		if _, err := tx.GetNetwork("alpha"); !errors.Is(err, controller.ErrNotFound) {
			t.Errorf("GetNetwork = %v, want ErrNotFound", err)
		}
		if _, err := tx.GetPeer("alpha", "c", "eth0"); !errors.Is(err, controller.ErrNotFound) {
			t.Errorf("GetPeer = %v, want ErrNotFound", err)
		}
		if _, err := tx.GetService("web"); !errors.Is(err, controller.ErrNotFound) {
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

func TestInvalidNames(t *testing.T) {
	s := openStore(t, t.TempDir())
	update(t, s, func(tx ds.Tx) error { return tx.PutNetwork(testNetwork("ok")) })
	for _, bad := range []string{"", ".", "..", "a/b", "/", "a\x00b"} {
		update(t, s, func(tx ds.Tx) error {
			errs := map[string]error{
				"PutNetwork":          tx.PutNetwork(testNetwork(bad)),
				"DeleteNetwork":       tx.DeleteNetwork(bad),
				"PutPeer network":     tx.PutPeer(testPeer(bad, "c1", "eth0")),
				"PutPeer containerID": tx.PutPeer(testPeer("ok", bad, "eth0")),
				"PutPeer ifname":      tx.PutPeer(testPeer("ok", "c1", bad)),
				"DeletePeer":          tx.DeletePeer("ok", bad, "eth0"),
				"PutService":          tx.PutService(testService(bad)),
				"DeleteService":       tx.DeleteService(bad),
			}
			_, errs["GetNetwork"] = tx.GetNetwork(bad)
			_, errs["GetPeer"] = tx.GetPeer("ok", "c1", bad)
			_, errs["ListPeers"] = tx.ListPeers(bad)
			_, errs["GetService"] = tx.GetService(bad)
			for op, err := range errs {
				if op == "ListPeers" && bad == "" {
					continue // "" means every network
				}
				if !errors.Is(err, controller.ErrInvalid) {
					t.Errorf("%s(%q): %v, want ErrInvalid", op, bad, err)
				}
			}
			return nil
		})
	}
	update(t, s, func(tx ds.Tx) error {
		for op, err := range map[string]error{
			"PutNetwork": tx.PutNetwork(nil),
			"PutPeer":    tx.PutPeer(nil),
			"PutService": tx.PutService(nil),
		} {
			if !errors.Is(err, controller.ErrInvalid) {
				t.Errorf("%s(nil): %v, want ErrInvalid", op, err)
			}
		}
		return nil
	})
	// Names that merely look odd are fine.
	update(t, s, func(tx ds.Tx) error {
		for _, name := range []string{"...", ".hidden", "a.b", "a b", "ünï"} {
			if err := tx.PutNetwork(testNetwork(name)); err != nil {
				t.Errorf("PutNetwork(%q): %v", name, err)
			}
		}
		return nil
	})
}
