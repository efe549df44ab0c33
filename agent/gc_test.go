package agent

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/circuit-cni/circuit/agentapi"
	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
)

// gc --cluster releases a lost node's blocks after the grace, never a live
// node's, never on a network where the lost node has published peers; a
// dry run changes nothing; a node's record goes once it holds no block.
func TestGCReleasesLostNodesBlocks(t *testing.T) {
	needEtcd(t)
	t.Parallel()
	prefix := newPrefix()
	a := startAgent(t, prefix, "a", "")
	b := startAgent(t, prefix, "b", "")
	a.mustCreate(conf("g1", "10.20.0.0/16"))
	a.mustCreate(conf("g2", "10.21.0.0/16"))
	waitFor(t, "b's blocks", func() bool { return len(b.replicaBlocks("g1")) == 1 && len(b.replicaBlocks("g2")) == 1 })
	// Which node got which block depends on who claimed first.
	b1, b2 := b.replicaBlocks("g1")[0], b.replicaBlocks("g2")[0]
	a1, a2 := a.replicaBlocks("g1")[0], a.replicaBlocks("g2")[0]
	connect(t, b, "g2", "c1", strings.Replace(b2, ".0/24", ".2/24", 1))
	waitFor(t, "b's peer published", func() bool { return count(t, prefix+"/peers/b/g2/") == 1 })

	b.stop() // revokes its lease: lost at once
	if got := a.node("b"); got.State != api.NodeLost {
		t.Fatalf("b after stop: %+v", got)
	}
	gc := func(grace time.Duration, dry bool) []string {
		t.Helper()
		var r api.Report
		if err := a.api.Do(context.Background(), "POST", agentapi.PathGC, agentapi.GC{Grace: agentapi.Duration(grace), DryRun: dry}, &r); err != nil {
			t.Fatalf("gc: %v", err)
		}
		return r.Actions
	}
	if got := gc(time.Hour, false); len(got) != 0 {
		t.Errorf("gc within the grace: %q", got)
	}
	keys := func() int64 { return count(t, prefix+"/") }
	n := keys()
	want := "would release block " + b1 + " of network g1 (node b, lost since "
	got := gc(0, true)
	if len(got) != 1 || !strings.HasPrefix(got[0], want) {
		t.Errorf("gc --dry-run: %q, want %q...", got, want)
	}
	if keys() != n || holder(t, prefix, "g1", b1) != "b" {
		t.Errorf("the dry run changed etcd")
	}
	if got := gc(0, false); len(got) != 1 || !strings.HasPrefix(got[0], strings.TrimPrefix(want, "would ")) {
		t.Errorf("gc: %q", got)
	}
	if holder(t, prefix, "g1", b1) != "" || holder(t, prefix, "g2", b2) != "b" {
		t.Errorf("after gc: g1's block held by %q, g2's by %q", holder(t, prefix, "g1", b1), holder(t, prefix, "g2", b2))
	}
	if holder(t, prefix, "g1", a1) != "a" || holder(t, prefix, "g2", a2) != "a" {
		t.Errorf("gc touched a live node's blocks")
	}
	if nd := a.node("b"); nd == nil || !slices.Equal(nd.Blocks, []string{b2}) {
		t.Errorf("node b: %+v", nd)
	}

	// Its peers forgotten (by hand: the node is gone for good), the rest goes.
	if _, err := admin.Delete(context.Background(), prefix+"/peers/b/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	got = gc(0, false)
	if len(got) != 2 || !strings.HasPrefix(got[0], "release block "+b2+" of network g2 (node b") || !strings.HasPrefix(got[1], "forget node b (lost since") {
		t.Errorf("gc: %q", got)
	}
	if a.node("b") != nil {
		t.Errorf("node b still listed")
	}
	if got := gc(0, false); len(got) != 0 {
		t.Errorf("gc again: %q", got)
	}
}

// connect records a connected peer in the node's replica, as circuit's
// connect does, and tells the agent.
func connect(t *testing.T, ta *testAgent, network, id, ip string) {
	t.Helper()
	ta.update(func(tx ds.Tx) error {
		return tx.PutPeer(&api.Peer{Network: network, ContainerID: id, IfName: "eth0", IPs: []string{ip}, PID: 42,
			State: api.PeerConnected, ConnectedAt: time.Now(), Netns: "/var/lib/circuit/netns/x", BootID: "boot",
			Owner: &api.Process{PID: 1, Start: 2}})
	})
	notify(t, ta, network)
}

func disconnect(t *testing.T, ta *testAgent, network, id string) {
	t.Helper()
	ta.update(func(tx ds.Tx) error { return tx.DeletePeer(network, id, "eth0") })
	notify(t, ta, network)
}

// A network is deleted only while no node has peers on it; force forgets
// those of lost nodes, never of ready ones. Peers are listed by node.
func TestDeleteNetworkInUse(t *testing.T) {
	needEtcd(t)
	t.Parallel()
	prefix := newPrefix()
	a := startAgent(t, prefix, "a", "")
	b := startAgent(t, prefix, "b", "")
	a.mustCreate(conf("d1", "10.22.0.0/16"))
	waitFor(t, "b's replica", func() bool { return len(b.replicaBlocks("d1")) == 1 })
	connect(t, b, "d1", "web-1", "10.22.1.2/24")
	connect(t, a, "d1", "web-0", "10.22.0.2/24")
	waitFor(t, "both peers published", func() bool { return count(t, prefix+"/peers/") == 2 })

	var ps agentapi.Peers
	if err := b.api.Do(context.Background(), "GET", agentapi.PathPeers+"?network=d1", nil, &ps); err != nil {
		t.Fatal(err)
	}
	if len(ps.Peers) != 2 || ps.Peers[0].Node != "a" || ps.Peers[0].ContainerID != "web-0" || ps.Peers[1].Node != "b" ||
		ps.Peers[1].IPs[0] != "10.22.1.2/24" || ps.Peers[1].Network != "d1" || ps.Peers[1].Netns != "" || ps.Peers[1].Owner != nil {
		t.Errorf("peers: %+v", ps.Peers)
	}

	del := func(ta *testAgent, force bool) error {
		path := agentapi.PathNetworks + "/d1"
		if force {
			path += "?force=1"
		}
		return ta.api.Do(context.Background(), "DELETE", path, nil, nil)
	}
	if err := del(a, true); !isKind(err, api.ErrInUse, "node(s) a, b") {
		t.Errorf("delete: %v, want ErrInUse naming a and b", err)
	}
	// circuit disconnected a's peer and asks at once: no notify needed.
	a.update(func(tx ds.Tx) error { return tx.DeletePeer("d1", "web-0", "eth0") })
	if err := del(a, false); !isKind(err, api.ErrInUse, "node(s) b:") {
		t.Errorf("delete: %v, want ErrInUse naming b only", err)
	}
	b.stop()
	if err := del(a, false); !isKind(err, api.ErrInUse, "lost node(s) b") {
		t.Errorf("delete with a lost node's peers: %v", err)
	}
	if err := del(a, true); err != nil {
		t.Fatalf("delete --force: %v", err)
	}
	for _, dir := range []string{"/peers/", "/blocks/d1/", "/cluster/networks/d1"} {
		if n := count(t, prefix+dir); n != 0 {
			t.Errorf("%d keys left under %s", n, dir)
		}
	}
	if a.replica("d1") != nil {
		t.Errorf("a's replica left")
	}
	if err := del(a, false); !isKind(err, api.ErrNotFound, "not found") {
		t.Errorf("delete again: %v", err)
	}
}

func isKind(err, kind error, text string) bool {
	return err != nil && errors.Is(err, kind) && strings.Contains(err.Error(), text)
}
