package agent

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
)

// The replica never overwrites a local network of the same name, and keeps
// circuit's local fields (QoS, OwnedBridge) across the cluster's updates.
func TestReplicaKeepsLocal(t *testing.T) {
	needEtcd(t)
	t.Parallel()
	prefix := newPrefix()
	a := startAgent(t, prefix, "a", "")
	b := startAgent(t, prefix, "b", "")
	local := &api.Network{Name: "shared", Type: "bridge", Plugins: []string{"bridge"}, CNIVersion: "1.0.0",
		Config: []byte(`{"cniVersion":"1.0.0","name":"shared","type":"bridge"}`), CreatedAt: time.Now().UTC()}
	b.update(func(tx ds.Tx) error { return tx.PutNetwork(local) })

	if _, err := b.createNetwork(conf("shared", "10.5.0.0/16"), false); !errors.Is(err, api.ErrExists) {
		t.Errorf("b: create over its local network: %v, want ErrExists", err)
	}
	n := a.mustCreate(conf("shared", "10.5.0.0/16"))
	waitFor(t, "b to log the conflict", func() bool { return b.logged("cluster network shared is not replicated here") })
	if got := b.replica("shared"); got.Cluster != nil || string(got.Config) != string(local.Config) {
		t.Errorf("b's local network became %+v", got)
	}
	if holder(t, prefix, "shared", "10.5.1.0/24") != "" {
		t.Errorf("b claimed a block of a network it does not replicate")
	}

	// circuit's own fields on a's replica.
	qos := &api.QoSPolicy{Rate: 1e6, Direction: api.DirEgress}
	a.update(func(tx ds.Tx) error {
		r, err := tx.GetNetwork("shared")
		if err != nil {
			return err
		}
		r.QoS, r.OwnedBridge = qos, "br-shared"
		return tx.PutNetwork(r)
	})
	conf2 := `{"cniVersion":"1.0.0","name":"shared","plugins":[{"type":"bridge","bridge":"br-new","ipam":{"type":"host-local","ranges":[[{"subnet":"10.5.0.0/16"}]]}}]}`
	n2, err := a.createNetwork(conf2, true)
	if err != nil {
		t.Fatalf("create --force: %v", err)
	}
	if string(n2.Config) != conf2 || n2.Cluster.VNI != n.Cluster.VNI || !equal(n2.Cluster.Blocks, n.Cluster.Blocks) || !n2.CreatedAt.Equal(n.CreatedAt) {
		t.Errorf("after --force: %+v %+v, want the new config, the same VNI, blocks, creation", n2, n2.Cluster)
	}
	r := a.replica("shared")
	if r.QoS == nil || *r.QoS != *qos || r.OwnedBridge != "br-shared" || string(r.Config) != conf2 {
		t.Errorf("a's replica lost its local fields: qos %+v, bridge %q", r.QoS, r.OwnedBridge)
	}
	if _, err := a.createNetwork(conf2, true, 20); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("--force with another block size: %v, want ErrInvalid", err)
	}
	if _, err := a.createNetwork(conf("shared", "10.6.0.0/16"), true); !errors.Is(err, api.ErrInUse) {
		t.Errorf("--force leaving held blocks outside the ranges: %v, want ErrInUse", err)
	}

	// Deleted from etcd behind the agents' backs: a's replica goes, b's
	// local network stays.
	if _, err := admin.Delete(context.Background(), prefix+"/cluster/networks/shared"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a's replica to go", func() bool { return a.replica("shared") == nil })
	if got := b.replica("shared"); got == nil || got.Cluster != nil {
		t.Errorf("b's local network: %+v", got)
	}
}

// A cluster network gone from etcd stays in a replica while local peers
// use it.
func TestReplicaKeptWhilePeers(t *testing.T) {
	needEtcd(t)
	t.Parallel()
	prefix := newPrefix()
	a := startAgent(t, prefix, "a", "")
	a.mustCreate(conf("busy", "10.7.0.0/16"))
	a.update(func(tx ds.Tx) error {
		return tx.PutPeer(&api.Peer{Network: "busy", ContainerID: "c1", IfName: "eth0", State: api.PeerConnecting})
	})
	if _, err := admin.Delete(context.Background(), prefix+"/cluster/networks/busy"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a to keep it and say so", func() bool { return a.logged("still use it: keeping its replica") })
	if a.replica("busy") == nil {
		t.Fatal("replica deleted under a peer")
	}
	a.update(func(tx ds.Tx) error { return tx.DeletePeer("busy", "c1", "eth0") })
	notify(t, a, "busy")
	waitFor(t, "the replica to go", func() bool { return a.replica("busy") == nil })
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// A compaction while an agent's watch is behind: the agent lists again and
// converges.
func TestCompactionRelists(t *testing.T) {
	needEtcd(t)
	t.Parallel()
	prefix := newPrefix()
	a := startAgent(t, prefix, "a", "")
	b := startAgent(t, prefix, "b", "")
	<-a.hold.set(true)
	b.mustCreate(conf("late", "10.8.0.0/16"))
	// A revision past the create's, so the compaction removes what a's
	// held watch has yet to read.
	if _, err := admin.Put(context.Background(), "/agent-test-unrelated", prefix); err != nil {
		t.Fatal(err)
	}
	resp, err := admin.Get(context.Background(), "/")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Compact(context.Background(), resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	if a.replica("late") != nil {
		t.Fatal("a replicated while held")
	}
	a.hold.set(false)
	waitFor(t, "a's replica of late", func() bool { return len(a.replicaBlocks("late")) == 1 })
	if !a.logged("watch fell behind etcd's compaction") {
		t.Errorf("a did not re-list after the compaction; log:\n%s", a.logs)
	}
	if got := a.replicaBlocks("late"); got[0] != "10.8.1.0/24" {
		t.Errorf("a holds %v", got)
	}
}
