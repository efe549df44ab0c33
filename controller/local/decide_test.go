package local

import (
	"context"
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

func (f *fakeNS) Pin(src, dst string) error { f.ns[dst] = f.ns[src]; return nil }
func (f *fakeNS) Unpin(path string) error   { delete(f.ns, path); return nil }
func (f *fakeNS) IsNetns(path string) bool  { _, ok := f.ns[path]; return ok }
func (f *fakeNS) Same(a, b string) bool {
	x, ok1 := f.ns[a]
	y, ok2 := f.ns[b]
	return ok1 && ok2 && x == y
}
func (f *fakeNS) FreeIfName(string) (string, error) { return "eth0", nil }
func (f *fakeNS) LinkInfo(string, string, string) (string, string, error) {
	return "02:00:00:00:00:01", "veth0", nil
}

type fakeCNI fakeHost

func (f *fakeCNI) Add(context.Context, *cni.Config, cni.RuntimeConf) (*cni.Result, error) {
	return &cni.Result{IPs: []string{"10.9.0.2/24"}}, nil
}
func (f *fakeCNI) Del(_ context.Context, _ *cni.Config, rc cni.RuntimeConf) error {
	f.dels = append(f.dels, rc.ContainerID+"/"+rc.IfName+" "+rc.Netns)
	return nil
}
func (f *fakeCNI) DelEach(context.Context, *cni.Config, cni.RuntimeConf) error { return nil }
func (f *fakeCNI) GC(context.Context, *cni.Config, []cni.RuntimeConf) error    { return nil }
func (f *fakeCNI) Cached(string) ([]cni.RuntimeConf, error)                    { return nil, nil }

type fakeShaper fakeHost

func (f *fakeShaper) Apply(ns, ifname string, _ qos.Policy) error {
	f.applied = append(f.applied, ns+" "+ifname)
	f.shaped[ns+" "+ifname] = true
	return nil
}
func (f *fakeShaper) Reset(ns, ifname string) error { delete(f.shaped, ns+" "+ifname); return nil }
func (f *fakeShaper) Stats(ns, ifname string) (*qos.Counters, *qos.Counters, error) {
	if f.shaped[ns+" "+ifname] {
		return &qos.Counters{}, nil, nil
	}
	return nil, nil, nil
}
func (f *fakeShaper) NetemSupported(string) error { return nil }

type fakeProcs fakeHost

func (f *fakeProcs) StartTime(pid int) (uint64, error) {
	if s, ok := f.starts[pid]; ok {
		return s, nil
	}
	return 0, fmt.Errorf("no process %d", pid)
}
func (f *fakeProcs) Self() api.Process                 { return f.self }
func (f *fakeProcs) PluginContainers() map[string]bool { return f.plugins }
func (f *fakeProcs) Resolve(string, string) (*runc.Container, error) {
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
