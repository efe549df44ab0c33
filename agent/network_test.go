package agent

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/ds/etcd"
)

// A network created through one agent: it gets the first block, the other
// node's agent replicates the network within seconds and claims a block of
// its own; both show ready with their blocks.
func TestTwoAgentsShareNetwork(t *testing.T) {
	needEtcd(t)
	t.Parallel()
	prefix := newPrefix()
	a := startAgent(t, prefix, "a", "")
	b := startAgent(t, prefix, "b", "")

	n := a.mustCreate(conf("n1", "10.1.0.0/16"))
	if n.Name != "n1" || n.Cluster == nil || n.Cluster.Node != "a" || n.Cluster.VNI != firstVNI ||
		len(n.Cluster.Blocks) != 1 || n.Cluster.BlockSize != api.DefaultBlockSize {
		t.Fatalf("create answered %+v (cluster %+v)", n, n.Cluster)
	}
	waitFor(t, "b's replica of n1 with a block", func() bool { return len(b.replicaBlocks("n1")) == 1 })
	// Both claim the lowest free block: whoever is first gets 10.1.0.0.
	blocks := map[string]string{"a": n.Cluster.Blocks[0], "b": b.replicaBlocks("n1")[0]}
	if got := []string{blocks["a"], blocks["b"]}; !slices.Contains(got, "10.1.0.0/24") || !slices.Contains(got, "10.1.1.0/24") {
		t.Errorf("a holds %s, b %s: want 10.1.0.0/24 and 10.1.1.0/24", blocks["a"], blocks["b"])
	}
	rb := b.replica("n1")
	if rb.Cluster.Node != "b" || rb.Cluster.VNI != firstVNI || string(rb.Config) != string(n.Config) || rb.Type != "bridge" {
		t.Errorf("b's replica: %+v (cluster %+v)", rb, rb.Cluster)
	}
	for node, block := range blocks {
		if h := holder(t, prefix, "n1", block); h != node {
			t.Errorf("etcd gives %s to %q, want %s", block, h, node)
		}
	}

	nodes := b.nodes()
	if len(nodes) != 2 || nodes[0].Name != "a" || nodes[1].Name != "b" {
		t.Fatalf("nodes: %+v", nodes)
	}
	for i, want := range []string{blocks["a"], blocks["b"]} {
		nd := nodes[i]
		if nd.State != api.NodeReady || nd.Address != "127.0.0.1" || !slices.Equal(nd.Blocks, []string{want}) || time.Since(nd.LastSeen) > time.Minute {
			t.Errorf("node %+v: want ready at 127.0.0.1 with %s", nd, want)
		}
	}

	// A second network has the next VNI.
	if n2 := a.mustCreate(conf("n2", "10.2.0.0/16")); n2.Cluster.VNI != firstVNI+1 {
		t.Errorf("n2's VNI %d, want %d", n2.Cluster.VNI, firstVNI+1)
	}

	// The cluster store is a ds/etcd store: records without blocks or node.
	st, err := etcd.Open(context.Background(), etcd.Config{Endpoints: []string{endpoint}, Prefix: prefix + "/cluster"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	err = st.View(context.Background(), func(tx ds.Tx) error {
		ns, err := tx.ListNetworks()
		if err != nil {
			return err
		}
		if len(ns) != 2 || ns[0].Name != "n1" || ns[0].Cluster == nil || ns[0].Cluster.VNI != firstVNI || ns[0].Cluster.Blocks != nil || ns[0].Cluster.Node != "" {
			t.Errorf("ds/etcd reads %+v", ns)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// Names are taken cluster-wide.
	for _, ag := range []*testAgent{a, b} {
		if _, err := ag.createNetwork(conf("n1", "10.9.0.0/16"), false); !errors.Is(err, api.ErrExists) {
			t.Errorf("%s: create n1 again: %v, want ErrExists", ag.cfg.Node, err)
		}
	}
}

// What a cluster network needs is checked before anything is written.
func TestCreateNetworkRefuses(t *testing.T) {
	needEtcd(t)
	t.Parallel()
	prefix := newPrefix()
	a := startAgent(t, prefix, "a", "")
	cases := map[string]struct {
		conf    string
		overlay string
		bs      int
	}{
		"no ipam":        {`{"cniVersion":"1.0.0","name":"x","type":"bridge"}`, api.OverlayVXLAN, 0},
		"no overlay":     {conf("x", "10.1.0.0/16"), "", 0},
		"block too big":  {conf("x", "10.1.0.0/24"), api.OverlayVXLAN, 16},
		"bad config":     {`{"name":"x"}`, api.OverlayVXLAN, 0},
		"too many":       {conf("x", "10.0.0.0/8"), api.OverlayVXLAN, 30},
		"not json":       {`nope`, api.OverlayVXLAN, 0},
		"invalid name":   {conf("a/b", "10.1.0.0/16"), api.OverlayVXLAN, 0},
		"bad block size": {conf("x", "10.1.0.0/16"), api.OverlayVXLAN, 31},
	}
	for name, c := range cases {
		req := map[string]any{"config": []byte(c.conf), "overlay": c.overlay, "blockSize": c.bs}
		if c.conf != "nope" {
			req["config"] = rawJSON(c.conf)
		}
		err := a.api.Do(context.Background(), "POST", "/v1/networks", req, nil)
		if !errors.Is(err, api.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	if n := count(t, prefix+"/"); n != 2 { // alive/a and nodes/a, nothing else
		t.Errorf("%d keys under the prefix after refused creates", n)
	}
}

// The cluster store's lock (ds/etcd's meta/lock, taken for maintenance)
// holds the agent's writes off too: ErrBusy naming it, nothing written.
func TestClusterStoreLock(t *testing.T) {
	needEtcd(t)
	t.Parallel()
	prefix := newPrefix()
	a := startAgent(t, prefix, "a", "", func(c *Config) { c.RequestTimeout = time.Second })
	if _, err := admin.Put(context.Background(), prefix+"/cluster/meta/lock", "backup by ops"); err != nil {
		t.Fatal(err)
	}
	_, err := a.createNetwork(conf("held", "10.40.0.0/16"), false)
	if !isKind(err, api.ErrBusy, `"backup by ops"`) {
		t.Errorf("create while locked: %v, want ErrBusy naming the holder", err)
	}
	if n := count(t, prefix+"/cluster/networks/"); n != 0 {
		t.Errorf("%d networks written while locked", n)
	}
	if _, err := admin.Delete(context.Background(), prefix+"/cluster/meta/lock"); err != nil {
		t.Fatal(err)
	}
	a.mustCreate(conf("held", "10.40.0.0/16"))
}
