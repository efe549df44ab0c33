package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/ds/bolt"
	"github.com/circuit-cni/circuit/pkg/cni"
	"github.com/circuit-cni/circuit/pkg/lb"
	"github.com/circuit-cni/circuit/pkg/netns"
	"github.com/circuit-cni/circuit/pkg/qos"
	"github.com/circuit-cni/circuit/pkg/runc"
)

// The kernel, faked, so gc's and restore's decisions are tested without
// root. Real behaviour is the root tier's (repair_test.go, integration/).

// fakeHost is a process table and namespaces: live namespaces by path
// (pins and /proc/PID/ns/net) with an identity each.
type fakeHost struct {
	mu      sync.Mutex
	ns      map[string]string // path -> namespace identity
	starts  map[int]uint64    // live processes
	plugins map[string]bool   // CNI_CONTAINERIDs of running plugins
	self    api.Process
	dels    []string // "containerID/ifname netns" of each CNI DEL
	applied []string // "netns ifname" of each Apply
	shaped  map[string]bool
	onApply func() // runs inside the next Apply: work of another process meanwhile
	onAdd   func() // runs inside the next CNI ADD
	// blockAdd, if set, runs in every CNI ADD, without the host's lock.
	blockAdd func()
	// procsResolve, if set, resolves containers.
	procsResolve func(arg string) (*runc.Container, error)
	lastApplied  qos.Policy
	// failAdd and failDel make the plugins fail.
	failAdd, failDel bool
}

func newFakeHost() *fakeHost {
	return &fakeHost{ns: map[string]string{}, starts: map[int]uint64{}, plugins: map[string]bool{},
		self: api.Process{PID: 1, Start: 1}, shaped: map[string]bool{}}
}

func (h *fakeHost) kernel() kernel {
	return kernel{cni: (*fakeCNI)(h), ns: (*fakeNS)(h), shaper: (*fakeShaper)(h), procs: (*fakeProcs)(h),
		lb: func(string) (lb.Backend, error) { return nil, api.Errorf(api.ErrUnsupported, "no backends here") }}
}

// run makes a process with a namespace of its own.
func (h *fakeHost) run(pid int) {
	h.starts[pid] = uint64(pid) * 10
	h.ns[netns.ProcPath(pid)] = fmt.Sprintf("ns-%d", pid)
}

type fakeNS fakeHost

func (f *fakeNS) lock() func() { f.mu.Lock(); return f.mu.Unlock }

func (f *fakeNS) Pin(src, dst string) error { defer f.lock()(); f.ns[dst] = f.ns[src]; return nil }
func (f *fakeNS) Unpin(path string) error   { defer f.lock()(); delete(f.ns, path); return nil }
func (f *fakeNS) IsNetns(path string) bool  { defer f.lock()(); _, ok := f.ns[path]; return ok }
func (f *fakeNS) Same(a, b string) bool {
	defer f.lock()()
	x, ok1 := f.ns[a]
	y, ok2 := f.ns[b]
	return ok1 && ok2 && x == y
}
func (f *fakeNS) Links(string) ([]string, error)               { return []string{"lo"}, nil }
func (f *fakeNS) BridgePorts(string, string) ([]string, error) { return nil, nil }
func (f *fakeNS) DeleteLink(string, string) error              { return nil }
func (f *fakeNS) ID(path string) (string, error) {
	defer f.lock()()
	if path == "/proc/self/ns/net" || path == netns.ProcPath(1) {
		return "host", nil
	}
	if id, ok := f.ns[path]; ok {
		return id, nil
	}
	return "", fmt.Errorf("stat %s: no such file or directory", path)
}
func (f *fakeNS) WaitSettled(string, []string) error { return nil }
func (f *fakeNS) LinkInfo(string, string, string) (string, string, error) {
	return "02:00:00:00:00:01", "veth0", nil
}

type fakeCNI fakeHost

func (f *fakeCNI) Add(context.Context, *cni.Config, cni.RuntimeConf) (*cni.Result, error) {
	if f.blockAdd != nil {
		f.blockAdd()
	}
	f.mu.Lock()
	onAdd := f.onAdd
	f.mu.Unlock()
	if onAdd != nil {
		onAdd()
	}
	if f.failAdd {
		return nil, errors.New("plugin failed (add)")
	}
	return &cni.Result{IPs: []string{"10.9.0.2/24"}}, nil
}
func (f *fakeCNI) Del(_ context.Context, _ *cni.Config, rc cni.RuntimeConf) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dels = append(f.dels, rc.ContainerID+"/"+rc.IfName+" "+rc.Netns)
	if f.failDel {
		return errors.New("plugin failed (del)")
	}
	return nil
}
func (f *fakeCNI) DelEach(context.Context, *cni.Config, cni.RuntimeConf) error {
	if f.failDel {
		return errors.New("plugin failed (del)")
	}
	return nil
}
func (f *fakeCNI) GC(context.Context, *cni.Config, []cni.RuntimeConf) error { return nil }
func (f *fakeCNI) Cached(string) ([]cni.RuntimeConf, error)                 { return nil, nil }

type fakeShaper fakeHost

func (f *fakeShaper) Apply(ns, ifname string, p qos.Policy) error {
	if f.onApply != nil {
		f.onApply()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastApplied = p
	f.applied = append(f.applied, ns+" "+ifname)
	f.shaped[ns+" "+ifname] = true
	return nil
}
func (f *fakeShaper) Reset(ns, ifname string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.shaped, ns+" "+ifname)
	return nil
}
func (f *fakeShaper) Stats(ns, ifname string) (*qos.Counters, *qos.Counters, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.shaped[ns+" "+ifname] {
		return &qos.Counters{}, nil, nil
	}
	return nil, nil, nil
}
func (f *fakeShaper) NetemSupported(string) error { return nil }

type fakeProcs fakeHost

func (f *fakeProcs) StartTime(pid int) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s, ok := f.starts[pid]; ok {
		return s, nil
	}
	return 0, fmt.Errorf("no process %d", pid)
}
func (f *fakeProcs) Self() api.Process                 { return f.self }
func (f *fakeProcs) BootID() string                    { return "boot-1" }
func (f *fakeProcs) PluginContainers() map[string]bool { return f.plugins }
func (f *fakeProcs) Resolve(_, arg string) (*runc.Container, error) {
	if f.procsResolve != nil {
		return f.procsResolve(arg)
	}
	return nil, api.Errorf(api.ErrNotFound, "not here")
}

// peerCase is one record and the host around it.
type peerCase struct {
	name  string
	setup func(h *fakeHost, c *Controller, p *api.Peer) // p is recorded after setup
	// What gc and restore must do: remove the record (with a CNI DEL, in
	// a reason's words), keep it, or refuse it as not circuit's.
	removed, foreign bool
	why              string
}

var peerCases = []peerCase{
	{name: "live", setup: func(h *fakeHost, c *Controller, p *api.Peer) {
		h.run(p.PID)
		h.ns[p.Netns] = h.ns[netns.ProcPath(p.PID)]
	}},
	{name: "dead", removed: true, why: "its container is gone", setup: func(h *fakeHost, c *Controller, p *api.Peer) {
		h.ns[p.Netns] = "ns-gone" // the pin keeps the namespace; the process left
	}},
	{name: "dead after a reboot", removed: true, why: "its container is gone", setup: func(h *fakeHost, c *Controller, p *api.Peer) {
		// No pin survives; the PID now belongs to another process.
		h.run(p.PID)
	}},
	{name: "connect in progress", setup: func(h *fakeHost, c *Controller, p *api.Peer) {
		h.run(4000)
		p.State, p.Owner = api.PeerConnecting, &api.Process{PID: 4000, Start: 40000}
	}},
	{name: "interrupted connect", removed: true, why: "an interrupted connect", setup: func(h *fakeHost, c *Controller, p *api.Peer) {
		p.State, p.Owner = api.PeerConnecting, &api.Process{PID: 4000, Start: 40000}
	}},
	{name: "interrupted connect, its pid reused", removed: true, why: "an interrupted connect", setup: func(h *fakeHost, c *Controller, p *api.Peer) {
		h.starts[4000] = 99 // another process with the owner's PID
		p.State, p.Owner = api.PeerConnecting, &api.Process{PID: 4000, Start: 40000}
	}},
	{name: "plugin still running", setup: func(h *fakeHost, c *Controller, p *api.Peer) {
		p.State, p.Owner = api.PeerConnecting, &api.Process{PID: 4000, Start: 40000}
		h.plugins[api.CNIContainerID(p.ContainerID)] = true
	}},
	{name: "interrupted disconnect", removed: true, why: "an interrupted disconnect", setup: func(h *fakeHost, c *Controller, p *api.Peer) {
		p.State, p.Owner = api.PeerDisconnecting, &api.Process{PID: 4000, Start: 40000}
	}},
	{name: "foreign netns", foreign: true, setup: func(h *fakeHost, c *Controller, p *api.Peer) {
		p.Netns = "/var/run/netns/someone-elses"
	}},
}

func newDecideController(t *testing.T) (*Controller, *fakeHost) {
	t.Helper()
	dir := t.TempDir()
	store, err := bolt.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	log := logrus.New()
	log.SetOutput(io.Discard)
	h := newFakeHost()
	c := newController(Config{StateDir: dir, Log: log}, store, h.kernel())
	t.Cleanup(func() { c.Close() })
	err = store.Update(context.Background(), func(tx ds.Tx) error {
		return tx.PutNetwork(&api.Network{Name: "net", Type: "bridge", Plugins: []string{"bridge"}, CNIVersion: "1.0.0",
			Config:    []byte(`{"cniVersion": "1.0.0", "name": "net", "type": "bridge", "ipam": {"type": "host-local", "subnet": "10.9.0.0/24", "dataDir": "` + dir + `/ipam"}}`),
			CreatedAt: time.Now(), QoS: &api.QoSPolicy{Rate: 5_000_000}})
	})
	if err != nil {
		t.Fatal(err)
	}
	return c, h
}

func (tc peerCase) record(t *testing.T, c *Controller, h *fakeHost) api.Peer {
	t.Helper()
	p := api.Peer{Network: "net", ContainerID: "web-00", PID: 2000, IfName: "eth0", IPs: []string{"10.9.0.2/24"},
		State: api.PeerConnected, ConnectedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	p.Netns = c.pinPath(p.Network, p.ContainerID, p.IfName)
	tc.setup(h, c, &p)
	if err := c.store.Update(context.Background(), func(tx ds.Tx) error { return tx.PutPeer(&p) }); err != nil {
		t.Fatal(err)
	}
	return p
}

func (c *Controller) peers(t *testing.T) []api.Peer {
	t.Helper()
	var out []api.Peer
	err := c.store.View(context.Background(), func(tx ds.Tx) error {
		var err error
		out, err = tx.ListPeers("net")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestGCDecisions(t *testing.T) {
	for _, tc := range peerCases {
		t.Run(tc.name, func(t *testing.T) {
			c, h := newDecideController(t)
			p := tc.record(t, c, h)
			ctx := context.Background()

			dry, err := c.GC(ctx, true)
			if err != nil {
				t.Fatalf("gc --dry-run: %v", err)
			}
			if len(h.dels) != 0 || len(c.peers(t)) != 1 {
				t.Fatalf("gc --dry-run changed something: DELs %v, peers %v", h.dels, c.peers(t))
			}
			rep, err := c.GC(ctx, false)
			peers := c.peers(t)
			switch {
			case tc.removed:
				want := fmt.Sprintf("disconnect web-00 from net (%s): 10.9.0.2/24", tc.why)
				if err != nil || !slices.Equal(rep.Actions, []string{want}) || !slices.Equal(dry.Actions, []string{"would " + want}) {
					t.Errorf("gc: %q (dry run %q), %v; want %q", rep.Actions, dry.Actions, err, want)
				}
				if len(peers) != 0 {
					t.Errorf("record kept: %+v", peers)
				}
				if len(h.dels) != 1 || !strings.HasPrefix(h.dels[0], "web-00/eth0 ") {
					t.Errorf("CNI DELs %v, want one of web-00/eth0", h.dels)
				}
				if h.IsNetnsFake(p.Netns) {
					t.Errorf("pin %s left", p.Netns)
				}
			case tc.foreign:
				if err == nil || !strings.Contains(err.Error(), "left alone") || len(peers) != 1 || len(h.dels) != 0 {
					t.Errorf("a record naming another netns: gc %q, %v; peers %v; DELs %v", rep.Actions, err, peers, h.dels)
				}
			default:
				if err != nil || len(rep.Actions) != 0 || len(dry.Actions) != 0 || len(peers) != 1 || len(h.dels) != 0 {
					t.Errorf("gc touched a peer it must keep: %q %q, %v; peers %v; DELs %v", dry.Actions, rep.Actions, err, peers, h.dels)
				}
				if len(peers) == 1 && (peers[0].State != p.State || !sameOwner(peers[0].Owner, p.Owner)) {
					t.Errorf("gc changed a kept record: %+v, was %+v", peers[0], p)
				}
			}
		})
	}
}

func TestRestoreDecisions(t *testing.T) {
	for _, tc := range peerCases {
		t.Run(tc.name, func(t *testing.T) {
			c, h := newDecideController(t)
			p := tc.record(t, c, h)
			rep, err := c.Restore(context.Background())
			peers := c.peers(t)
			switch {
			case tc.removed:
				want := fmt.Sprintf("disconnected web-00 from net (%s), released 10.9.0.2/24", tc.why)
				if err != nil || !slices.Equal(rep.Actions, []string{want}) || len(peers) != 0 || len(h.dels) != 1 {
					t.Errorf("restore: %q, %v; peers %v; DELs %v; want %q", rep.Actions, err, peers, h.dels, want)
				}
			case tc.foreign:
				if err == nil || !strings.Contains(err.Error(), "left alone") || len(peers) != 1 || len(h.applied) != 0 {
					t.Errorf("a record naming another netns: restore %q, %v; peers %v; applied %v", rep.Actions, err, peers, h.applied)
				}
			case tc.name == "live":
				// The network's rate is missing from the interface: put back.
				want := "re-applied qos to web-00 on net"
				if err != nil || !slices.Equal(rep.Actions, []string{want}) || !slices.Equal(h.applied, []string{p.Netns + " eth0"}) {
					t.Errorf("restore of a live peer: %q, %v; applied %v", rep.Actions, err, h.applied)
				}
				// A second run finds it in place.
				if rep, err := c.Restore(context.Background()); err != nil || len(rep.Actions) != 0 {
					t.Errorf("second restore: %q, %v", rep.Actions, err)
				}
			default:
				if err != nil || len(rep.Actions) != 0 || len(peers) != 1 || len(h.dels) != 0 || len(h.applied) != 0 {
					t.Errorf("restore touched work in progress: %q, %v; peers %v; DELs %v; applied %v", rep.Actions, err, peers, h.dels, h.applied)
				}
			}
		})
	}
}

// IsNetnsFake is fakeNS.IsNetns for assertions.
func (h *fakeHost) IsNetnsFake(path string) bool { _, ok := h.ns[path]; return ok }

// qos set changes only what it owns: a connect that finished, or a peer
// that was disconnected and connected again while qos set was shaping, is
// not turned back into the copy qos set read before.
func TestQoSSetChangesOnlyQoS(t *testing.T) {
	ctx := context.Background()
	c, h := newDecideController(t)
	live := peerCases[0].record(t, c, h) // web-00, connected, live
	h.run(3000)
	h.run(4000)
	self := api.Process{PID: 4000, Start: 40000}
	busy := api.Peer{Network: "net", ContainerID: "web-01", PID: 3000, IfName: "eth0", State: api.PeerConnecting,
		Owner: &self, ConnectedAt: time.Date(2026, 1, 2, 3, 4, 6, 0, time.UTC)}
	busy.Netns = c.pinPath("net", "web-01", "eth0")
	if err := c.store.Update(ctx, func(tx ds.Tx) error { return tx.PutPeer(&busy) }); err != nil {
		t.Fatal(err)
	}
	// While qos set shapes web-00, web-01's connect finishes, and web-00
	// is disconnected and connected again by a new process.
	var reconnected api.Peer
	h.onApply = func() {
		h.onApply = nil
		err := c.store.Update(ctx, func(tx ds.Tx) error {
			done := busy
			done.State, done.Owner, done.IPs = api.PeerConnected, nil, []string{"10.9.0.3/24"}
			if err := tx.PutPeer(&done); err != nil {
				return err
			}
			reconnected = live
			reconnected.PID, reconnected.ConnectedAt = 2001, live.ConnectedAt.Add(time.Hour)
			return tx.PutPeer(&reconnected)
		})
		if err != nil {
			t.Error(err)
		}
	}
	if err := c.SetQoS(ctx, "net", "", api.QoSPolicy{Rate: 10_000_000}); err != nil {
		t.Fatal(err)
	}
	for _, p := range c.peers(t) {
		switch p.ContainerID {
		case "web-00":
			if p.PID != 2001 || !p.ConnectedAt.Equal(reconnected.ConnectedAt) {
				t.Errorf("qos set wrote back web-00's old record: pid %d, connected %v", p.PID, p.ConnectedAt)
			}
		case "web-01":
			if p.State != api.PeerConnected || len(p.IPs) != 1 || p.Owner != nil {
				t.Errorf("qos set turned web-01's finished connect back into %s (owner %+v, ips %v)", p.State, p.Owner, p.IPs)
			}
		}
	}
	// A container's override changes that peer's QoS and nothing else.
	h.onApply = func() {
		h.onApply = nil
		c.store.Update(ctx, func(tx ds.Tx) error {
			p, err := tx.GetPeer("net", "web-00", "eth0")
			if err != nil {
				return err
			}
			p.MAC = "02:00:00:00:00:99"
			return tx.PutPeer(p)
		})
	}
	if err := c.SetQoS(ctx, "net", "web-00", api.QoSPolicy{Rate: 2_000_000}); err != nil {
		t.Fatal(err)
	}
	for _, p := range c.peers(t) {
		if p.ContainerID == "web-00" && (p.MAC != "02:00:00:00:00:99" || p.QoS == nil || p.QoS.Rate != 2_000_000) {
			t.Errorf("qos set --container wrote back a stale copy: mac %s, qos %+v", p.MAC, p.QoS)
		}
	}
}

// A connect's last write changes only the fields connect owns: a QoS
// override set while its ADD ran stays.
func TestConnectKeepsWhatOthersSetMeanwhile(t *testing.T) {
	ctx := context.Background()
	c, h := newDecideController(t)
	h.run(5000)
	h.procsResolve = func(arg string) (*runc.Container, error) { return &runc.Container{ID: "web-05", PID: 5000}, nil }
	h.onAdd = func() {
		h.onAdd = nil
		if err := c.SetQoS(ctx, "net", "web-05", api.QoSPolicy{Rate: 1_000_000}); err != nil {
			t.Error(err)
		}
	}
	p, err := c.Connect(ctx, api.ConnectRequest{Container: "web-05", Network: "net"})
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range c.peers(t) {
		if q.ContainerID == "web-05" && (q.QoS == nil || q.QoS.Rate != 1_000_000 || q.State != api.PeerConnected) {
			t.Errorf("connect overwrote the override set during its ADD: %+v (qos %+v)", q, q.QoS)
		}
	}
	if p.QoS == nil {
		t.Errorf("connect returned %+v without the override", p)
	}
	// And the interface carries the override, not the network's rate it
	// read before.
	if last := h.lastApplied; last.Rate != 1_000_000 {
		t.Errorf("the interface was left shaped at %d bit/s", last.Rate)
	}
}

// Two connects of one container to two networks at once, neither naming
// an interface, get two names: the free name is reserved with the intent.
func TestConcurrentConnectsReserveNames(t *testing.T) {
	ctx := context.Background()
	c, h := newDecideController(t)
	err := c.store.Update(ctx, func(tx ds.Tx) error {
		return tx.PutNetwork(&api.Network{Name: "other", Type: "bridge", Plugins: []string{"bridge"}, CNIVersion: "1.0.0",
			Config: []byte(`{"cniVersion": "1.0.0", "name": "other", "type": "bridge"}`), CreatedAt: time.Now()})
	})
	if err != nil {
		t.Fatal(err)
	}
	h.run(5000)
	h.procsResolve = func(string) (*runc.Container, error) { return &runc.Container{ID: "web-05", PID: 5000}, nil }
	// Both ADDs start only when both connects have recorded their intent.
	arrived := make(chan struct{}, 2)
	release := make(chan struct{})
	h.blockAdd = func() {
		arrived <- struct{}{}
		<-release
	}
	errs := make(chan error, 2)
	for _, n := range []string{"net", "other"} {
		go func() {
			_, err := c.Connect(ctx, api.ConnectRequest{Container: "web-05", Network: n})
			errs <- err
		}()
	}
	<-arrived
	<-arrived
	close(release)
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	var names []string
	for _, n := range []string{"net", "other"} {
		c.store.View(ctx, func(tx ds.Tx) error {
			peers, err := tx.ContainerPeers(n, "web-05")
			for _, p := range peers {
				names = append(names, p.IfName)
			}
			return err
		})
	}
	if len(names) != 2 || names[0] == names[1] {
		t.Errorf("interfaces %v, want two different names", names)
	}
}

// A connect whose ADD failed and whose undo (DEL) failed too keeps its
// record, saying so, with its pin: the interface and address the plugins
// may have left are still circuit's to release, and gc does it later.
func TestFailedUndoKeepsTheRecord(t *testing.T) {
	ctx := context.Background()
	c, h := newDecideController(t)
	h.run(5000)
	h.procsResolve = func(string) (*runc.Container, error) { return &runc.Container{ID: "web-09", PID: 5000}, nil }
	h.failAdd, h.failDel = true, true
	if _, err := c.Connect(ctx, api.ConnectRequest{Container: "web-09", Network: "net"}); err == nil {
		t.Fatal("connect succeeded with a failing ADD")
	}
	peers := c.peers(t)
	if len(peers) != 1 || peers[0].State != api.PeerUndoFailed {
		t.Fatalf("after a failed ADD and a failed DEL the records are %+v, want one %q", peers, api.PeerUndoFailed)
	}
	if !h.IsNetnsFake(peers[0].Netns) {
		t.Errorf("the pin was removed: the next DEL could not reach the namespace")
	}
	// gc retries the DEL once the connect's process is gone.
	h.failDel = false
	h.self = api.Process{PID: 2, Start: 2}
	rep, err := c.GC(ctx, false)
	if err != nil || len(rep.Actions) != 1 || !strings.Contains(rep.Actions[0], "an undo that failed") {
		t.Errorf("gc: %q, %v", rep.Actions, err)
	}
	if peers := c.peers(t); len(peers) != 0 {
		t.Errorf("records after gc: %+v", peers)
	}
}
