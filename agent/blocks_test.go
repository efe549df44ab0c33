package agent

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/circuit-cni/circuit/agentapi"
	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/ds/etcd"
)

// 40 claims racing from two agents, each from its own (stale) view: every
// one gets a block, and no block is given twice.
func TestClaimsRaceNeverShare(t *testing.T) {
	needEtcd(t)
	t.Parallel()
	prefix := newPrefix()
	a := startAgent(t, prefix, "a", "")
	b := startAgent(t, prefix, "b", "")
	a.mustCreate(conf("race", "10.2.0.0/18")) // 64 blocks of /24
	waitFor(t, "b's block", func() bool { return len(b.replicaBlocks("race")) == 1 })

	type claimed struct {
		node  string
		block netip.Prefix
		err   error
	}
	out := make(chan claimed, 40)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range 40 {
		ag := []*testAgent{a, b}[i%2]
		st := ag.view.snapshot()
		cn := st.networks["race"]
		cands, err := candidates(&cn.net)
		if err != nil {
			t.Fatal(err)
		}
		taken := map[netip.Prefix]bool{}
		for p := range st.blocks["race"] {
			taken[p] = true
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			p, _, err := ag.claim(context.Background(), cn, cands[4], taken)
			out <- claimed{ag.cfg.Node, p, err}
		}()
	}
	close(start)
	wg.Wait()
	close(out)
	seen := map[netip.Prefix]string{}
	for c := range out {
		if c.err != nil {
			t.Errorf("%s: claim: %v", c.node, c.err)
			continue
		}
		if other, ok := seen[c.block]; ok {
			t.Errorf("block %s given to %s and %s", c.block, other, c.node)
		}
		seen[c.block] = c.node
		if h := holder(t, prefix, "race", c.block.String()); h != c.node {
			t.Errorf("etcd gives %s to %q, the claim to %s", c.block, h, c.node)
		}
	}
	if n := count(t, prefix+"/blocks/race/"); n != 42 {
		t.Errorf("%d block keys, want 42", n)
	}
}

// Two agents racing for a range's last block: one wins, the other holds
// none and says so. The network comes from a plain ds/etcd store (as a
// tool might write it): both agents see it at once and claim together.
func TestLastBlockOneWins(t *testing.T) {
	needEtcd(t)
	t.Parallel()
	prefix := newPrefix()
	a := startAgent(t, prefix, "a", "")
	b := startAgent(t, prefix, "b", "")
	n, err := clusterNetwork(agentapi.CreateNetwork{Config: []byte(conf("last", "10.3.0.0/25")), Overlay: api.OverlayVXLAN, BlockSize: 25})
	if err != nil {
		t.Fatal(err)
	}
	n.Cluster.VNI = 5000
	st, err := etcd.Open(context.Background(), etcd.Config{Endpoints: []string{endpoint}, Prefix: prefix + "/cluster"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Update(context.Background(), func(tx ds.Tx) error { return tx.PutNetwork(n) }); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "both replicas", func() bool { return a.replica("last") != nil && b.replica("last") != nil })
	waitFor(t, "a winner", func() bool { return holder(t, prefix, "last", "10.3.0.0/25") != "" })
	win, lose := a, b
	if holder(t, prefix, "last", "10.3.0.0/25") == "b" {
		win, lose = b, a
	}
	waitFor(t, "the winner's replica", func() bool { return len(win.replicaBlocks("last")) == 1 })
	waitFor(t, "the loser to say so", func() bool { return lose.logged("IPv4 range exhausted") })
	if got := lose.replicaBlocks("last"); len(got) != 0 {
		t.Errorf("loser %s holds %v", lose.cfg.Node, got)
	}
	if win.logged("range exhausted") {
		t.Errorf("the winner %s says the range is exhausted", win.cfg.Node)
	}
	if n := count(t, prefix+"/blocks/last/"); n != 1 {
		t.Errorf("%d block keys, want 1", n)
	}
}

// A node claims another block when its free addresses run low (fewer than
// a quarter of a block's), counted from host-local's reservations.
func TestClaimWhenLow(t *testing.T) {
	needEtcd(t)
	t.Parallel()
	prefix := newPrefix()
	a := startAgent(t, prefix, "a", "")
	n := a.mustCreate(conf("low", "10.4.0.0/24"), 28) // blocks of 16: 13 usable
	if len(n.Cluster.Blocks) != 1 || n.Cluster.Blocks[0] != "10.4.0.0/28" {
		t.Fatalf("blocks %v", n.Cluster.Blocks)
	}
	dir := filepath.Join(a.cfg.StateDir, agentapi.IPAMDir, "low")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	reserve := func(from, to int) {
		for i := from; i <= to; i++ {
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("10.4.0.%d", i)), []byte("c1\neth0"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	os.WriteFile(filepath.Join(dir, "lock"), nil, 0o600)
	os.WriteFile(filepath.Join(dir, "last_reserved_ip.0"), []byte("10.4.0.11"), 0o600)
	reserve(2, 11) // 3 free of 13: not yet below 13/4 = 3
	if err := a.lock(context.Background()); err != nil {
		t.Fatal(err)
	}
	err := a.reconcile(context.Background(), "low")
	a.unlock()
	if got := a.replicaBlocks("low"); err != nil || len(got) != 1 {
		t.Fatalf("3 free addresses: blocks %v (reconcile: %v)", got, err)
	}
	reserve(12, 12) // 2 free
	notify(t, a, "low")
	waitFor(t, "a second block", func() bool { return len(a.replicaBlocks("low")) == 2 })
	if got := a.replicaBlocks("low"); got[1] != "10.4.0.16/28" {
		t.Errorf("blocks %v", got)
	}
}

func notify(t *testing.T, ta *testAgent, network string) {
	t.Helper()
	if err := ta.api.Do(context.Background(), "POST", agentapi.PathNotify, agentapi.Notify{Network: network}, nil); err != nil {
		t.Fatalf("notify: %v", err)
	}
}

func TestUsable(t *testing.T) {
	needEtcd(t)
	for cidr, want := range map[string]uint64{
		"10.0.0.0/24": 253, "10.0.0.0/30": 1, "fd00::/120": 254, "fd00::/64": 1 << 62, "10.0.0.0/8": 1<<24 - 3,
	} {
		if got := usable(netip.MustParsePrefix(cidr)); got != want {
			t.Errorf("usable(%s) = %d, want %d", cidr, got, want)
		}
	}
}
