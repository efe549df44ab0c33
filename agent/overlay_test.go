package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/circuit-cni/circuit/pkg/masq"
	"github.com/circuit-cni/circuit/pkg/overlay"
)

// fakeDataplane is a kernel that keeps what it was told to hold.
type fakeDataplane struct {
	mu    sync.Mutex
	nets  []overlay.Network
	masq  masq.Rules
	syncs int
	mtu   int
	lb    fakeLB
}

func newFakeDataplane() *fakeDataplane { return &fakeDataplane{mtu: 1500} }

func (f *fakeDataplane) Underlay(netip.Addr) (overlay.Underlay, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return overlay.Underlay{Name: "eth0", Index: 2, MTU: f.mtu}, nil
}

func (f *fakeDataplane) SyncOverlays(nets []overlay.Network) (overlay.Report, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nets, f.syncs = slices.Clone(nets), f.syncs+1
	rep := overlay.Report{Devices: map[string]overlay.Counts{}}
	for _, n := range nets {
		macs := map[string]bool{}
		for _, r := range n.Remotes {
			macs[r.MAC.String()] = true
		}
		rep.Devices[n.Device] = overlay.Counts{Routes: len(n.Remotes), Neighbours: len(n.Remotes), FDB: len(macs)}
	}
	return rep, nil
}

func (f *fakeDataplane) SyncMasquerade(r masq.Rules) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	changed := !reflect.DeepEqual(f.masq, r)
	f.masq = r
	return changed, nil
}

func (f *fakeDataplane) Close() {}

// network is the overlay the fake holds for a network; nil if none.
func (f *fakeDataplane) network(label string) *overlay.Network {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, n := range f.nets {
		if n.Label == label {
			return &n
		}
	}
	return nil
}

func (ta *testAgent) fake() *fakeDataplane { return ta.cfg.Dataplane.(*fakeDataplane) }

// remotes is what a's overlay of network routes, as "block mac underlay".
func remotes(n *overlay.Network) []string {
	if n == nil {
		return nil
	}
	var out []string
	for _, r := range n.Remotes {
		out = append(out, fmt.Sprintf("%s %s %s", r.Block, r.MAC, r.Underlay))
	}
	slices.Sort(out)
	return out
}

func TestVTEPMAC(t *testing.T) {
	seen := map[string]string{}
	for _, node := range []string{"a", "b", "host1.example"} {
		for _, vni := range []int{4096, 4097, 1<<24 - 1} {
			mac := vtepMAC(node, vni)
			if mac[0]&0x02 == 0 || mac[0]&0x01 != 0 {
				t.Errorf("%s/%d: %s is not locally administered unicast", node, vni, mac)
			}
			if again := vtepMAC(node, vni); again.String() != mac.String() {
				t.Errorf("%s/%d: %s then %s", node, vni, mac, again)
			}
			if other, dup := seen[mac.String()]; dup {
				t.Errorf("%s/%d and %s share %s", node, vni, other, mac)
			}
			seen[mac.String()] = fmt.Sprintf("%s/%d", node, vni)
		}
	}
}

// Every node's overlay reaches every other ready node's blocks at the MAC
// and address it published; a stopped node leaves the others' overlays;
// the replica carries the overlay's MTU; masquerade covers the ranges.
func TestOverlayFollowsTheCluster(t *testing.T) {
	needEtcd(t)
	t.Parallel()
	prefix := newPrefix()
	addr := func(ip string) func(*Config) { return func(c *Config) { c.AdvertiseAddr = ip } }
	a := startAgent(t, prefix, "a", "", addr("127.0.0.1"))
	b := startAgent(t, prefix, "b", "", addr("127.0.0.2"))
	c := startAgent(t, prefix, "c", "", addr("127.0.0.3"))
	n := a.mustCreate(conf("ov", "10.80.0.0/16", "fd00:80::/112"))
	vni := n.Cluster.VNI

	blocksOf := func(ta *testAgent) []string {
		var bs []string
		waitFor(t, ta.cfg.Node+" holds both families' blocks", func() bool {
			bs = ta.replicaBlocks("ov")
			return len(bs) == 2
		})
		return bs
	}
	want := func(ta *testAgent, others ...*testAgent) []string {
		var out []string
		for _, o := range others {
			for _, blk := range blocksOf(o) {
				out = append(out, fmt.Sprintf("%s %s %s", blk, vtepMAC(o.cfg.Node, vni), o.cfg.AdvertiseAddr))
			}
		}
		slices.Sort(out)
		return out
	}
	for _, x := range []struct {
		me     *testAgent
		others []*testAgent
	}{{a, []*testAgent{b, c}}, {b, []*testAgent{a, c}}, {c, []*testAgent{a, b}}} {
		w := want(x.me, x.others...)
		waitFor(t, x.me.cfg.Node+"'s overlay reaches the others", func() bool { return slices.Equal(remotes(x.me.fake().network("ov")), w) })
		ov := x.me.fake().network("ov")
		if ov.Device != fmt.Sprintf("cvx%d", vni) || ov.VNI != vni || ov.MTU != 1450 || ov.MAC.String() != vtepMAC(x.me.cfg.Node, vni).String() ||
			ov.Local.String() != x.me.cfg.AdvertiseAddr || ov.Parent != 2 {
			t.Errorf("%s's overlay: %+v", x.me.cfg.Node, ov)
		}
		var own []string
		for _, blk := range blocksOf(x.me) {
			own = append(own, netip.MustParsePrefix(blk).Addr().String())
		}
		var got []string
		for _, ad := range ov.Addrs {
			got = append(got, ad.String())
		}
		if !slices.Equal(got, own) {
			t.Errorf("%s's overlay addresses %v, want %v", x.me.cfg.Node, got, own)
		}
		if r := x.me.replica("ov"); r.Cluster.MTU != 1450 {
			t.Errorf("%s's replica has MTU %d", x.me.cfg.Node, r.Cluster.MTU)
		}
		m := x.me.fake()
		m.mu.Lock()
		mq := m.masq
		m.mu.Unlock()
		if fmt.Sprint(mq.Ranges) != "[10.80.0.0/16 fd00:80::/112]" || !slices.Equal(mq.Overlays, []string{ov.Device}) {
			t.Errorf("%s's masquerade: %+v", x.me.cfg.Node, mq)
		}
	}
	// The node record publishes the VTEP, next to what it had.
	resp, err := admin.Get(context.Background(), prefix+"/nodes/b")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("nodes/b: %v", err)
	}
	var rec map[string]any
	json.Unmarshal(resp.Kvs[0].Value, &rec)
	if fmt.Sprint(rec["vteps"]) != fmt.Sprintf("map[ov:map[mac:%s]]", vtepMAC("b", vni)) || rec["address"] != "127.0.0.2" || rec["lastSeen"] == nil {
		t.Errorf("nodes/b: %s", resp.Kvs[0].Value)
	}

	// c stops: it is lost, and leaves a's and b's overlays at once.
	c.stop()
	for _, me := range []*testAgent{a, b} {
		var others []*testAgent
		for _, o := range []*testAgent{a, b} {
			if o != me {
				others = append(others, o)
			}
		}
		w := want(me, others...)
		waitFor(t, me.cfg.Node+"'s overlay forgets c", func() bool { return slices.Equal(remotes(me.fake().network("ov")), w) })
	}

	// The network goes: so do its overlays and its masquerade.
	if err := a.api.Do(context.Background(), "DELETE", "/v1/networks/ov", nil, nil); err != nil {
		t.Fatal(err)
	}
	for _, me := range []*testAgent{a, b} {
		waitFor(t, me.cfg.Node+" drops the overlay", func() bool {
			f := me.fake()
			f.mu.Lock()
			defer f.mu.Unlock()
			return len(f.nets) == 0 && len(f.masq.Ranges) == 0
		})
	}
}

// Until it has listed etcd once, an agent leaves the kernel alone: one
// that starts while etcd is down changes nothing programmed.
func TestOverlayUntouchedBeforeListing(t *testing.T) {
	needEtcd(t)
	t.Parallel()
	ta := newAgent(t, newPrefix(), "lonely", "", func(c *Config) { c.Endpoints = []string{"http://127.0.0.1:1"} })
	ta.start()
	time.Sleep(300 * time.Millisecond) // a pass would come at once: nothing waits for it
	f := ta.fake()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.syncs != 0 {
		t.Errorf("an agent that never reached etcd synced the kernel %d time(s)", f.syncs)
	}
}

// --metrics-addr serves the agent's metrics in Prometheus' text format.
func TestMetrics(t *testing.T) {
	needEtcd(t)
	t.Parallel()
	prefix := newPrefix()
	a := startAgent(t, prefix, "a", "", func(c *Config) { c.MetricsAddr = "127.0.0.1:0" })
	startAgent(t, prefix, "b", "", func(c *Config) { c.AdvertiseAddr = "127.0.0.2" })
	a.mustCreate(conf("mets", "10.81.0.0/16"))
	waitFor(t, "a's overlay reaches b", func() bool { return len(remotes(a.fake().network("mets"))) == 1 })
	addr := ""
	waitFor(t, "the metrics address in the log", func() bool {
		_, rest, ok := strings.Cut(a.logs.String(), "metrics on http://")
		addr, _, _ = strings.Cut(rest, "/metrics")
		return ok
	})
	var body string
	waitFor(t, "metrics with the overlay's entries", func() bool {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		return strings.Contains(body, `circuit_agent_overlay_routes{network="mets"} 1`)
	})
	for _, want := range []string{
		`circuit_agent_nodes{state="ready"} 2`,
		`circuit_agent_blocks_held{network="mets"} 1`,
		`circuit_agent_free_addresses{network="mets"} 253`,
		`circuit_agent_peers{network="mets"} 0`,
		`circuit_agent_overlay_peers{network="mets"} 1`,
		`circuit_agent_overlay_neighbours{network="mets"} 1`,
		`circuit_agent_overlay_fdb_entries{network="mets"} 1`,
		`circuit_agent_reconciles_total{loop="cluster",result="ok"}`,
		`circuit_agent_reconciles_total{loop="overlay",result="ok"}`,
		`circuit_agent_reconcile_duration_seconds_bucket{loop="overlay"`,
		`circuit_agent_etcd_request_duration_seconds_count{result="ok"}`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if t.Failed() {
		t.Logf("metrics:\n%s", body)
	}
}
