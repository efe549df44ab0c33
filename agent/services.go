package agent

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/internal/filelock"
	"github.com/circuit-cni/circuit/pkg/lb"
)

// Cluster services are balanced by every node: the services loop makes
// this node's load balancer (IPVS or nftables, whichever the kernel has,
// through pkg/lb as circuit's own services) hold every cluster service of
// the view, whenever the view changes. Like the overlay loop it needs no
// etcd request, so a container gone on another node leaves this node's
// balancer as fast as the watch brings the news.
//
// A container target follows its container: it is balanced to the address
// the container's peer has now, on whichever node it runs, while that
// node is ready. When the peer goes (disconnected, or its node lost) the
// target drains: weight 0 at its last address, so open connections go on
// and no new one reaches it, then out of the kernel after the service's
// drain period; it comes back with the peer. Each node times the drain
// from when its own view lost the peer.
//
// The agent changes only services it programmed, recorded in
// <state>/agent-services.json before it first programs one; it programs no
// service where the kernel's IPVS already has another on the address (not
// circuit's, or a local service of circuit's), and takes <state>/lb.lock
// around every change, as circuit does, so their changes never interleave.

const (
	ownedFile    = "agent-services.json"
	lbLockFile   = "lb.lock"
	lbLockWait   = 10 * time.Second // as long as circuit waits for it
	servicesLoop = "services"
)

// ownedService is what the agent must know to delete a service it
// programmed, when the cluster no longer has it.
type ownedService struct {
	Backend  string `json:"backend"`
	Address  string `json:"address"`
	Protocol string `json:"protocol"`
}

// targetKey names a container target of a service.
type targetKey struct{ service, container, network string }

// balancer is the services loop's memory.
type balancer struct {
	mu      sync.Mutex
	owned   map[string]ownedService // nil until read from ownedFile
	missing map[targetKey]time.Time // since when a container target's peer is away
	last    map[targetKey]string    // where a container target was last balanced to
	held    map[string]lb.Service   // what the kernel holds of each service, for the metrics
}

// planTargets is what this node balances svc to at now: its targets with
// container targets at their containers' addresses, or draining while
// away, or left out once drained. next is when the plan changes by
// itself (a drain ends); zero if it does not.
func (a *Agent) planTargets(st *state, svc api.Service, now time.Time) (targets []api.Target, next time.Time) {
	b := &a.lb
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.missing == nil {
		b.missing, b.last = map[targetKey]time.Time{}, map[targetKey]string{}
	}
	vip, err := api.ParseAddrPort(svc.Address)
	if err != nil {
		return nil, time.Time{}
	}
	drain := svc.Drain
	if drain <= 0 {
		drain = api.DefaultDrain
	}
	seen := map[string]bool{}
	targets = []api.Target{}
	for _, t := range svc.Targets {
		if t.Container != "" {
			k := targetKey{svc.Name, t.Container, t.Network}
			ap, err := api.ParseAddrPort(t.Address)
			if err != nil {
				continue
			}
			if addr, ok := st.containerAddr(t.Container, t.Network, vip.Addr().Is6()); ok {
				delete(b.missing, k)
				t.Address = netip.AddrPortFrom(addr, ap.Port()).String()
				b.last[k] = t.Address
			} else {
				since, ok := b.missing[k]
				if !ok {
					since = now
					b.missing[k] = now
				}
				until := since.Add(drain)
				if !now.Before(until) {
					continue
				}
				if l, ok := b.last[k]; ok {
					t.Address = l
				}
				t.DrainUntil = until
				if next.IsZero() || until.Before(next) {
					next = until
				}
			}
		}
		if seen[t.Address] {
			continue // two targets at one address: the kernel holds one
		}
		seen[t.Address] = true
		targets = append(targets, t)
	}
	return targets, next
}

// forgetTargets drops the memory of container targets st has no more.
func (b *balancer) forgetTargets(st *state) {
	b.mu.Lock()
	defer b.mu.Unlock()
	keep := func(k targetKey) bool {
		svc, ok := st.services[k.service]
		return ok && slices.ContainsFunc(svc.Targets, func(t api.Target) bool { return t.Container == k.container && t.Network == k.network })
	}
	maps.DeleteFunc(b.missing, func(k targetKey, _ time.Time) bool { return !keep(k) })
	maps.DeleteFunc(b.last, func(k targetKey, _ string) bool { return !keep(k) })
}

// containerAddr is the address of the family asked that container has on
// network, on a ready node (the first such node by name: a container ID
// is one container).
func (st *state) containerAddr(container, network string, v6 bool) (netip.Addr, bool) {
	var keys []peerKey
	for k := range st.peers {
		if k.container == container && k.network == network && st.alive[k.node] {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, func(x, y peerKey) int {
		if c := cmp.Compare(x.node, y.node); c != 0 {
			return c
		}
		return cmp.Compare(x.ifname, y.ifname)
	})
	for _, k := range keys {
		for _, addr := range st.peers[k] {
			if addr.Is6() == v6 {
				return addr, true
			}
		}
	}
	return netip.Addr{}, false
}

// ownedServices reads ownedFile once; later the memory is the truth.
func (a *Agent) ownedServices() (map[string]ownedService, error) {
	b := &a.lb
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.owned != nil {
		return maps.Clone(b.owned), nil
	}
	owned := map[string]ownedService{}
	data, err := os.ReadFile(filepath.Join(a.cfg.StateDir, ownedFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, err
	default:
		if err := json.Unmarshal(data, &owned); err != nil {
			return nil, fmt.Errorf("%s: %w", ownedFile, err)
		}
	}
	b.owned = owned
	return maps.Clone(owned), nil
}

// setOwned records (o non-nil) or forgets name's service in ownedFile,
// written whole and renamed into place.
func (a *Agent) setOwned(name string, o *ownedService) error {
	b := &a.lb
	b.mu.Lock()
	defer b.mu.Unlock()
	next := maps.Clone(b.owned)
	if next == nil {
		next = map[string]ownedService{}
	}
	if o != nil {
		next[name] = *o
	} else {
		delete(next, name)
	}
	data, err := json.MarshalIndent(next, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(a.cfg.StateDir, ownedFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	b.owned = next
	return nil
}

// ownedBackend is the backend this node programs name with; "" if none yet.
func (a *Agent) ownedBackend(name string) string {
	a.lb.mu.Lock()
	defer a.lb.mu.Unlock()
	return a.lb.owned[name].Backend
}

// kickServices asks the services loop for a pass soon.
func (a *Agent) kickServices() {
	select {
	case a.servicesKick <- struct{}{}:
	default:
	}
}

// servicesLoop makes the node's load balancer hold the cluster's services
// at every change of the view, every resync and every drain's end, until
// ctx ends. A service is only written when its plan changed, a resync is
// due, or the last pass failed (tried again with backoff). Before the
// first listing nothing is touched.
func (a *Agent) servicesLoop(ctx context.Context) {
	resync := time.NewTicker(a.cfg.Resync)
	defer resync.Stop()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	drained := time.NewTimer(time.Hour)
	drained.Stop()
	defer drained.Stop()
	b := backoff{min: 200 * time.Millisecond, max: a.cfg.Resync}
	last := map[string]lb.Service{}
	force := true
	for {
		changed := a.view.changes()
		if st := a.view.snapshot(); st != nil {
			done, next, err := a.servicesPass(ctx, st, last, force)
			last = done
			switch {
			case ctx.Err() != nil:
				return
			case err != nil:
				a.log.Warnf("services: %v (again in %s)", err, b.peek())
				retry.Reset(b.step())
				force = true
			default:
				force = false
				b.reset()
			}
			drained.Stop()
			if !next.IsZero() {
				drained.Reset(time.Until(next) + 10*time.Millisecond)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-a.servicesKick:
		case <-retry.C:
		case <-drained.C:
		case <-resync.C:
			force = true
		}
	}
}

// servicesPass programs the plan of st, skipping services whose plan is
// what last says the kernel holds (unless force), and removes the services
// this agent programmed that the cluster has no more. It returns what the
// kernel now holds and when a drain ends next.
func (a *Agent) servicesPass(ctx context.Context, st *state, last map[string]lb.Service, force bool) (map[string]lb.Service, time.Time, error) {
	start := time.Now()
	done := map[string]lb.Service{}
	owned, err := a.ownedServices()
	if err != nil {
		return done, time.Time{}, err
	}
	if len(st.services) == 0 && len(owned) == 0 {
		return done, time.Time{}, nil // a cluster without services costs no datastore read
	}
	shadowed, err := a.localServices(ctx)
	if err != nil {
		return done, time.Time{}, fmt.Errorf("read the node's services: %w", err)
	}
	var next time.Time
	var errs []error
	var changes int
	for _, name := range sortedKeys(st.services) {
		if isShadowed(shadowed, name) {
			continue
		}
		svc := st.services[name]
		targets, n := a.planTargets(st, svc, start)
		if !n.IsZero() && (next.IsZero() || n.Before(next)) {
			next = n
		}
		svc.Targets = targets
		spec := lb.FromAPI(svc)
		if prev, ok := last[name]; ok && !force && reflect.DeepEqual(prev, spec) {
			done[name] = spec
			continue
		}
		wrote, err := a.programService(ctx, svc, spec, owned)
		if err != nil {
			errs = append(errs, fmt.Errorf("service %s: %w", name, err))
			continue
		}
		if wrote {
			changes++
			done[name] = spec
		}
		if err := a.replicateService(ctx, st, name); err != nil {
			errs = append(errs, fmt.Errorf("service %s: replica: %w", name, err))
		}
	}
	a.lb.forgetTargets(st)
	a.lb.mu.Lock()
	a.lb.held = maps.Clone(done)
	a.lb.mu.Unlock()
	for _, name := range sortedKeys(owned) {
		if _, ok := st.services[name]; ok && !isShadowed(shadowed, name) {
			continue
		}
		if local, ok := shadowed[name]; ok {
			// A local service of circuit's took the name. In nftables
			// (by name) it replaced this agent's: it is circuit's now.
			// In IPVS (by address) this agent's is left on its own
			// address unless the local one took that too.
			o := owned[name]
			if o.Backend == lb.IPVS && (local.Address != o.Address || local.Protocol != o.Protocol) {
				if err := a.unprogramService(ctx, name, o); err != nil {
					errs = append(errs, fmt.Errorf("service %s: %w", name, err))
				}
				continue
			}
			errs = append(errs, a.setOwned(name, nil))
			continue
		}
		if err := a.unprogramService(ctx, name, owned[name]); err != nil {
			errs = append(errs, fmt.Errorf("service %s: %w", name, err))
			continue
		}
		changes++
	}
	err = errors.Join(errs...)
	a.metrics.reconciled(servicesLoop, start, err)
	if changes > 0 {
		a.log.Infof("services: %d kernel change(s) in %s (view at revision %d)", changes, time.Since(start).Round(time.Microsecond), st.rev)
	}
	return done, next, err
}

// programService makes the kernel hold spec. It reports false, with no
// error, for a service it leaves alone: the kernel's IPVS has another on
// its address.
func (a *Agent) programService(ctx context.Context, svc api.Service, spec lb.Service, owned map[string]ownedService) (bool, error) {
	o, mine := owned[svc.Name]
	backend := svc.Backend
	if mine {
		backend = o.Backend
		if o.Address != spec.Address || o.Protocol != spec.Protocol || (svc.Backend != lb.AutoName && svc.Backend != o.Backend) {
			// The service was made again, on another address or backend.
			if err := a.unprogramService(ctx, svc.Name, o); err != nil {
				return false, err
			}
			mine, backend = false, svc.Backend
		}
	}
	b, err := a.dp.Balancer(backend)
	if err != nil {
		return false, err
	}
	defer b.Close()
	if err := b.Validate(spec); err != nil {
		return false, err
	}
	if !mine {
		if b.Name() == lb.IPVS {
			if _, err := b.Stats(spec); err == nil {
				a.warnOnce("foreign-service/"+svc.Name, "cluster service %s: the kernel's IPVS already has a service on %s/%s that is not this agent's: left alone, not balanced on this node", svc.Name, spec.Protocol, spec.Address)
				return false, nil
			}
		}
		if err := a.setOwned(svc.Name, &ownedService{Backend: b.Name(), Address: spec.Address, Protocol: spec.Protocol}); err != nil {
			return false, err
		}
		a.forget("foreign-service/" + svc.Name)
	}
	unlock, err := filelock.Lock(ctx, filepath.Join(a.cfg.StateDir, lbLockFile), lbLockWait)
	if err != nil {
		return false, err
	}
	defer unlock()
	if err := b.Ensure(spec); err != nil {
		return false, fmt.Errorf("%s backend: %w", b.Name(), err)
	}
	return true, nil
}

// unprogramService deletes a service this agent programmed.
func (a *Agent) unprogramService(ctx context.Context, name string, o ownedService) error {
	b, err := a.dp.Balancer(o.Backend)
	if err != nil {
		return err
	}
	defer b.Close()
	unlock, err := filelock.Lock(ctx, filepath.Join(a.cfg.StateDir, lbLockFile), lbLockWait)
	if err != nil {
		return err
	}
	defer unlock()
	if err := b.Delete(lb.Service{Name: name, Address: o.Address, Protocol: o.Protocol}); err != nil && !errors.Is(err, api.ErrNotFound) {
		return fmt.Errorf("%s backend: delete: %w", o.Backend, err)
	}
	a.log.Infof("cluster service %s: removed from this node's %s", name, o.Backend)
	return a.setOwned(name, nil)
}

// localServices are this node's own (non-cluster) services, by name.
func (a *Agent) localServices(ctx context.Context) (map[string]api.Service, error) {
	out := map[string]api.Service{}
	err := a.local.View(ctx, func(tx ds.Tx) error {
		svcs, err := tx.ListServices()
		for _, s := range svcs {
			if !s.Cluster {
				out[s.Name] = s
			}
		}
		return err
	})
	return out, err
}

func isShadowed(local map[string]api.Service, name string) bool {
	_, ok := local[name]
	return ok
}

// serviceCollector gives the kernel's counters of the services this node
// balances, read at each scrape.
type serviceCollector struct{ a *Agent }

var (
	svcConns = prometheus.NewDesc("circuit_agent_service_connections_total",
		"Connections this node balanced, per cluster service.", []string{"service", "backend"}, nil)
	svcPackets = prometheus.NewDesc("circuit_agent_service_packets_total",
		"Packets of the connections this node balanced, per cluster service.", []string{"service", "backend"}, nil)
	svcBytes = prometheus.NewDesc("circuit_agent_service_bytes_total",
		"Bytes of the connections this node balanced, per cluster service.", []string{"service", "backend"}, nil)
	tgtConns = prometheus.NewDesc("circuit_agent_target_connections_total",
		"Connections this node balanced to each target.", []string{"service", "target"}, nil)
	tgtActive = prometheus.NewDesc("circuit_agent_target_active_connections",
		"Connections each target holds now, of those this node balanced.", []string{"service", "target"}, nil)
	tgtWeight = prometheus.NewDesc("circuit_agent_target_weight",
		"The weight this node gives each target (0: draining).", []string{"service", "target"}, nil)
)

func (c serviceCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{svcConns, svcPackets, svcBytes, tgtConns, tgtActive, tgtWeight} {
		ch <- d
	}
}

func (c serviceCollector) Collect(ch chan<- prometheus.Metric) {
	a := c.a
	a.lb.mu.Lock()
	held, owned := maps.Clone(a.lb.held), maps.Clone(a.lb.owned)
	a.lb.mu.Unlock()
	for _, name := range sortedKeys(held) {
		spec, o := held[name], owned[name]
		if o.Backend == "" {
			continue
		}
		b, err := a.dp.Balancer(o.Backend)
		if err != nil {
			continue
		}
		st, err := b.Stats(spec)
		b.Close()
		if err != nil {
			continue
		}
		counter := func(d *prometheus.Desc, v uint64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
		}
		counter(svcConns, st.Service.Connections, name, o.Backend)
		counter(svcPackets, st.Service.Packets, name, o.Backend)
		counter(svcBytes, st.Service.Bytes, name, o.Backend)
		for _, t := range spec.Targets {
			counter(tgtConns, st.Targets[t.Address].Connections, name, t.Address)
			ch <- prometheus.MustNewConstMetric(tgtActive, prometheus.GaugeValue, float64(st.Active[t.Address]), name, t.Address)
			ch <- prometheus.MustNewConstMetric(tgtWeight, prometheus.GaugeValue, float64(t.Weight), name, t.Address)
		}
	}
}
