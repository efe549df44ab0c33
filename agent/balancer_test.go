package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"sync"
	"testing"
	"time"

	"github.com/circuit-cni/circuit/agentapi"
	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/pkg/lb"
)

// fakeLB is a load balancer that keeps what it was told to hold, by
// service name; "auto" picks "ipvs".
type fakeLB struct {
	mu       sync.Mutex
	services map[string]lb.Service
	foreign  map[string]bool // addresses the "kernel" has a service on that is not circuit's
	ensures  int
}

func (f *fakeDataplane) Balancer(name string) (lb.Backend, error) {
	if name == lb.AutoName {
		name = lb.IPVS
	}
	return &fakeBackend{f: &f.lb, name: name}, nil
}

// service is what the fake holds of name; nil if nothing.
func (f *fakeDataplane) service(name string) *lb.Service {
	f.lb.mu.Lock()
	defer f.lb.mu.Unlock()
	if s, ok := f.lb.services[name]; ok {
		return &s
	}
	return nil
}

// targets are the fake's targets of name as "address/weight", sorted.
func (f *fakeDataplane) targets(name string) []string {
	s := f.service(name)
	if s == nil {
		return nil
	}
	var out []string
	for _, t := range s.Targets {
		out = append(out, fmt.Sprintf("%s/%d", t.Address, t.Weight))
	}
	slices.Sort(out)
	return out
}

type fakeBackend struct {
	f    *fakeLB
	name string
}

func (b *fakeBackend) Name() string                                 { return b.name }
func (b *fakeBackend) Available() error                             { return nil }
func (b *fakeBackend) Validate(lb.Service) error                    { return nil }
func (b *fakeBackend) Close() error                                 { return nil }
func (b *fakeBackend) AddTarget(s lb.Service, _ lb.Target) error    { return b.Ensure(s) }
func (b *fakeBackend) RemoveTarget(s lb.Service, _ lb.Target) error { return b.Ensure(s) }
func (b *fakeBackend) SetTarget(s lb.Service, _ lb.Target) error    { return b.Ensure(s) }

func (b *fakeBackend) Ensure(s lb.Service) error {
	b.f.mu.Lock()
	defer b.f.mu.Unlock()
	if b.f.services == nil {
		b.f.services = map[string]lb.Service{}
	}
	b.f.services[s.Name] = s
	b.f.ensures++
	return nil
}

func (b *fakeBackend) Delete(s lb.Service) error {
	b.f.mu.Lock()
	defer b.f.mu.Unlock()
	delete(b.f.services, s.Name)
	return nil
}

func (b *fakeBackend) Stats(s lb.Service) (*lb.Stats, error) {
	b.f.mu.Lock()
	defer b.f.mu.Unlock()
	if b.f.foreign[s.Address] {
		return &lb.Stats{}, nil
	}
	if _, ok := b.f.services[s.Name]; !ok {
		return nil, api.ErrNotFound
	}
	return &lb.Stats{}, nil
}

// A container target follows its container from node to node: every node
// balances to its address; when its peer goes, every node drains it
// (weight 0), then drops it after the service's drain period; it comes
// back with the peer. A service the kernel has on the address already is
// left alone; one the cluster deletes leaves every node.
func TestContainerTargets(t *testing.T) {
	needEtcd(t)
	t.Parallel()
	prefix := newPrefix()
	a := startAgent(t, prefix, "a", "")
	b := startAgent(t, prefix, "b", "")
	ctx := context.Background()
	a.mustCreate(conf("cnet", "10.30.0.0/16"))
	waitFor(t, "b's replica of cnet", func() bool { return b.replica("cnet") != nil })
	connect(t, b, "cnet", "web-1", "10.30.1.5/24")
	connect(t, a, "cnet", "web-2", "10.30.0.7/24")
	waitPublished(t, a, "cnet", "web-1")

	var svc api.Service
	if err := a.api.Do(ctx, "POST", agentapi.PathServices, api.Service{Name: "web", Address: "10.96.5.1:80", Drain: 300 * time.Millisecond}, &svc); err != nil {
		t.Fatal(err)
	}
	path := fmt.Sprintf(agentapi.PathTargets, "web")
	add := func(spec string) error {
		ct, err := api.ParseContainerTarget(spec)
		if err != nil {
			t.Fatal(err)
		}
		return a.api.Do(ctx, "POST", path, agentapi.Targets{Targets: []api.Target{ct.Target(1, "")}}, &svc)
	}
	if err := add("web-1:8080"); err != nil {
		t.Fatalf("add web-1: %v", err)
	}
	if len(svc.Targets) != 1 || svc.Targets[0].Address != "10.30.1.5:8080" || svc.Targets[0].Container != "web-1" || svc.Targets[0].Network != "cnet" {
		t.Errorf("added %+v", svc.Targets)
	}
	if err := add("web-2@cnet:8080"); err != nil {
		t.Fatalf("add web-2: %v", err)
	}
	for spec, want := range map[string]error{
		"web-1:8080":       api.ErrExists,   // already a target
		"nobody:8080":      api.ErrNotFound, // connected nowhere
		"web-1@other:8080": api.ErrNotFound,
	} {
		if err := add(spec); !errors.Is(err, want) {
			t.Errorf("add %s: %v, want %v", spec, err, want)
		}
	}
	both := []string{"10.30.0.7:8080/1", "10.30.1.5:8080/1"}
	for _, n := range []*testAgent{a, b} {
		waitFor(t, n.cfg.Node+" balances to both containers", func() bool { return slices.Equal(n.fake().targets("web"), both) })
	}

	// The metrics give every target of every service this node balances
	// (what the agent holds as programmed, which it records just after the
	// dataplane call the wait above saw).
	weights := func() []string {
		mfs, err := b.metrics.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, mf := range mfs {
			if mf.GetName() == "circuit_agent_target_weight" {
				for _, m := range mf.GetMetric() {
					out = append(out, fmt.Sprintf("%s=%v", m.GetLabel()[1].GetValue(), m.GetGauge().GetValue()))
				}
			}
		}
		slices.Sort(out)
		return out
	}
	waitFor(t, "b's metrics give both targets' weights", func() bool {
		return slices.Equal(weights(), []string{"10.30.0.7:8080=1", "10.30.1.5:8080=1"})
	})

	// web-1's peer goes: every node drains it, then drops it.
	disconnect(t, b, "cnet", "web-1")
	for _, n := range []*testAgent{a, b} {
		waitFor(t, n.cfg.Node+" drains web-1", func() bool {
			return slices.Equal(n.fake().targets("web"), []string{"10.30.0.7:8080/1", "10.30.1.5:8080/0"})
		})
	}
	waitFor(t, "a's replica says web-1 drains", func() bool {
		r := a.replicaService("web")
		return r != nil && slices.ContainsFunc(r.Targets, func(t api.Target) bool { return t.Container == "web-1" && t.Draining() })
	})
	for _, n := range []*testAgent{a, b} {
		waitFor(t, n.cfg.Node+" drops web-1 after the drain", func() bool {
			return slices.Equal(n.fake().targets("web"), []string{"10.30.0.7:8080/1"})
		})
	}
	// It comes back, at the address it has now.
	connect(t, a, "cnet", "web-1", "10.30.0.9/24")
	for _, n := range []*testAgent{a, b} {
		waitFor(t, n.cfg.Node+" balances to web-1 again", func() bool {
			return slices.Equal(n.fake().targets("web"), []string{"10.30.0.7:8080/1", "10.30.0.9:8080/1"})
		})
	}
	// Removed by container ID.
	if err := a.api.Do(ctx, "DELETE", path, agentapi.Targets{Addresses: []string{"web-2"}}, &svc); err != nil || len(svc.Targets) != 1 {
		t.Fatalf("remove web-2 by ID: %v (%+v)", err, svc.Targets)
	}
	waitFor(t, "b drops web-2", func() bool { return slices.Equal(b.fake().targets("web"), []string{"10.30.0.9:8080/1"}) })

	// A service whose address the kernel has already is not this agent's.
	b.fake().lb.mu.Lock()
	b.fake().lb.foreign = map[string]bool{"10.96.5.2:80": true}
	b.fake().lb.mu.Unlock()
	if err := a.api.Do(ctx, "POST", agentapi.PathServices, api.Service{Name: "taken", Address: "10.96.5.2:80"}, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a balances taken", func() bool { return a.fake().service("taken") != nil })
	waitFor(t, "b says taken is left alone", func() bool { return b.logged("cluster service taken: the kernel's IPVS already has a service") })
	if b.fake().service("taken") != nil {
		t.Errorf("b programmed a service over one that is not its own")
	}

	// A service deleted while a's agent is away leaves a's kernel when it
	// is back; what it still balances stays.
	fa, stateA := a.fake(), a.cfg.StateDir
	a.stop()
	if err := b.api.Do(ctx, "DELETE", agentapi.PathServices+"/taken", nil, nil); err != nil {
		t.Fatal(err)
	}
	a = startAgent(t, prefix, "a", stateA, func(c *Config) { c.Dataplane = fa })
	waitFor(t, "a's restarted agent removes taken", func() bool { return fa.service("taken") == nil })
	if owned, _ := a.ownedServices(); !slices.Equal(slices.Sorted(maps.Keys(owned)), []string{"web"}) {
		t.Errorf("a's own services after the restart: %v", slices.Sorted(maps.Keys(owned)))
	}
	if got := fa.targets("web"); !slices.Equal(got, []string{"10.30.0.9:8080/1"}) {
		t.Errorf("a's web after the restart: %v", got)
	}

	// A container whose node is lost drains on every other node.
	connect(t, b, "cnet", "web-3", "10.30.1.6/24")
	waitPublished(t, a, "cnet", "web-3")
	if err := add("web-3:8080"); err != nil {
		t.Fatalf("add web-3: %v", err)
	}
	waitFor(t, "a balances to web-3", func() bool { return slices.Contains(fa.targets("web"), "10.30.1.6:8080/1") })
	b.stop()
	waitFor(t, "a drains web-3 of lost node b", func() bool { return slices.Contains(fa.targets("web"), "10.30.1.6:8080/0") })

	// Deleted, it leaves the kernel and the agent's record of its own.
	if err := a.api.Do(ctx, "DELETE", agentapi.PathServices+"/web", nil, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a removes web", func() bool { return fa.service("web") == nil })
	if owned, _ := a.ownedServices(); len(owned) != 0 {
		t.Errorf("a still records %v as its own", slices.Sorted(maps.Keys(owned)))
	}
}

// waitPublished waits until the cluster knows where container id is.
func waitPublished(t *testing.T, ta *testAgent, network, id string) {
	t.Helper()
	waitFor(t, id+" published", func() bool {
		var ps agentapi.Peers
		if err := ta.api.Do(context.Background(), "GET", agentapi.PathPeers+"?network="+network, nil, &ps); err != nil {
			return false
		}
		return slices.ContainsFunc(ps.Peers, func(p api.Peer) bool { return p.ContainerID == id })
	})
}

// replicaService is the node's replica of a cluster service; nil if none.
func (ta *testAgent) replicaService(name string) *api.Service {
	var s *api.Service
	ta.local.View(context.Background(), func(tx ds.Tx) (err error) {
		s, err = tx.GetService(name)
		return err
	})
	return s
}
