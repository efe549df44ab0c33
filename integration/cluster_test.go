package integration

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/pkg/testutil"
)

// startCluster makes nodes named names, each with its agent, on etcd.
func startCluster(t *testing.T, e *etcdProc, names ...string) []*cnode {
	t.Helper()
	prefix := testPrefix(t)
	var nodes []*cnode
	for _, name := range names {
		n := newNode(t, name)
		n.startAgent(e.URL(), prefix)
		nodes = append(nodes, n)
	}
	eventually(t, "every node is ready", func() bool {
		seen := nodes[0].nodes()
		for _, name := range names {
			if seen[name].State != api.NodeReady {
				return false
			}
		}
		return true
	})
	return nodes
}

// blocksOf is the blocks a node holds of a cluster network, as its
// replica has them.
func blocksOf(n *cnode, network string) []netip.Prefix {
	net := n.network(network)
	if net == nil || net.Cluster == nil {
		return nil
	}
	var out []netip.Prefix
	for _, b := range net.Cluster.Blocks {
		if p, err := netip.ParsePrefix(b); err == nil {
			out = append(out, p)
		}
	}
	return out
}

func inBlocks(ip string, blocks []netip.Prefix) bool {
	p, err := netip.ParsePrefix(ip)
	return err == nil && slices.ContainsFunc(blocks, func(b netip.Prefix) bool { return b.Contains(p.Addr()) })
}

// Two nodes share a network: each holds blocks of its own, and 20
// containers connected at once on both get 20 distinct addresses, each
// from its node's blocks; every node sees every node's peers.
func TestClusterBlocksAndConcurrentConnects(t *testing.T) {
	needCluster(t)
	nodes := startCluster(t, packageEtcd(t), "a", "b")
	a, b := nodes[0], nodes[1]
	if out := a.must("network", "create", "--overlay", "vxlan", clusterConf(t, "shared", "cbr-sh", "10.252.0.0/16")); out != "shared created\n" {
		t.Errorf("network create --overlay printed %q", out)
	}
	// The creating node holds a block when the command returns; the
	// other claims its own as soon as its agent sees the network.
	if len(blocksOf(a, "shared")) == 0 {
		t.Fatalf("node a holds no block after create:\n%s", a.agentLog())
	}
	eventually(t, "node b holds a block of shared", func() bool { return len(blocksOf(b, "shared")) > 0 })
	ba, bb := blocksOf(a, "shared"), blocksOf(b, "shared")
	for _, x := range ba {
		for _, y := range bb {
			if x.Overlaps(y) {
				t.Fatalf("nodes a and b hold overlapping blocks %s and %s", x, y)
			}
		}
	}
	list := a.nodes()
	if list["a"].Address != a.addr || list["b"].Address != b.addr || len(list["a"].Blocks) == 0 || len(list["b"].Blocks) == 0 {
		t.Errorf("node list: %+v", list)
	}
	if out := a.must("node", "list"); !strings.HasPrefix(out, "NAME") || !strings.Contains(out, "ready") {
		t.Errorf("node list table:\n%s", out)
	}

	type result struct {
		node *cnode
		pid  int
		err  error
	}
	var wg sync.WaitGroup
	results := make(chan result, 20)
	for i := range 20 {
		n := nodes[i%2]
		s := testutil.NewSleeper(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, stderr, err := n.run("", "network", "connect", strconv.Itoa(s.PID), "shared")
			if err != nil {
				err = fmt.Errorf("%v: %s", err, stderr)
			}
			results <- result{n, s.PID, err}
		}()
	}
	wg.Wait()
	close(results)
	for r := range results {
		if r.err != nil {
			t.Errorf("connect %d on %s: %v", r.pid, r.node.name, r.err)
		}
	}
	seen := map[string]string{}
	for _, n := range nodes {
		blocks := blocksOf(n, "shared")
		for _, p := range n.network("shared").Peers {
			if p.Node == "" {
				t.Errorf("network inspect on %s does not name the node of %s", n.name, p.ContainerID)
			}
			if p.Node != n.name {
				continue // another node's, listed below
			}
			for _, ip := range p.IPs {
				if other, dup := seen[ip]; dup {
					t.Errorf("address %s given twice: %s and %s on %s", ip, other, p.ContainerID, n.name)
				}
				seen[ip] = p.ContainerID + " on " + n.name
				if !inBlocks(ip, blocks) {
					t.Errorf("%s on %s has %s, outside the node's blocks %v", p.ContainerID, n.name, ip, blocks)
				}
			}
		}
	}
	if len(seen) != 20 {
		t.Errorf("%d distinct addresses for 20 containers: %v", len(seen), seen)
	}
	// Each node's agent publishes its peers: every node lists all 20.
	eventually(t, "node a lists node b's peers", func() bool {
		onB := 0
		for _, p := range a.network("shared").Peers {
			if p.Node == "b" {
				onB++
			}
		}
		return onB == 10
	})

	// Delete is refused while another node has containers on it, naming it.
	for _, p := range a.network("shared").Peers {
		if p.Node == "a" {
			a.must("network", "disconnect", strconv.Itoa(p.PID), "shared")
		}
	}
	_, stderr, err := a.run("", "network", "delete", "shared")
	if err == nil || !strings.Contains(stderr, "b") || strings.Count(stderr, "\n") != 1 {
		t.Errorf("network delete with containers on b: %v %q", err, stderr)
	}
}

// The creating node takes a block of the two a network has; the agents of
// two other nodes then race for the last one, each as soon as its watch
// sees the network: exactly one gets it, and a connect on the other says
// why it cannot.
func TestClusterLastBlockRace(t *testing.T) {
	needCluster(t)
	nodes := startCluster(t, packageEtcd(t), "a", "b", "c")
	a, b, c := nodes[0], nodes[1], nodes[2]
	a.must("network", "create", "--overlay", "vxlan", "--block-size", "24", clusterConf(t, "tiny", "cbr-tiny", "10.253.6.0/23"))
	// The creating node claims in the create itself: it never loses.
	if got := blocksOf(a, "tiny"); len(got) != 1 {
		t.Fatalf("the creating node holds %v after create", got)
	}
	var winner, loser *cnode
	defer func() {
		if t.Failed() {
			t.Logf("a %v %s\nb %v %s\nc %v %s", blocksOf(a, "tiny"), a.agentLog(), blocksOf(b, "tiny"), b.agentLog(), blocksOf(c, "tiny"), c.agentLog())
		}
	}()
	eventually(t, "b or c holds the last block", func() bool {
		switch {
		case len(blocksOf(b, "tiny")) > 0:
			winner, loser = b, c
		case len(blocksOf(c, "tiny")) > 0:
			winner, loser = c, b
		}
		return winner != nil
	})
	// The loser tried, and found every block held.
	eventually(t, loser.name+"'s agent finds the range exhausted", func() bool {
		return strings.Contains(loser.agentLog(), "range exhausted")
	})
	ba, bw, bl := blocksOf(a, "tiny"), blocksOf(winner, "tiny"), blocksOf(loser, "tiny")
	if len(ba) != 1 || len(bw) != 1 || len(bl) != 0 || ba[0] == bw[0] {
		t.Fatalf("blocks: a %v, %s %v, %s %v", ba, winner.name, bw, loser.name, bl)
	}
	if held := a.nodes()[loser.name].Blocks; len(held) != 0 {
		t.Errorf("etcd gives %s blocks %v", loser.name, held)
	}
	s := testutil.NewSleeper(t)
	_, stderr, err := loser.run("", "network", "connect", strconv.Itoa(s.PID), "tiny")
	secOneLine(t, "connect on the node without a block", err, stderr, "holds no address block")
	if p := loser.network("tiny").Peers; slices.ContainsFunc(p, func(p api.Peer) bool { return p.Node == loser.name }) {
		t.Errorf("a refused connect left a peer: %+v", p)
	}
}

// etcd down: containers still connect, through the CLI and the start hook,
// on both nodes, from the blocks they hold; a cluster change fails within
// its bound with one line. etcd back: the agents catch up.
func TestClusterEtcdOutage(t *testing.T) {
	needCluster(t)
	e := ownEtcd(t, 23792, 23802)
	nodes := startCluster(t, e, "a", "b")
	a, b := nodes[0], nodes[1]
	a.must("network", "create", "--overlay", "vxlan", clusterConf(t, "steady", "cbr-st", "10.252.0.0/16"))
	eventually(t, "node b holds a block", func() bool { return len(blocksOf(b, "steady")) > 0 })

	e.stop()
	for _, n := range nodes {
		s := testutil.NewSleeper(t)
		n.must("network", "connect", strconv.Itoa(s.PID), "steady")
		h := testutil.NewSleeper(t)
		state := fmt.Sprintf(`{"ociVersion": "1.2.0", "id": "hook-%s", "status": "creating", "pid": %d, "annotations": {"circuit.network": "steady"}}`, n.name, h.PID)
		if out, stderr, err := n.run(state); err != nil {
			t.Errorf("start hook on %s with etcd down: %v %s %s", n.name, err, out, stderr)
		}
	}
	start := time.Now()
	_, stderr, err := a.run("", "network", "create", "--overlay", "vxlan", clusterConf(t, "later", "cbr-la", "10.254.0.0/16"))
	took := time.Since(start)
	secOneLine(t, "network create --overlay with etcd down", err, stderr, "does not answer")
	if took > 6*time.Second {
		t.Errorf("network create --overlay with etcd down took %s; the bound is 5s", took)
	}
	if a.network("later") != nil {
		t.Error("a refused create left a network")
	}

	if err := e.start(); err != nil {
		t.Fatal(err)
	}
	b.must("network", "create", "--overlay", "vxlan", clusterConf(t, "later", "cbr-la", "10.254.0.0/16"))
	eventually(t, "node a catches up with a network created after the outage", func() bool { return len(blocksOf(a, "later")) > 0 })
	eventually(t, "both nodes ready again", func() bool {
		l := a.nodes()
		return l["a"].State == api.NodeReady && l["b"].State == api.NodeReady
	})
	// What connected during the outage is published once etcd is back.
	eventually(t, "node a lists the 2 containers b connected during the outage", func() bool {
		n := 0
		for _, p := range a.network("steady").Peers {
			if p.Node == "b" {
				n++
			}
		}
		return n == 2
	})
}

// gc --cluster gives back the blocks of a node lost longer than the grace
// and with no container recorded, and never a live node's.
func TestClusterGC(t *testing.T) {
	needCluster(t)
	nodes := startCluster(t, packageEtcd(t), "a", "b", "c")
	a, b, c := nodes[0], nodes[1], nodes[2]
	a.must("network", "create", "--overlay", "vxlan", clusterConf(t, "gcnet", "cbr-gc", "10.252.0.0/16"))
	for _, n := range nodes {
		eventually(t, n.name+" holds a block", func() bool { return len(blocksOf(n, "gcnet")) > 0 })
	}
	// b keeps a container; both b and c then go away.
	s := testutil.NewSleeper(t)
	b.must("network", "connect", strconv.Itoa(s.PID), "gcnet")
	eventually(t, "b's container is published", func() bool {
		return slices.ContainsFunc(a.network("gcnet").Peers, func(p api.Peer) bool { return p.Node == "b" })
	})
	blocksB, blocksC := a.nodes()["b"].Blocks, a.nodes()["c"].Blocks
	b.stopAgent()
	c.stopAgent()
	eventually(t, "b and c are lost", func() bool {
		l := a.nodes()
		return l["b"].State == api.NodeLost && l["c"].State == api.NodeLost
	})

	// Within the grace, nothing goes.
	if out := a.must("gc", "--cluster", "--grace", "1h"); strings.Contains(out, "release") {
		t.Errorf("gc --cluster within the grace:\n%s", out)
	}
	time.Sleep(1100 * time.Millisecond)
	dry := a.must("gc", "--cluster", "--grace", "1s", "--dry-run")
	if !strings.Contains(dry, "would") || !strings.Contains(dry, blocksC[0]) {
		t.Errorf("gc --cluster --dry-run does not offer c's block %v:\n%s", blocksC, dry)
	}
	if l := a.nodes(); len(l["c"].Blocks) == 0 {
		t.Error("gc --dry-run released a block")
	}
	out := a.must("gc", "--cluster", "--grace", "1s")
	for _, blk := range blocksC {
		if !strings.Contains(out, blk) {
			t.Errorf("gc --cluster did not release c's block %s:\n%s", blk, out)
		}
	}
	for _, blk := range append(slices.Clone(blocksB), a.nodes()["a"].Blocks...) {
		if strings.Contains(out, blk) {
			t.Errorf("gc --cluster released %s, of a live node or one with a container:\n%s", blk, out)
		}
	}
	l := a.nodes()
	if _, ok := l["c"]; ok {
		t.Errorf("a lost node with no block left is still listed: %+v", l["c"])
	}
	if len(l["a"].Blocks) == 0 || !slices.Equal(l["b"].Blocks, blocksB) {
		t.Errorf("after gc: a %v, b %v (was %v)", l["a"].Blocks, l["b"].Blocks, blocksB)
	}
}
