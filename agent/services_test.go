package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/circuit-cni/circuit/agentapi"
	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
)

// Cluster services: one Txn per change, replicated on every node; local
// services and a replica's local fields (BootID) are left alone.
func TestClusterServices(t *testing.T) {
	needEtcd(t)
	t.Parallel()
	prefix := newPrefix()
	a := startAgent(t, prefix, "a", "")
	b := startAgent(t, prefix, "b", "")
	localSvc := &api.Service{Name: "mine", Address: "10.0.0.9:80", Protocol: "tcp", Scheduler: "rr", Backend: "ipvs", Targets: []api.Target{}, BootID: "boot-b", CreatedAt: time.Now().UTC()}
	b.update(func(tx ds.Tx) error { return tx.PutService(localSvc) })
	ctx := context.Background()

	var svc api.Service
	err := a.api.Do(ctx, "POST", agentapi.PathServices, api.Service{Name: "web", Address: "10.96.0.1:80",
		Targets: []api.Target{{Address: "10.1.0.2:8080", Weight: 1}}}, &svc)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if !svc.Cluster || svc.Protocol != "tcp" || svc.Scheduler != "rr" || svc.Backend != api.BackendAuto || len(svc.Targets) != 1 || svc.Targets[0].Forward != "nat" {
		t.Errorf("created %+v", svc)
	}
	replicaSvc := func(ta *testAgent, name string) *api.Service {
		var s *api.Service
		err := ta.local.View(ctx, func(tx ds.Tx) (err error) {
			s, err = tx.GetService(name)
			return err
		})
		if errors.Is(err, api.ErrNotFound) {
			return nil
		}
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	waitFor(t, "b's replica of web", func() bool { return replicaSvc(b, "web") != nil })
	if r := replicaSvc(b, "web"); !r.Cluster || r.Address != "10.96.0.1:80" {
		t.Errorf("b's replica: %+v", r)
	}

	for name, s := range map[string]api.Service{
		"the same name":    {Name: "web", Address: "10.96.0.2:80"},
		"the same address": {Name: "web2", Address: "10.96.0.1:80"},
		"b's local name":   {Name: "mine", Address: "10.96.0.3:80"},
	} {
		via := a
		if name == "b's local name" {
			via = b
		}
		if err := via.api.Do(ctx, "POST", agentapi.PathServices, s, nil); !errors.Is(err, api.ErrExists) {
			t.Errorf("create with %s: %v, want ErrExists", name, err)
		}
	}
	if err := a.api.Do(ctx, "POST", agentapi.PathServices, api.Service{Name: "bad", Address: "nowhere"}, nil); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("create with a bad address: %v", err)
	}

	targets := fmt.Sprintf(agentapi.PathTargets, "web")
	add := agentapi.Targets{Targets: []api.Target{{Address: "10.1.1.2:8080", Weight: 2}}}
	if err := a.api.Do(ctx, "POST", targets, add, &svc); err != nil || len(svc.Targets) != 2 {
		t.Fatalf("add target: %v (%+v)", err, svc)
	}
	if err := b.api.Do(ctx, "POST", targets, add, nil); !errors.Is(err, api.ErrExists) {
		t.Errorf("add it again: %v, want ErrExists", err)
	}
	// b programmed it (part 2): its BootID survives the cluster's changes.
	waitFor(t, "b's replica with two targets", func() bool { return len(replicaSvc(b, "web").Targets) == 2 })
	b.update(func(tx ds.Tx) error {
		r, err := tx.GetService("web")
		if err != nil {
			return err
		}
		r.BootID, r.Backend = "boot-b", "ipvs"
		return tx.PutService(r)
	})
	if err := a.api.Do(ctx, "DELETE", targets, agentapi.Targets{Addresses: []string{"10.1.0.2:8080"}}, &svc); err != nil || len(svc.Targets) != 1 {
		t.Fatalf("remove target: %v (%+v)", err, svc)
	}
	waitFor(t, "b's replica with one target", func() bool { return len(replicaSvc(b, "web").Targets) == 1 })
	if r := replicaSvc(b, "web"); r.BootID != "boot-b" || r.Backend != "ipvs" || r.Targets[0].Address != "10.1.1.2:8080" {
		t.Errorf("b's replica after an update: %+v", r)
	}
	if err := a.api.Do(ctx, "DELETE", targets, agentapi.Targets{Addresses: []string{"10.1.0.2:8080"}}, nil); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("remove a missing target: %v, want ErrNotFound", err)
	}
	if err := a.api.Do(ctx, "POST", fmt.Sprintf(agentapi.PathTargets, "nope"), add, nil); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("add to a missing service: %v, want ErrNotFound", err)
	}

	if err := a.api.Do(ctx, "DELETE", agentapi.PathServices+"/web", nil, nil); err != nil {
		t.Fatalf("delete: %v", err)
	}
	waitFor(t, "b's replica to go", func() bool { return replicaSvc(b, "web") == nil })
	if replicaSvc(a, "web") != nil {
		t.Errorf("a's replica left")
	}
	if r := replicaSvc(b, "mine"); r == nil || r.Cluster || r.BootID != "boot-b" {
		t.Errorf("b's local service: %+v", r)
	}
	if err := a.api.Do(ctx, "DELETE", agentapi.PathServices+"/web", nil, nil); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("delete again: %v", err)
	}
	var names []string
	err = a.local.View(ctx, func(tx ds.Tx) error {
		ss, err := tx.ListServices()
		for _, s := range ss {
			names = append(names, s.Name)
		}
		return err
	})
	if err != nil || !slices.Equal(names, nil) {
		t.Errorf("a's services: %v %v", names, err)
	}
}
