package agent

import (
	"context"
	"encoding/json"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// A restarted agent re-confirms its replica's blocks: one etcd now gives
// another node is dropped, reported in its node's conflicts and never used
// again; one etcd lost is claimed again.
func TestRestartReconfirmsBlocks(t *testing.T) {
	needEtcd(t)
	t.Parallel()
	prefix := newPrefix()
	state := t.TempDir()
	a := startAgent(t, prefix, "a", state)
	n := a.mustCreate(conf("rc", "10.30.0.0/16", "fd00:30::/112"))
	if !slices.Equal(n.Cluster.Blocks, []string{"10.30.0.0/24", "fd00:30::/120"}) {
		t.Fatalf("blocks %v", n.Cluster.Blocks)
	}
	a.stop()

	// While a was down, gc gave its IPv4 block to c, and its IPv6
	// block's key was lost.
	v, _ := json.Marshal(blockValue{Node: "c", ClaimedAt: time.Now()})
	if _, err := admin.Put(context.Background(), prefix+"/blocks/rc/10.30.0.0_24", string(v)); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Delete(context.Background(), prefix+"/blocks/rc/fd00:30::_120"); err != nil {
		t.Fatal(err)
	}

	a = startAgent(t, prefix, "a", state)
	waitFor(t, "a to report the conflict", func() bool {
		nd := a.node("a")
		return nd != nil && slices.Equal(nd.Conflicts, []string{"10.30.0.0/24"})
	})
	waitFor(t, "the replica without it", func() bool {
		return slices.Equal(a.replicaBlocks("rc"), []string{"10.30.1.0/24", "fd00:30::/120"})
	})
	if h := holder(t, prefix, "rc", "fd00:30::/120"); h != "a" {
		t.Errorf("the lost IPv6 block is held by %q, want a again", h)
	}
	if !a.logged("etcd gives it to node c") {
		t.Errorf("no conflict logged:\n%s", a.logs)
	}

	// Released again later, the conflicting block is still never used.
	if _, err := admin.Delete(context.Background(), prefix+"/blocks/rc/10.30.0.0_24"); err != nil {
		t.Fatal(err)
	}
	a.stop()
	a = startAgent(t, prefix, "a", state)
	if nd := a.node("a"); !slices.Equal(nd.Conflicts, []string{"10.30.0.0/24"}) {
		t.Errorf("conflicts after a restart: %v", nd.Conflicts)
	}
	if err := a.lock(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := a.view.snapshot()
	cn := st.networks["rc"]
	cands, _ := candidates(&cn.net)
	b, _, err := a.claim(context.Background(), cn, cands[4], map[netip.Prefix]bool{})
	a.unlock()
	if err != nil || b.String() == "10.30.0.0/24" {
		t.Errorf("claim after the conflict: %s, %v", b, err)
	}
}
