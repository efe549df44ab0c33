package agent

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/pkg/cni"
	"github.com/circuit-cni/circuit/pkg/masq"
	"github.com/circuit-cni/circuit/pkg/overlay"
)

// The overlay is the data path between nodes, flannel-style (see
// pkg/overlay): per cluster network a VXLAN device, and per block another
// ready node holds a route, a neighbour entry and an FDB entry. The agent
// decides what the node's kernel should hold from its view of etcd alone
// (plan), and the overlay loop makes the kernel hold it whenever the view
// changes: no etcd request is on that path, so a block claimed or a node
// lost elsewhere reaches this node's kernel as fast as the watch brings it.
// Before the first listing the kernel is left as it is: an agent that
// restarts while etcd is down changes nothing programmed, and one that
// reaches etcd again programs exactly what it had (the VTEP MACs are
// derived, not drawn).

// vtepMAC is node's VTEP MAC on the overlay of vni: a hash of both,
// locally administered and unicast, the same at every start.
func vtepMAC(node string, vni int) net.HardwareAddr {
	sum := sha256.Sum256([]byte(node + "/" + strconv.Itoa(vni)))
	mac := net.HardwareAddr(sum[:6])
	mac[0] = mac[0]&^0x01 | 0x02
	return mac
}

// overlayPlan is what the node's kernel should hold.
type overlayPlan struct {
	nets []overlay.Network
	masq masq.Rules
}

// localFacts are what the plan and the metrics need of the node's own
// datastore: its local networks (a cluster network of the same name is
// not replicated here) and its connected peers per cluster network.
type localFacts struct {
	local map[string]bool
	peers map[string]int
}

func (a *Agent) readLocalFacts(ctx context.Context) (localFacts, error) {
	f := localFacts{local: map[string]bool{}, peers: map[string]int{}}
	err := a.local.View(ctx, func(tx ds.Tx) error {
		ns, err := tx.ListNetworks()
		if err != nil {
			return err
		}
		for _, n := range ns {
			if n.Cluster == nil {
				f.local[n.Name] = true
				continue
			}
			peers, err := tx.ListPeers(n.Name)
			if err != nil {
				return err
			}
			for _, p := range peers {
				if p.State == api.PeerConnected {
					f.peers[n.Name]++
				}
			}
		}
		return nil
	})
	return f, err
}

// plan is the kernel state st asks of this node: an overlay per cluster
// network it replicates, with its blocks' network addresses and a remote
// per block of every other ready node that published its VTEP for the
// network; masquerade for every range of those networks.
func (a *Agent) plan(st *state, local map[string]bool, u overlay.Underlay) overlayPlan {
	self := a.cfg.Node
	addr := a.advertised()
	var p overlayPlan
	for _, name := range sortedKeys(st.networks) {
		cn := st.networks[name]
		if local[name] || cn.net.Cluster == nil || cn.net.Cluster.VNI <= 0 {
			continue
		}
		vni := cn.net.Cluster.VNI
		n := overlay.Network{
			Device: overlay.DeviceName(vni), Label: name, VNI: vni, Local: addr, Parent: u.Index,
			MTU: overlay.MTU(u.MTU, addr), MAC: vtepMAC(self, vni),
		}
		blocks := st.blocks[name]
		for _, b := range slices.SortedFunc(mapKeys(blocks), comparePrefix) {
			holder := blocks[b].Node
			if holder == self {
				if !a.conflict(b) {
					n.Addrs = append(n.Addrs, b.Addr())
				}
				continue
			}
			if r, ok := a.remote(st, name, holder, b); ok {
				n.Remotes = append(n.Remotes, r)
			}
		}
		p.nets = append(p.nets, n)
		p.masq.Overlays = append(p.masq.Overlays, n.Device)
		ranges, _ := cni.IPAMRanges(cn.net.Config)
		for _, r := range ranges {
			if pr, err := netip.ParsePrefix(r); err == nil {
				p.masq.Ranges = append(p.masq.Ranges, pr.Masked())
			}
		}
	}
	return p
}

// remote is the overlay entry of block b of network, held by node: only
// while node is ready (a lost node's blocks are unreachable, and its
// entries leave the others) and once it published where its VTEP is.
func (a *Agent) remote(st *state, network, node string, b netip.Prefix) (overlay.Remote, bool) {
	if !st.alive[node] {
		return overlay.Remote{}, false
	}
	nv, ok := st.nodes[node]
	if !ok {
		return overlay.Remote{}, false
	}
	vt, ok := nv.VTEPs[network]
	if !ok {
		return overlay.Remote{}, false
	}
	mac, err1 := net.ParseMAC(vt.MAC)
	under, err2 := netip.ParseAddr(nv.Address)
	if err1 != nil || err2 != nil || len(mac) != 6 {
		a.warnOnce("bad-vtep/"+node+"/"+network, "node %s publishes no usable VTEP for network %s (MAC %q, address %q): no route to its blocks", node, network, vt.MAC, nv.Address)
		return overlay.Remote{}, false
	}
	if under.Unmap().Is4() != a.advertised().Is4() {
		a.warnOnce("family/"+node, "node %s advertises %s and this node %s: VXLAN needs one underlay family, no route to its blocks", node, under, a.advertised())
		return overlay.Remote{}, false
	}
	return overlay.Remote{Block: b, MAC: mac, Underlay: under.Unmap()}, true
}

// advertised is the node's advertised address (Config.check parsed it).
func (a *Agent) advertised() netip.Addr {
	addr, _ := netip.ParseAddr(a.cfg.AdvertiseAddr)
	return addr.Unmap()
}

// overlayMTU is the overlay's MTU on this node: 0 while the underlay
// cannot be found.
func (a *Agent) overlayMTU() int {
	u, err := a.dp.Underlay(a.advertised())
	if err != nil {
		return 0
	}
	return overlay.MTU(u.MTU, a.advertised())
}

// vteps is what nodes/<node> publishes of this node's overlays: the VTEP
// MAC of every cluster network in its replica.
func (a *Agent) vteps(ctx context.Context) (map[string]vtepValue, error) {
	out := map[string]vtepValue{}
	err := a.local.View(ctx, func(tx ds.Tx) error {
		ns, err := tx.ListNetworks()
		for _, n := range ns {
			if n.Cluster != nil && n.Cluster.VNI > 0 {
				out[n.Name] = vtepValue{MAC: vtepMAC(a.cfg.Node, n.Cluster.VNI).String()}
			}
		}
		return err
	})
	if len(out) == 0 {
		out = nil
	}
	return out, err
}

// kickOverlay asks the overlay loop for a pass soon.
func (a *Agent) kickOverlay() {
	select {
	case a.overlayKick <- struct{}{}:
	default:
	}
}

// overlayLoop makes the kernel hold the plan of the current view, at every
// change of the view (watch events, listings) and every resync, until ctx
// ends. The kernel is only touched when the plan changed, a resync is
// due (someone may have removed an entry), or the last pass failed (tried
// again with backoff).
func (a *Agent) overlayLoop(ctx context.Context) {
	resync := time.NewTicker(a.cfg.Resync)
	defer resync.Stop()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	b := backoff{min: 200 * time.Millisecond, max: a.cfg.Resync}
	var last *overlayPlan
	force := true
	for {
		changed := a.view.changes()
		if st := a.view.snapshot(); st != nil {
			p, err := a.overlayPass(ctx, st, last, force)
			switch {
			case ctx.Err() != nil:
				return
			case err != nil:
				a.log.Warnf("overlay: %v (again in %s)", err, b.peek())
				retry.Reset(b.step())
				force = true
			default:
				last, force = p, false
				b.reset()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-a.overlayKick:
		case <-retry.C:
		case <-resync.C:
			force = true
		}
	}
}

// overlayPass plans from st and, if the plan differs from last (or force),
// programs it. It returns the plan the kernel now holds.
func (a *Agent) overlayPass(ctx context.Context, st *state, last *overlayPlan, force bool) (*overlayPlan, error) {
	facts, err := a.readLocalFacts(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the node's networks: %w", err)
	}
	a.observe(st, facts)
	u, err := a.dp.Underlay(a.advertised())
	if err != nil {
		return nil, err
	}
	p := a.plan(st, facts.local, u)
	if !force && last != nil && reflect.DeepEqual(p, *last) {
		return last, nil
	}
	start := time.Now()
	rep, err := a.dp.SyncOverlays(p.nets)
	a.metrics.overlayEntries(p.nets, rep)
	if err == nil {
		var changed bool
		changed, err = a.dp.SyncMasquerade(p.masq)
		if changed {
			rep.Changes++
		}
	}
	a.metrics.reconciled("overlay", start, err)
	if rep.Changes > 0 {
		a.log.Infof("overlay: %d kernel change(s) in %s (view at revision %d): %s", rep.Changes, time.Since(start).Round(time.Microsecond), st.rev, describe(p, rep))
	}
	if err != nil {
		return nil, err
	}
	return &p, nil
}

// describe says what each device carries, for the log.
func describe(p overlayPlan, rep overlay.Report) string {
	var parts []string
	for _, n := range p.nets {
		c := rep.Devices[n.Device]
		parts = append(parts, fmt.Sprintf("%s (%s): %d route(s), %d neighbour(s), %d FDB entr(ies)", n.Device, n.Label, c.Routes, c.Neighbours, c.FDB))
	}
	if len(parts) == 0 {
		return "no overlay"
	}
	return strings.Join(parts, "; ")
}
