package controller

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"
)

var ctx = context.Background() // shared by the Fake tests

func mustNetwork(t *testing.T, f *Fake, conf string) *Network {
	t.Helper()
	n, err := f.CreateNetwork(ctx, []byte(conf), false)
	if err != nil {
		t.Fatalf("CreateNetwork(%s): %v", conf, err)
	}
	return n
}

func TestFakeNetworks(t *testing.T) {
	f := NewFake()
	n := mustNetwork(t, f, `{"cniVersion": "0.2.0", "name": "sandbox", "type": "bridge", "ipam": {"subnet": "10.100.10.0/24"}}`)
	if n.Name != "sandbox" || n.Type != "bridge" || n.CNIVersion != "0.2.0" || n.IsList || !reflect.DeepEqual(n.Plugins, []string{"bridge"}) {
		t.Errorf("conf: %+v", n)
	}
	l := mustNetwork(t, f, `{"cniVersion": "1.0.0", "name": "chain", "plugins": [{"type": "ptp"}, {"type": "portmap"}]}`)
	if l.Type != "ptp" || !l.IsList || !reflect.DeepEqual(l.Plugins, []string{"ptp", "portmap"}) {
		t.Errorf("conflist: %+v", l)
	}

	for conf, want := range map[string]error{
		`{"cniVersion": "0.2.0", "name": "sandbox", "type": "bridge"}`: ErrExists,
		`{"name": "x", "type": "bridge"`:                               ErrInvalid,
		`{"name": "../etc", "type": "bridge"}`:                         ErrInvalid,
		`{"name": "", "type": "bridge"}`:                               ErrInvalid,
		`{"name": "notype"}`:                                           ErrInvalid,
		`{"name": "x", "plugins": [{"type": ""}]}`:                     ErrInvalid,
		`{"name": "x", "type": "bridge", "ipam": {"subnet": "nope"}}`:  ErrInvalid,
	} {
		if _, err := f.CreateNetwork(ctx, []byte(conf), false); !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", conf, err, want)
		}
	}
	// --force replaces the definition and keeps the peers.
	if _, err := f.Connect(ctx, ConnectRequest{Container: "4668", Network: "sandbox"}); err != nil {
		t.Fatal(err)
	}
	if n, err := f.CreateNetwork(ctx, []byte(`{"cniVersion": "0.4.0", "name": "sandbox", "type": "macvlan"}`), true); err != nil || n.Type != "macvlan" || len(n.Peers) != 1 {
		t.Errorf("force: %+v, %v", n, err)
	}

	list, err := f.ListNetworks(ctx)
	if err != nil || len(list) != 2 || list[0].Name != "chain" || list[1].Name != "sandbox" {
		t.Errorf("list: %+v %v", list, err)
	}
	if _, err := f.InspectNetwork(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("inspect missing: %v", err)
	}
	if err := f.DeleteNetwork(ctx, "sandbox", false); !errors.Is(err, ErrInUse) {
		t.Errorf("delete with peers: %v", err)
	}
	if err := f.DeleteNetwork(ctx, "sandbox", true); err != nil {
		t.Errorf("force delete: %v", err)
	}
	if err := f.DeleteNetwork(ctx, "sandbox", false); !errors.Is(err, ErrNotFound) {
		t.Errorf("delete twice: %v", err)
	}
}

func TestFakeConnect(t *testing.T) {
	f := NewFake()
	mustNetwork(t, f, `{"name": "a", "type": "bridge", "ipam": {"subnet": "10.30.30.0/24"}}`)
	mustNetwork(t, f, `{"name": "b", "type": "bridge"}`)

	p, err := f.Connect(ctx, ConnectRequest{Container: "19022", Network: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if p.PID != 19022 || p.ContainerID != "19022" || p.IfName != "eth0" || !reflect.DeepEqual(p.IPs, []string{"10.30.30.2/24"}) || p.State != PeerConnected {
		t.Errorf("peer: %+v", p)
	}
	// The same container on a second network gets the next free ethN.
	p, err = f.Connect(ctx, ConnectRequest{Container: "19022", Network: "b"})
	if err != nil || p.IfName != "eth1" || p.IPs[0] != "10.88.1.2/24" {
		t.Errorf("second network: %+v %v", p, err)
	}
	// A runc ID gets a made-up PID; hook mode names both.
	if p, err = f.Connect(ctx, ConnectRequest{Container: "web-00", Network: "a"}); err != nil || p.ContainerID != "web-00" || p.PID == 0 || p.IPs[0] != "10.30.30.3/24" {
		t.Errorf("by id: %+v %v", p, err)
	}
	if p, err = f.Connect(ctx, ConnectRequest{Container: "777", ContainerID: "web-01", Network: "a", IfName: "net0"}); err != nil || p.ContainerID != "web-01" || p.PID != 777 || p.IfName != "net0" {
		t.Errorf("hook style: %+v %v", p, err)
	}

	for _, tc := range []struct {
		req  ConnectRequest
		want error
	}{
		{ConnectRequest{Container: "19022", Network: "a"}, ErrExists},
		{ConnectRequest{Container: "19022", Network: "a", IfName: "eth1"}, ErrExists},
		{ConnectRequest{Container: "1", Network: "nope"}, ErrNotFound},
		{ConnectRequest{Network: "a"}, ErrInvalid},
	} {
		if _, err := f.Connect(ctx, tc.req); !errors.Is(err, tc.want) {
			t.Errorf("%+v: %v, want %v", tc.req, err, tc.want)
		}
	}

	// Disconnect by PID or by ID; several interfaces need a name.
	if _, err := f.Connect(ctx, ConnectRequest{Container: "web-00", Network: "a", IfName: "net9"}); err != nil {
		t.Fatal(err)
	}
	if err := f.Disconnect(ctx, DisconnectRequest{Container: "web-00", Network: "a"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("ambiguous: %v", err)
	}
	if err := f.Disconnect(ctx, DisconnectRequest{Container: "web-00", Network: "a", IfName: "net9"}); err != nil {
		t.Errorf("by ifname: %v", err)
	}
	if err := f.Disconnect(ctx, DisconnectRequest{Container: "777", Network: "a"}); err != nil {
		t.Errorf("by pid: %v", err)
	}
	if err := f.Disconnect(ctx, DisconnectRequest{Container: "777", Network: "a"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("twice: %v", err)
	}
	if err := f.Disconnect(ctx, DisconnectRequest{Container: "1", Network: "nope"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown network: %v", err)
	}

	// Results never alias the Fake's state.
	n, _ := f.InspectNetwork(ctx, "a")
	n.Peers[0].IPs[0] = "changed"
	n.Peers = nil
	if again, _ := f.InspectNetwork(ctx, "a"); again.Peers[0].IPs[0] != "10.30.30.2/24" {
		t.Errorf("state aliased: %+v", again.Peers)
	}
}

func TestFakeConcurrentConnects(t *testing.T) {
	f := NewFake()
	mustNetwork(t, f, `{"name": "storm", "type": "bridge", "ipam": {"subnet": "10.220.13.0/24"}}`)
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := f.Connect(ctx, ConnectRequest{Container: fmt.Sprint(1000 + i), Network: "storm"}); err != nil {
				t.Error(err)
			}
			_, _ = f.ListNetworks(ctx)
		}()
	}
	wg.Wait()
	n, _ := f.InspectNetwork(ctx, "storm")
	seen := map[string]bool{}
	for _, p := range n.Peers {
		seen[p.IPs[0]] = true
	}
	if len(seen) != 50 {
		t.Errorf("%d distinct addresses for 50 peers", len(seen))
	}
}

func TestFakeQoS(t *testing.T) {
	f := NewFake()
	mustNetwork(t, f, `{"name": "a", "type": "bridge"}`)
	if _, err := f.Connect(ctx, ConnectRequest{Container: "1", Network: "a"}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []QoSPolicy{
		{},
		{Ceiling: 10},
		{Rate: 10, Ceiling: 5},
		{Loss: 101},
		{Delay: -1},
		{Rate: 1, Direction: "sideways"},
	} {
		if err := f.SetQoS(ctx, "a", "", p); !errors.Is(err, ErrInvalid) {
			t.Errorf("%+v: %v", p, err)
		}
	}
	if err := f.SetQoS(ctx, "nope", "", QoSPolicy{Rate: 1}); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown network: %v", err)
	}
	if err := f.SetQoS(ctx, "a", "9", QoSPolicy{Rate: 1}); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown container: %v", err)
	}
	if err := f.SetQoS(ctx, "a", "", QoSPolicy{Rate: 5e6, Delay: time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	q, _ := f.ShowQoS(ctx, "a")
	if len(q) != 1 || q[0].Source != "network" || q[0].Policy.Rate != 5e6 || q[0].Egress == nil || q[0].Ingress != nil {
		t.Errorf("show: %+v", q)
	}
	if err := f.SetQoS(ctx, "a", "1", QoSPolicy{Rate: 1e6, Direction: DirBoth}); err != nil {
		t.Fatal(err)
	}
	if q, _ = f.ShowQoS(ctx, "a"); q[0].Source != "container" || q[0].Policy.Rate != 1e6 || q[0].Ingress == nil {
		t.Errorf("show override: %+v", q)
	}
	if err := f.ResetQoS(ctx, "a", "1"); err != nil {
		t.Fatal(err)
	}
	if err := f.ResetQoS(ctx, "a", ""); err != nil {
		t.Fatal(err)
	}
	if q, _ = f.ShowQoS(ctx, "a"); q[0].Source != "none" || q[0].Policy != nil {
		t.Errorf("after reset: %+v", q)
	}
	if _, err := f.ShowQoS(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("show unknown: %v", err)
	}
}

func TestFakeServices(t *testing.T) {
	f := NewFake()
	s, err := f.CreateService(ctx, Service{Name: "demo", Address: "192.168.100.235:80"})
	if err != nil {
		t.Fatal(err)
	}
	if s.Protocol != "tcp" || s.Scheduler != "rr" || s.Backend != "ipvs" || s.Targets == nil {
		t.Errorf("defaults: %+v", s)
	}
	for _, svc := range []Service{
		{Name: "demo", Address: "10.0.0.1:80"},
		{Name: "other", Address: "192.168.100.235:80"},
	} {
		if _, err := f.CreateService(ctx, svc); !errors.Is(err, ErrExists) {
			t.Errorf("%+v: %v", svc, err)
		}
	}
	for _, svc := range []Service{
		{Name: "../x", Address: "10.0.0.1:80"},
		{Name: "x", Address: "10.0.0.1"},
		{Name: "x", Address: "host:80"},
		{Name: "x", Address: "10.0.0.1:0"},
		{Name: "x", Address: "10.0.0.1:80", Protocol: "icmp"},
		{Name: "x", Address: "10.0.0.1:80", Scheduler: "best"},
		{Name: "x", Address: "10.0.0.1:80", Backend: "lvs"},
		{Name: "x", Address: "10.0.0.1:80", Persistence: -time.Second},
	} {
		if _, err := f.CreateService(ctx, svc); !errors.Is(err, ErrInvalid) {
			t.Errorf("%+v: %v", svc, err)
		}
	}
	// The same address with another protocol is another service.
	if _, err := f.CreateService(ctx, Service{Name: "dns", Address: "192.168.100.235:80", Protocol: "udp"}); err != nil {
		t.Errorf("udp twin: %v", err)
	}

	targets := []Target{{Address: "10.0.0.1:80", Weight: 1}, {Address: "10.0.0.2:80", Weight: 2, Forward: "dr"}}
	if err := f.AddTargets(ctx, "demo", targets); err != nil {
		t.Fatal(err)
	}
	if targets[0].Forward != "" {
		t.Errorf("AddTargets changed the caller's slice")
	}
	if err := f.AddTargets(ctx, "demo", []Target{{Address: "10.0.0.1:80", Weight: 7}}); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate target: %v", err)
	}
	for _, bad := range [][]Target{nil, {{Address: "x", Weight: 1}}, {{Address: "10.0.0.3:80", Weight: -1}}, {{Address: "10.0.0.3:80", Forward: "magic"}}} {
		if err := f.AddTargets(ctx, "demo", bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("%+v: %v", bad, err)
		}
	}
	if err := f.AddTargets(ctx, "nope", targets); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown service: %v", err)
	}
	// Removing is all or nothing.
	if err := f.RemoveTargets(ctx, "demo", []string{"10.0.0.1:80", "10.0.0.9:80"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("remove missing: %v", err)
	}
	f.SetServiceStats("demo", Counters{Connections: 3}, map[string]Counters{"10.0.0.1:80": {Bytes: 10}, "gone:1": {}})
	st, err := f.ShowService(ctx, "demo")
	if err != nil {
		t.Fatal(err)
	}
	wantT := []Target{{Address: "10.0.0.1:80", Weight: 1, Forward: "nat"}, {Address: "10.0.0.2:80", Weight: 2, Forward: "dr"}}
	if !reflect.DeepEqual(st.Service.Targets, wantT) || st.Stats.Connections != 3 || len(st.Targets) != 1 || st.Targets["10.0.0.1:80"].Bytes != 10 {
		t.Errorf("show: %+v", st)
	}
	if err := f.RemoveTargets(ctx, "demo", []string{"10.0.0.1:80"}); err != nil {
		t.Fatal(err)
	}
	list, _ := f.ListServices(ctx)
	if len(list) != 2 || list[0].Name != "demo" || len(list[0].Targets) != 1 || list[1].Name != "dns" {
		t.Errorf("list: %+v", list)
	}
	if err := f.DeleteService(ctx, "demo"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ShowService(ctx, "demo"); !errors.Is(err, ErrNotFound) {
		t.Errorf("show deleted: %v", err)
	}
	if err := f.DeleteService(ctx, "demo"); !errors.Is(err, ErrNotFound) {
		t.Errorf("delete twice: %v", err)
	}
}

func TestFakeHook(t *testing.T) {
	f := NewFake()
	mustNetwork(t, f, `{"name": "a", "type": "bridge", "ipam": {"subnet": "10.1.1.0/24"}}`)
	conf := filepath.Join(t.TempDir(), "b.conf")
	if err := os.WriteFile(conf, []byte(`{"name": "b", "type": "bridge", "ipam": {"subnet": "10.2.2.0/24"}}`), 0o644); err != nil {
		t.Fatal(err)
	}

	res, err := f.Hook(ctx, HookRequest{ID: "web-00", Status: "creating", PID: 4668, Networks: []string{"a"}})
	if err != nil || !reflect.DeepEqual(res.Actions, []string{"connected container web-00 to network a as eth0 (10.1.1.2/24)"}) {
		t.Errorf("creating: %+v %v", res, err)
	}
	// A repeated hook is harmless.
	if res, err = f.Hook(ctx, HookRequest{ID: "web-00", Status: "created", PID: 4668, Networks: []string{"a"}}); err != nil || len(res.Actions) != 1 {
		t.Errorf("again: %+v %v", res, err)
	}
	if res, err = f.Hook(ctx, HookRequest{ID: "web-00", Status: "creating", PID: 4668, CNIConf: conf}); err != nil || len(res.Actions) != 1 {
		t.Errorf("CNI_CONF: %+v %v", res, err)
	}
	if res, err = f.Hook(ctx, HookRequest{ID: "web-00", Status: "running"}); err != nil || len(res.Actions) != 0 {
		t.Errorf("running: %+v %v", res, err)
	}
	res, err = f.Hook(ctx, HookRequest{ID: "web-00", Status: "stopped"})
	if err != nil || !reflect.DeepEqual(res.Actions, []string{"disconnected container web-00 from network a", "disconnected container web-00 from network b"}) {
		t.Errorf("stopped: %+v %v", res, err)
	}

	for _, tc := range []struct {
		req  HookRequest
		want error
	}{
		{HookRequest{Status: "creating"}, ErrInvalid},
		{HookRequest{ID: "x", Status: "paused"}, ErrInvalid},
		{HookRequest{ID: "x", Status: "creating"}, ErrInvalid},
		{HookRequest{ID: "x", Status: "creating", Networks: []string{"nope"}}, ErrNotFound},
	} {
		if _, err := f.Hook(ctx, tc.req); !errors.Is(err, tc.want) {
			t.Errorf("%+v: %v, want %v", tc.req, err, tc.want)
		}
	}
	if _, err := f.Hook(ctx, HookRequest{ID: "x", Status: "creating", CNIConf: "/no/such.conf"}); !os.IsNotExist(err) {
		t.Errorf("missing CNI_CONF: %v", err)
	}
	if got := len(f.Hooks()); got != 10 {
		t.Errorf("recorded %d hook calls, want 10", got)
	}
}

func TestFakeRepairAndErrors(t *testing.T) {
	f := NewFake()
	mustNetwork(t, f, `{"name": "a", "type": "bridge"}`)
	if err := f.AddPeer(Peer{Network: "a", ContainerID: "dead", IfName: "eth0", State: PeerDisconnecting}); err != nil {
		t.Fatal(err)
	}
	if err := f.AddPeer(Peer{Network: "nope"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("AddPeer to unknown network: %v", err)
	}
	r, err := f.GC(ctx, true)
	if err != nil || !reflect.DeepEqual(r.Actions, []string{"would remove disconnecting peer dead/eth0 on network a"}) {
		t.Errorf("dry run: %+v %v", r, err)
	}
	if r, err = f.GC(ctx, false); err != nil || len(r.Actions) != 1 {
		t.Errorf("gc: %+v %v", r, err)
	}
	if r, err = f.GC(ctx, false); err != nil || len(r.Actions) != 0 {
		t.Errorf("gc again: %+v %v", r, err)
	}
	if r, err = f.Restore(ctx); err != nil || r.Actions == nil {
		t.Errorf("restore: %+v %v", r, err)
	}

	boom := errors.New("boom")
	f.SetError("ListNetworks", boom)
	if _, err := f.ListNetworks(ctx); err != boom {
		t.Errorf("injected: %v", err)
	}
	f.SetError("ListNetworks", nil)
	if _, err := f.ListNetworks(ctx); err != nil {
		t.Errorf("cleared: %v", err)
	}
	if f.Close() != nil || f.Closes() != 1 {
		t.Errorf("close")
	}
}
