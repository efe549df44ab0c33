package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/circuit-cni/circuit/agentapi"
	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/ds/record"
)

// Cluster services are records in etcd that every node replicates.
// Programming them into each node's kernel is part 2 of multi-host: the
// seam is the replica (replicateService), which circuit's lb code reads.

// createService adds a cluster service: its name and its address and
// protocol must be free among cluster services, and its name on this node.
func (a *Agent) createService(ctx context.Context, r *http.Request) (any, error) {
	var svc api.Service
	if err := decode(r, &svc); err != nil {
		return nil, err
	}
	svc.Cluster, svc.BootID, svc.CreatedAt = true, "", time.Now().UTC()
	if err := api.NormalizeService(&svc); err != nil {
		return nil, err
	}
	targets, err := a.resolveTargets(ctx, &svc, svc.Targets)
	if err != nil {
		return nil, err
	}
	svc.Targets = []api.Target{}
	if err := addTargets(&svc, targets); err != nil {
		return nil, err
	}
	if err := a.local.View(ctx, func(tx ds.Tx) error {
		cur, err := tx.GetService(svc.Name)
		if err == nil && !cur.Cluster {
			return api.Errorf(api.ErrExists, "service %s already exists on node %s as a local service", svc.Name, a.cfg.Node)
		}
		if errors.Is(err, api.ErrNotFound) {
			return nil
		}
		return err
	}); err != nil {
		return nil, err
	}
	rev, err := a.update(ctx, "create service "+svc.Name, func(s *snap) (change, error) {
		all, err := s.list(a.k.services)
		if err != nil {
			return change{}, err
		}
		for _, kv := range all {
			other, err := record.DecodeService(kv.Value)
			if err != nil {
				continue
			}
			if other.Name == svc.Name {
				return change{}, api.Errorf(api.ErrExists, "cluster service %s already exists", svc.Name)
			}
			if other.Address == svc.Address && other.Protocol == svc.Protocol {
				return change{}, api.Errorf(api.ErrExists, "cluster service %s already balances %s/%s", other.Name, svc.Protocol, svc.Address)
			}
		}
		return a.putService(&svc, 0)
	})
	if err != nil {
		return nil, err
	}
	a.log.Infof("cluster service %s created (%s/%s)", svc.Name, svc.Protocol, svc.Address)
	return a.settleService(ctx, rev, svc.Name, &svc), nil
}

// putService writes svc if its key is still at modRev (0: absent).
func (a *Agent) putService(svc *api.Service, modRev int64) (change, error) {
	data, err := record.EncodeService(svc)
	if err != nil {
		return change{}, err
	}
	key := a.k.service(svc.Name)
	cmp := clientv3.Compare(clientv3.ModRevision(key), "=", modRev)
	if modRev == 0 {
		cmp = clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
	}
	return change{cmps: []clientv3.Cmp{cmp}, ops: []clientv3.Op{clientv3.OpPut(key, string(data))}}, nil
}

// settleService updates the replica after a change and returns svc.
func (a *Agent) settleService(ctx context.Context, rev int64, name string, svc *api.Service) *api.Service {
	if err := a.settle(ctx, rev, func(st *state) error { return a.replicateService(ctx, st, name) }); err != nil {
		a.log.Warnf("cluster service %s: this node's replica: %v (the agent retries)", name, err)
	}
	return svc
}

// addTargets adds targets to svc, each normalized; an address or a
// container svc already has is refused.
func addTargets(svc *api.Service, targets []api.Target) error {
	for _, t := range targets {
		if err := api.NormalizeTarget(svc, &t); err != nil {
			return err
		}
		if slices.ContainsFunc(svc.Targets, func(o api.Target) bool { return o.Address == t.Address }) {
			return api.Errorf(api.ErrExists, "service %s already has target %s", svc.Name, t.Address)
		}
		if t.Container != "" && slices.ContainsFunc(svc.Targets, func(o api.Target) bool { return o.Container == t.Container && o.Network == t.Network }) {
			return api.Errorf(api.ErrExists, "service %s already has container %s on network %s as a target", svc.Name, t.Container, t.Network)
		}
		svc.Targets = append(svc.Targets, t)
	}
	return nil
}

// resolveTargets gives each container target the address its container
// has now, on whichever node it runs: the one of the service's family on
// the cluster network named (or the only one it is on). The kernel then
// follows the container (services.go); the address recorded is where it
// was when added.
func (a *Agent) resolveTargets(ctx context.Context, svc *api.Service, targets []api.Target) ([]api.Target, error) {
	if !slices.ContainsFunc(targets, func(t api.Target) bool { return t.Container != "" }) {
		return targets, nil
	}
	vip, err := api.ParseAddrPort(svc.Address)
	if err != nil {
		return nil, err
	}
	// circuit may have connected a container here a moment ago, its
	// notify still on the way: this node's peers are published first.
	if err := a.publish(ctx, ""); err != nil {
		return nil, err
	}
	peers, _, err := a.peersOf(ctx, true)
	if err != nil {
		return nil, err
	}
	out := slices.Clone(targets)
	for i, t := range out {
		if t.Container == "" {
			continue
		}
		ct, err := api.RequestedContainer(t)
		if err != nil {
			return nil, err
		}
		found := map[string]netip.Addr{} // network -> address
		for _, p := range peers {
			if p.peer.ContainerID != ct.ID || (ct.Network != "" && p.network != ct.Network) {
				continue
			}
			if addr, ok := familyAddr(p.peer.IPs, vip.Addr().Is6()); ok {
				if _, dup := found[p.network]; !dup {
					found[p.network] = addr
				}
			}
		}
		switch len(found) {
		case 0:
			where := "any cluster network"
			if ct.Network != "" {
				where = "cluster network " + ct.Network
			}
			return nil, api.Errorf(api.ErrNotFound, "container %s has no %s address on %s on any node", ct.ID, familyOf(netip.PrefixFrom(vip.Addr(), 0)), where)
		case 1:
		default:
			return nil, api.Errorf(api.ErrInvalid, "container %s is on cluster networks %s: name one, as %s@NETWORK:%d",
				ct.ID, strings.Join(slices.Sorted(maps.Keys(found)), ", "), ct.ID, ct.Port)
		}
		for network, addr := range found {
			out[i].Network = network
			out[i].Address = netip.AddrPortFrom(addr, ct.Port).String()
		}
	}
	return out, nil
}

// familyAddr is the first of a peer's CIDR addresses of the family asked.
func familyAddr(ips []string, v6 bool) (netip.Addr, bool) {
	for _, ip := range ips {
		if p, err := netip.ParsePrefix(ip); err == nil && p.Addr().Is6() == v6 {
			return p.Addr(), true
		}
	}
	return netip.Addr{}, false
}

func (f family) String() string { return "IPv" + strconv.Itoa(int(f)) }

// changeService runs fn on a cluster service as etcd holds it and writes
// the result back in one Txn; fn nil deletes the service.
func (a *Agent) changeService(ctx context.Context, r *http.Request, what string, fn func(*api.Service) error) (*api.Service, error) {
	name := r.PathValue("name")
	if err := api.ValidServiceName(name); err != nil {
		return nil, err
	}
	var svc *api.Service
	rev, err := a.update(ctx, what+" "+name, func(s *snap) (change, error) {
		kv, err := s.get(a.k.service(name))
		if err != nil {
			return change{}, err
		}
		if kv == nil {
			return change{}, api.Errorf(api.ErrNotFound, "cluster service %s not found", name)
		}
		if svc, err = record.DecodeService(kv.Value); err != nil {
			return change{}, fmt.Errorf("cluster service %s: %w", name, err)
		}
		if fn == nil {
			return change{
				cmps: []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(a.k.service(name)), "=", kv.ModRevision)},
				ops:  []clientv3.Op{clientv3.OpDelete(a.k.service(name))},
			}, nil
		}
		if err := fn(svc); err != nil {
			return change{}, err
		}
		return a.putService(svc, kv.ModRevision)
	})
	if err != nil {
		return nil, err
	}
	a.log.Infof("cluster service %s: %s", name, what)
	return a.settleService(ctx, rev, name, svc), nil
}

func (a *Agent) addTargets(ctx context.Context, r *http.Request) (any, error) {
	var req agentapi.Targets
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if len(req.Targets) == 0 {
		return nil, api.Errorf(api.ErrInvalid, "no targets to add")
	}
	if slices.ContainsFunc(req.Targets, func(t api.Target) bool { return t.Container != "" }) {
		st := a.view.snapshot()
		if st == nil {
			return nil, api.Errorf(api.ErrUnavailable, "this agent has not listed etcd yet")
		}
		name := r.PathValue("name")
		svc, ok := st.services[name]
		if !ok {
			return nil, api.Errorf(api.ErrNotFound, "cluster service %s not found", name)
		}
		var err error
		if req.Targets, err = a.resolveTargets(ctx, &svc, req.Targets); err != nil {
			return nil, err
		}
	}
	return a.changeService(ctx, r, "add targets", func(svc *api.Service) error {
		return addTargets(svc, req.Targets)
	})
}

func (a *Agent) removeTargets(ctx context.Context, r *http.Request) (any, error) {
	var req agentapi.Targets
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if len(req.Addresses) == 0 {
		return nil, api.Errorf(api.ErrInvalid, "no target addresses to remove")
	}
	return a.changeService(ctx, r, "remove targets", func(svc *api.Service) error {
		for _, addr := range req.Addresses {
			// A container target goes by its address or its container's ID.
			match := func(t api.Target) bool { return t.Container == addr }
			if ap, err := api.ParseAddrPort(addr); err == nil {
				match = func(t api.Target) bool { return t.Address == ap.String() }
			} else if api.ValidContainerID(addr) != nil {
				return err
			}
			i := slices.IndexFunc(svc.Targets, match)
			if i < 0 {
				return api.Errorf(api.ErrNotFound, "service %s has no target %s", svc.Name, addr)
			}
			svc.Targets = slices.Delete(svc.Targets, i, i+1)
		}
		return nil
	})
}

func (a *Agent) deleteService(ctx context.Context, r *http.Request) (any, error) {
	_, err := a.changeService(ctx, r, "deleted", nil)
	return nil, err
}
