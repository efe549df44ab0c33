package etcd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/ds/dstest"
)

// One etcd server serves the package's tests; each test keeps its keys
// under its own prefix (newPrefix), so tests run in parallel.
var (
	endpoint string           // the server's client URL; "" in the VM tier
	admin    *clientv3.Client // writes behind the stores' backs
	prefixes atomic.Int64
)

func TestMain(m *testing.M) {
	// The VM tier runs the kernel tests; this package needs no kernel.
	if os.Getenv("CIRCUIT_TEST_VM") != "" {
		os.Exit(m.Run())
	}
	stop, err := startEtcd()
	if err != nil {
		fmt.Fprintln(os.Stderr, "start embedded etcd:", err)
		os.Exit(1)
	}
	code := m.Run()
	stop()
	os.Exit(code)
}

// startEtcd starts a one-member etcd on 127.0.0.1, on ports the kernel
// picks (never 2379/2380, which a real etcd may hold), with its data in a
// temporary directory.
func startEtcd() (stop func(), err error) {
	dir, err := os.MkdirTemp("", "circuit-etcd-test-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	cfg := embed.NewConfig()
	cfg.Name = "dstest"
	cfg.Dir = dir
	any0 := url.URL{Scheme: "http", Host: "127.0.0.1:0"}
	cfg.ListenClientUrls = []url.URL{any0}
	cfg.AdvertiseClientUrls = []url.URL{any0}
	cfg.ListenPeerUrls = []url.URL{any0}
	cfg.AdvertisePeerUrls = []url.URL{any0}
	cfg.InitialCluster = cfg.Name + "=" + any0.String()
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	// A test server's data outlives nothing: skip the fsyncs, and elect
	// the only member quickly.
	cfg.UnsafeNoFsync = true
	cfg.TickMs, cfg.ElectionMs = 10, 100
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, err
	}
	endpoint = "http://" + e.Clients[0].Addr().String()
	admin, err = clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, Logger: zap.NewNop()})
	if err != nil {
		e.Close()
		return nil, err
	}
	return func() {
		admin.Close()
		e.Close()
		os.RemoveAll(dir)
	}, nil
}

func needEtcd(t *testing.T) {
	t.Helper()
	if endpoint == "" {
		t.Skip("no etcd in the VM tier: the unit tier runs this package")
	}
}

// newPrefix returns a key prefix no other test uses.
func newPrefix() string {
	return fmt.Sprintf("/circuit-test/%d", prefixes.Add(1))
}

func openStore(t *testing.T, prefix string, bound time.Duration) *Store {
	t.Helper()
	s, err := Open(context.Background(), Config{Endpoints: []string{endpoint}, Prefix: prefix, Timeout: bound})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func put(t *testing.T, key, value string) {
	t.Helper()
	if _, err := admin.Put(context.Background(), key, value); err != nil {
		t.Fatal(err)
	}
}

// The contract every datastore keeps (ds/dstest), on a real etcd.
//
// Busy takes the store's lock, meta/lock, which every Update honours: no
// commit while it exists, and Updates wait for it until their bound.
func TestContract(t *testing.T) {
	needEtcd(t)
	t.Parallel()
	dstest.Run(t, func(t *testing.T) dstest.Harness {
		prefix := newPrefix()
		k := newKeys(prefix)
		return dstest.Harness{
			Open: func(t *testing.T, bound time.Duration) ds.Datastore { return openStore(t, prefix, bound) },
			Busy: func(t *testing.T) func() {
				put(t, k.lock, "dstest")
				var once sync.Once
				return func() {
					once.Do(func() {
						if _, err := admin.Delete(context.Background(), k.lock); err != nil {
							t.Error(err)
						}
					})
				}
			},
			SetSchema: func(t *testing.T, v int) { put(t, k.schema, strconv.Itoa(v)) },
			Schema:    schemaVersion,
		}
	})
}

func update(t *testing.T, s ds.Datastore, fn func(ds.Tx) error) {
	t.Helper()
	if err := s.Update(context.Background(), fn); err != nil {
		t.Fatalf("Update: %v", err)
	}
}

func view(t *testing.T, s ds.Datastore, fn func(ds.Tx) error) {
	t.Helper()
	if err := s.View(context.Background(), fn); err != nil {
		t.Fatalf("View: %v", err)
	}
}

func equal[T any](t *testing.T, what string, got, want T) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s:\n got  %+v\n want %+v", what, got, want)
	}
}

// Two Updates read the same count and both try to commit: one conflicts
// and runs its fn again, and neither increment is lost.
func TestConflictRerunsFn(t *testing.T) {
	needEtcd(t)
	t.Parallel()
	prefix := newPrefix()
	a, b := openStore(t, prefix, 0), openStore(t, prefix, 0)
	update(t, a, func(tx ds.Tx) error { return dstest.Increment(tx, "c1") })

	var runs atomic.Int32
	read := [2]chan struct{}{make(chan struct{}), make(chan struct{})}
	var once [2]sync.Once
	increment := func(i int) func(ds.Tx) error {
		return func(tx ds.Tx) error {
			runs.Add(1)
			svc, err := tx.GetService("shared")
			if err != nil {
				return err
			}
			// Both read before either commits; a rerun does not wait.
			once[i].Do(func() { close(read[i]) })
			<-read[1-i]
			svc.Targets[0].Weight++
			return tx.PutService(svc)
		}
	}
	errs := make(chan error, 2)
	for i, s := range []*Store{a, b} {
		go func() { errs <- s.Update(context.Background(), increment(i)) }()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if n := runs.Load(); n < 3 {
		t.Errorf("fn ran %d times for 2 racing updates: the conflict did not rerun it", n)
	}
	view(t, a, func(tx ds.Tx) error {
		svc, err := tx.GetService("shared")
		if err == nil && svc.Targets[0].Weight != 3 {
			t.Errorf("count %d, want 3: an increment was lost", svc.Targets[0].Weight)
		}
		return err
	})
}

// An Update reads its own buffered writes, and commits exactly what it saw.
func TestReadsOwnWrites(t *testing.T) {
	needEtcd(t)
	t.Parallel()
	s := openStore(t, newPrefix(), 0)
	peer := dstest.Peer
	update(t, s, func(tx ds.Tx) error {
		for _, n := range []string{"alpha", "beta"} {
			if err := tx.PutNetwork(dstest.Network(n)); err != nil {
				return err
			}
		}
		for _, cid := range []string{"c1", "c2", "c3"} {
			if err := tx.PutPeer(peer("alpha", cid, "eth0")); err != nil {
				return err
			}
		}
		return tx.PutPeer(peer("beta", "c1", "eth0"))
	})

	var inside []api.Peer
	update(t, s, func(tx ds.Tx) error {
		// Put then read.
		if err := tx.PutService(dstest.Service("web")); err != nil {
			return err
		}
		if _, err := tx.GetService("web"); err != nil {
			t.Errorf("GetService after PutService: %v", err)
		}
		if err := tx.PutPeer(peer("beta", "c1+x", "eth0")); err != nil {
			return err
		}
		// Delete then read.
		if err := tx.DeletePeer("beta", "c1", "eth0"); err != nil {
			return err
		}
		if _, err := tx.GetPeer("beta", "c1", "eth0"); !errors.Is(err, api.ErrNotFound) {
			t.Errorf("GetPeer after DeletePeer: %v, want ErrNotFound", err)
		}
		// A deleted network loses its peers, also when it comes back
		// in the same Update, except the ones written again.
		if err := tx.DeleteNetwork("alpha"); err != nil {
			return err
		}
		if _, err := tx.ListPeers("alpha"); !errors.Is(err, api.ErrNotFound) {
			t.Errorf("ListPeers of a deleted network: %v, want ErrNotFound", err)
		}
		if err := tx.PutPeer(peer("alpha", "c2", "eth0")); !errors.Is(err, api.ErrNotFound) {
			t.Errorf("PutPeer on a deleted network: %v, want ErrNotFound", err)
		}
		if err := tx.PutNetwork(dstest.Network("alpha")); err != nil {
			return err
		}
		if err := tx.PutPeer(peer("alpha", "c2", "eth0")); err != nil {
			return err
		}
		if err := tx.PutPeer(peer("alpha", "c2", "eth1")); err != nil {
			return err
		}
		if err := tx.DeletePeer("alpha", "c2", "eth1"); err != nil {
			return err
		}
		if _, err := tx.GetPeer("alpha", "c1", "eth0"); !errors.Is(err, api.ErrNotFound) {
			t.Errorf("GetPeer of a deleted network's peer: %v, want ErrNotFound", err)
		}
		cp, err := tx.ContainerPeers("alpha", "c2")
		if err != nil {
			return err
		}
		equal(t, "ContainerPeers inside the Update", cp, []api.Peer{*peer("alpha", "c2", "eth0")})
		inside, err = tx.ListPeers("")
		return err
	})
	want := []api.Peer{*peer("alpha", "c2", "eth0"), *peer("beta", "c1+x", "eth0")}
	equal(t, "ListPeers inside the Update", inside, want)
	view(t, s, func(tx ds.Tx) error {
		peers, err := tx.ListPeers("")
		equal(t, "ListPeers after the commit", peers, want)
		if _, err := tx.GetService("web"); err != nil {
			t.Errorf("GetService after the commit: %v", err)
		}
		return err
	})
}

// Peers sort by their names, not by their keys: "c1" before "c1+x" and
// "c1-x", though '+' and '-' sort before the '/' after "c1" in a key.
func TestPeersSortByName(t *testing.T) {
	needEtcd(t)
	t.Parallel()
	s := openStore(t, newPrefix(), 0)
	update(t, s, func(tx ds.Tx) error {
		for _, n := range []string{"a", "a-b", "a.b"} {
			if err := tx.PutNetwork(dstest.Network(n)); err != nil {
				return err
			}
			for _, cid := range []string{"c1-x", "c1", "c1+x"} {
				if err := tx.PutPeer(dstest.Peer(n, cid, "eth0")); err != nil {
					return err
				}
			}
		}
		return nil
	})
	view(t, s, func(tx ds.Tx) error {
		peers, err := tx.ListPeers("")
		var got []string
		for _, p := range peers {
			got = append(got, p.Network+" "+p.ContainerID)
		}
		equal(t, "ListPeers order", got, []string{
			"a c1", "a c1+x", "a c1-x", "a-b c1", "a-b c1+x", "a-b c1-x", "a.b c1", "a.b c1+x", "a.b c1-x"})
		return err
	})
}

// Stores under "/a" and "/ab" share no key.
func TestPrefixIsolation(t *testing.T) {
	needEtcd(t)
	t.Parallel()
	base := newPrefix()
	a, ab := openStore(t, base+"/a", 0), openStore(t, base+"/ab/", 0)
	for name, s := range map[string]*Store{"x": a, "y": ab} {
		update(t, s, func(tx ds.Tx) error {
			if err := tx.PutNetwork(dstest.Network(name)); err != nil {
				return err
			}
			if err := tx.PutPeer(dstest.Peer(name, "c1", "eth0")); err != nil {
				return err
			}
			return tx.PutService(dstest.Service(name))
		})
	}
	for name, s := range map[string]*Store{"x": a, "y": ab} {
		view(t, s, func(tx ds.Tx) error {
			nets, err := tx.ListNetworks()
			if err != nil {
				return err
			}
			peers, err := tx.ListPeers("")
			if err != nil {
				return err
			}
			svcs, err := tx.ListServices()
			if len(nets) != 1 || nets[0].Name != name || len(peers) != 1 || peers[0].Network != name ||
				len(svcs) != 1 || svcs[0].Name != name {
				t.Errorf("store of %s sees %+v, %+v, %+v", name, nets, peers, svcs)
			}
			return err
		})
	}
	update(t, a, func(tx ds.Tx) error { return tx.DeleteNetwork("x") })
	view(t, ab, func(tx ds.Tx) error {
		_, err := tx.GetPeer("y", "c1", "eth0")
		return err
	})
}

// An etcd that does not answer fails Open, Update and View with ErrBusy
// within the bound, naming the endpoint and not the password.
func TestUnreachable(t *testing.T) {
	needEtcd(t)
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	const bound = 300 * time.Millisecond
	check := func(what string, err error, elapsed time.Duration) {
		t.Helper()
		t.Logf("%s after %v: %v", what, elapsed, err)
		if !errors.Is(err, api.ErrBusy) {
			t.Errorf("%s: %v, want ErrBusy", what, err)
			return
		}
		if !strings.Contains(err.Error(), addr) || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%s: %q should name %s and no password", what, err, addr)
		}
		// Slack for a loaded machine; still well short of the default.
		if elapsed > bound+2*time.Second {
			t.Errorf("%s took %v, bound %v", what, elapsed, bound)
		}
	}

	start := time.Now()
	_, err = Open(context.Background(), Config{Endpoints: []string{"http://" + addr}, Timeout: bound})
	check("Open", err, time.Since(start))
	start = time.Now()
	_, err = Open(context.Background(), Config{Endpoints: []string{"http://" + addr}, Timeout: bound, Username: "root", Password: "s3cret"})
	check("Open with credentials", err, time.Since(start))

	client, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://" + addr}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	s, err := New(client, newPrefix(), WithTimeout(bound))
	if err != nil {
		t.Fatal(err)
	}
	ran := false
	start = time.Now()
	err = s.Update(context.Background(), func(tx ds.Tx) error { ran = true; return tx.PutNetwork(dstest.Network("alpha")) })
	check("Update", err, time.Since(start))
	if ran {
		t.Error("Update ran fn without a snapshot")
	}
	start = time.Now()
	err = s.View(context.Background(), func(ds.Tx) error { return nil })
	check("View", err, time.Since(start))

	// The caller's own deadline is its error, not ErrBusy.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := s.View(ctx, func(ds.Tx) error { return nil }); !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, api.ErrBusy) {
		t.Errorf("View past the caller's deadline: %v, want context.DeadlineExceeded", err)
	}
}

// An Update that needs more operations than one etcd Txn takes is refused
// whole; deleting a network with more peers than that is one range delete.
func TestTxnOpsLimit(t *testing.T) {
	needEtcd(t)
	t.Parallel()
	s := openStore(t, newPrefix(), 0)
	err := s.Update(context.Background(), func(tx ds.Tx) error {
		for i := range DefaultMaxTxnOps {
			if err := tx.PutService(dstest.Service(fmt.Sprintf("s%03d", i))); err != nil {
				return err
			}
		}
		return nil
	})
	if !errors.Is(err, api.ErrUnsupported) {
		t.Fatalf("Update of %d services: %v, want ErrUnsupported", DefaultMaxTxnOps, err)
	}
	view(t, s, func(tx ds.Tx) error {
		svcs, err := tx.ListServices()
		if len(svcs) != 0 {
			t.Errorf("a refused Update wrote %d services", len(svcs))
		}
		return err
	})

	update(t, s, func(tx ds.Tx) error { return tx.PutNetwork(dstest.Network("big")) })
	const peers = 2 * DefaultMaxTxnOps
	for i := 0; i < peers; i += 100 {
		update(t, s, func(tx ds.Tx) error {
			for j := i; j < min(i+100, peers); j++ {
				if err := tx.PutPeer(dstest.Peer("big", fmt.Sprintf("c%03d", j), "eth0")); err != nil {
					return err
				}
			}
			return nil
		})
	}
	update(t, s, func(tx ds.Tx) error {
		if err := tx.DeleteNetwork("big"); err != nil {
			return err
		}
		if err := tx.PutNetwork(dstest.Network("big")); err != nil {
			return err
		}
		// Written again after the delete: the range delete skips it.
		return tx.PutPeer(dstest.Peer("big", "c100", "eth0"))
	})
	view(t, s, func(tx ds.Tx) error {
		got, err := tx.ListPeers("big")
		equal(t, "peers after deleting the network", got, []api.Peer{*dstest.Peer("big", "c100", "eth0")})
		return err
	})
}

// A locked store names the lock's holder when an Update gives up, and
// Views go on reading.
func TestLockHolderNamed(t *testing.T) {
	needEtcd(t)
	t.Parallel()
	prefix := newPrefix()
	s := openStore(t, prefix, 200*time.Millisecond)
	update(t, s, func(tx ds.Tx) error { return tx.PutNetwork(dstest.Network("alpha")) })
	put(t, newKeys(prefix).lock, "migration on host-3")
	err := s.Update(context.Background(), func(tx ds.Tx) error { return tx.DeleteNetwork("alpha") })
	if !errors.Is(err, api.ErrBusy) || !strings.Contains(err.Error(), "migration on host-3") {
		t.Errorf("Update of a locked store: %v, want ErrBusy naming the holder", err)
	}
	view(t, s, func(tx ds.Tx) error { _, err := tx.GetNetwork("alpha"); return err })
}

func TestPrefixes(t *testing.T) {
	// Never dialled: New does not contact etcd.
	client, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://127.0.0.1:9"}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	for _, tc := range []struct{ in, want string }{
		{"", DefaultPrefix + "/meta/schema"},
		{"/x", "/x/meta/schema"},
		{"/x//", "/x/meta/schema"},
	} {
		s, err := New(client, tc.in)
		if err != nil {
			t.Fatalf("New(%q): %v", tc.in, err)
		}
		if s.keys.schema != tc.want {
			t.Errorf("New(%q) keeps its schema at %q, want %q", tc.in, s.keys.schema, tc.want)
		}
	}
	if _, err := New(client, "/"); !errors.Is(err, api.ErrInvalid) {
		t.Errorf(`New with prefix "/": %v, want ErrInvalid`, err)
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"https://root:s3cret@10.0.0.1:2379": "https://10.0.0.1:2379",
		"http://10.0.0.1:2379":              "http://10.0.0.1:2379",
		"root:s3cret@10.0.0.1:2379":         "10.0.0.1:2379",
		"unix:///run/etcd.sock":             "unix:///run/etcd.sock",
		"http://h:1/a@b":                    "http://h:1/a@b",
	} {
		if got := redact(in); got != want {
			t.Errorf("redact(%q) = %q, want %q", in, got, want)
		}
	}
}
