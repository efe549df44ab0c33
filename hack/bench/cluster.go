package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/circuit-cni/circuit/agentapi"
	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/pkg/overlay"
	"github.com/circuit-cni/circuit/pkg/testutil"
)

// The cluster section: circuit-agent and the VXLAN overlay on simulated
// nodes. Each node is a network namespace with its own state dir and
// circuit-agent (default lease TTL and resync), linked to an underlay
// bridge in a namespace of the section's own (the hub), where one real
// etcd listens; circuit runs in the node's namespace, as it would on the
// node. Containers are sleepers in network namespaces of their own, as in
// the connect section. Nothing of the cluster is in the host's own
// namespace: its addresses, routes and ports are the hub's and the
// nodes', so two runs at once (or the tests' own cluster) cannot meet.

// clusterOpts are the section's sizes. Its flags are registered here, so
// the section stays in its own files.
var clusterOpts struct {
	agent string
	nodes string
	peers int
	fill  int
}

func init() {
	flag.StringVar(&clusterOpts.agent, "agent", "bin/circuit-agent", "circuit-agent `binary` for the cluster section")
	flag.StringVar(&clusterOpts.nodes, "cluster-nodes", "2,8,32", "cluster `sizes` for convergence; the largest also for memory, CPU and connect")
	flag.IntVar(&clusterOpts.peers, "cluster-peers", 50, "containers per node when the agents' memory and CPU at rest are measured")
	flag.IntVar(&clusterOpts.fill, "cluster-fill", 8, "`connects` at a time while filling the nodes with containers")
}

const (
	underlayPrefix = "10.250.0.0/24" // the nodes' underlay (the tests use 10.251.0.0/24)
	underlayHub    = "10.250.0.1"    // the hub's address on it, where etcd listens
	// etcd's ports, in the hub's namespace: not etcd's 2379/2380 nor the
	// tests' 23791-23802, in case a reader takes them for the host's.
	etcdClientPort = 23811
	etcdPeerPort   = 23812

	clusterNet   = "bench-cluster"
	clusterRange = "10.211.128.0/18" // /24 blocks: 64 nodes
	localNet     = "bench-cluster-local"
	localSubnet  = "10.211.96.0/24"
	localRoute   = "10.211.96.0/19" // as a cluster connect routes the whole range

	// probeInterval is how often a convergence round's container pings:
	// the resolution of the first-packet time.
	probeInterval = time.Millisecond
	// The bounds past which a round or a join counts as not converged (it
	// is reported, not fatal).
	firstPacketBound = 5 * time.Second
	joinBound        = 30 * time.Second
	// startBound is how long a process may take to be ready (etcd, an
	// agent's socket) before the section gives up: far more than it takes
	// on a loaded machine.
	startBound = 60 * time.Second
	// joinSettle lets the agents finish what a join set off before the
	// next one (and is part of the CPU counted per join).
	joinSettle = 200 * time.Millisecond
	// agentResync is circuit-agent's default --resync: CPU at rest is
	// measured over one.
	agentResync = 30 * time.Second
	// idlePoll and idleFor: an agent is idle once its CPU time has not
	// moved for idleFor, polled every idlePoll; idleBound caps the wait
	// (an agent at rest at 32 nodes wakes several times a second).
	idlePoll  = 20 * time.Millisecond
	idleFor   = 60 * time.Millisecond
	idleBound = time.Second
	// pauseFor and resumeFor are the spells of pausedExcept.
	pauseFor  = 3 * time.Second
	resumeFor = time.Second
	// fillGroup is how many nodes are filled at a time.
	fillGroup = 1
)

// clusterResult is what the section measured.
type clusterResult struct {
	sizes      []*clusterSize
	throughput *throughputResult
	paired     *clusterPaired
	resources  *clusterResources
	took       time.Duration
	steps      []clusterStep
}

// clusterStep is how long one part of the section took.
type clusterStep struct {
	name string
	took time.Duration
}

// clusterSize is convergence at one cluster size.
type clusterSize struct {
	nodes        int
	joins        sample // ms: agent start to every other node routing the joiner's block
	joinerRoutes sample // ms: agent start to the joiner routing every other node's block
	joinsLost    int    // joins past joinBound
	joinCPU      sample // ms of CPU, all agents, per join
	connect      sample // ms: `network connect` (the process) in each round
	firstPacket  sample // ms: connect's start to the first echo reply
	afterConnect sample // ms: connect's exit to the first echo reply
	lost         int    // rounds with no reply within firstPacketBound
	roundCPU     float64
}

type throughputResult struct {
	seconds, omit                 int
	sameBridge, underlay, overlay sample // Mbit/s
}

// clusterPaired is connect, disconnect and both hooks on a cluster network
// against a local network of the same shape, on one node, round by round.
type clusterPaired struct {
	rounds, warmup, nodes                        int
	connect, connectLocal, disconnect, discLocal sample // ms
	hookStart, hookStartLocal                    sample
	hookStop, hookStopLocal                      sample
}

// clusterResources is the agents' memory and CPU at the largest size.
type clusterResources struct {
	nodes, peersPerNode int
	fill                time.Duration // connecting every container
	filled, fillWidth   int           // containers connected in the fill, connects at a time
	settle, steady      time.Duration
	agentCPU            sample  // % of a core, per agent, at rest
	etcdCPU             float64 // % of a core, at rest
	rssJoined           sample  // KiB, VmRSS once every node has joined (a container each)
	rssFilled           sample  // KiB, VmRSS with every container
	hwm                 sample  // KiB, VmHWM just before the stop
	peakRSS             sample  // KiB, GNU time at exit
}

// cluster is the section's running state and everything to undo.
type cluster struct {
	b        *bench
	dir      string
	agentBin string
	store    string // --store
	prefix   string // --store-prefix
	hub      string // the hub's namespace: the underlay bridge and etcd
	hubPath  string
	etcd     *etcdServer
	nodes    []*clusterNode
	device   string     // the network's VXLAN device
	echoAddr netip.Addr // node 0's resident container

	mu       sync.Mutex
	undo     []func()
	sleepers []*testutil.Sleeper
	closed   sync.Once
}

// clusterNode is one simulated node.
type clusterNode struct {
	index    int
	name     string // the agent's --node
	netns    string
	nsPath   string
	hubLink  string // its veth's end on the underlay bridge, in the hub
	addr     string // on the underlay
	state    string
	agent    *agentProc
	routes   *routeLog
	block    netip.Prefix // its IPv4 block of the cluster network
	resident *testutil.Sleeper
	peers    int // containers connected to the cluster network
}

func clusterSizes(smoke bool) ([]int, int, error) {
	if smoke {
		return []int{2}, 2, nil
	}
	sizes, err := ints(clusterOpts.nodes)
	if err != nil {
		return nil, 0, fmt.Errorf("-cluster-nodes: %w", err)
	}
	slices.Sort(sizes)
	sizes = slices.Compact(sizes)
	switch {
	case sizes[0] < 2:
		return nil, 0, fmt.Errorf("-cluster-nodes: at least 2 nodes")
	case sizes[len(sizes)-1] > 64:
		return nil, 0, fmt.Errorf("-cluster-nodes: at most 64 nodes fit %s in /24 blocks", clusterRange)
	case clusterOpts.peers < 2 || clusterOpts.peers > 90:
		return nil, 0, fmt.Errorf("-cluster-peers: 2 to 90 (the rounds ask for addresses from .100 of each block)")
	}
	return sizes, clusterOpts.peers, nil
}

// clusterBench runs the section: joins and convergence at each size,
// throughput at the smallest, then at the largest connect and hooks
// against a local network and the agents' memory and CPU.
func (b *bench) clusterBench(ctx context.Context, r *report) error {
	t0 := time.Now()
	sizes, peers, err := clusterSizes(b.cfg.smoke)
	if err != nil {
		return err
	}
	c, err := b.newCluster()
	if err != nil {
		return err
	}
	defer c.close()
	res := &clusterResult{}
	r.cluster = res
	// step runs one part of the section and keeps how long it took.
	step := func(name string, fn func() error) error {
		t := time.Now()
		err := fn()
		res.steps = append(res.steps, clusterStep{name, time.Since(t)})
		return err
	}
	if err := step("etcd, node 0 and the network", func() error { return c.start(ctx) }); err != nil {
		return err
	}
	for i, size := range sizes {
		sr := &clusterSize{nodes: size}
		res.sizes = append(res.sizes, sr)
		if err := step(fmt.Sprintf("joins to %d nodes", size), func() error { return c.grow(ctx, size, sr) }); err != nil {
			return err
		}
		if i == 0 {
			if err := step("throughput", func() (err error) { res.throughput, err = c.throughput(ctx); return err }); err != nil {
				return err
			}
		}
		if err := step(fmt.Sprintf("first packets at %d nodes", size), func() error { return c.convergence(ctx, sr) }); err != nil {
			return err
		}
		logf("cluster: %d nodes: join %s ms, first packet %s ms after connect's start (medians)", size, f(sr.joins.median()), f(sr.firstPacket.median()))
	}
	if err := step("cluster vs local network", func() (err error) { res.paired, err = c.connectVsLocal(ctx); return err }); err != nil {
		return err
	}
	if err := step("fill, rest and stop", func() (err error) { res.resources, err = c.resources(ctx, peers); return err }); err != nil {
		return err
	}
	res.took = time.Since(t0)
	var parts []string
	for _, s := range res.steps {
		parts = append(parts, fmt.Sprintf("%s %s", s.name, s.took.Round(time.Second)))
	}
	logf("cluster: took %s: %s", res.took.Round(time.Second), strings.Join(parts, ", "))
	return nil
}

func (b *bench) newCluster() (*cluster, error) {
	agentBin, err := filepath.Abs(clusterOpts.agent)
	if err != nil {
		return nil, err
	}
	for _, tool := range []string{"etcd", "iperf3", "nsenter", "setpriv"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s is not installed (make deps)", tool)
		}
	}
	if _, err := os.Stat("/usr/bin/time"); err != nil {
		return nil, fmt.Errorf("GNU time is not installed (make deps): it measures the agents' peak RSS")
	}
	dir := filepath.Join(b.work, "cluster")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	c := &cluster{b: b, dir: dir, prefix: "/circuit-bench/" + b.tag}
	b.atExit(c.close) // a backstop: the section closes it itself
	// A copy, as for circuit: a rebuild during the run cannot swap it.
	c.agentBin = filepath.Join(dir, "circuit-agent")
	if err := copyFile(agentBin, c.agentBin, 0o755); err != nil {
		return nil, fmt.Errorf("%v (run `make build` first)", err)
	}
	return c, nil
}

// atExit registers fn to run when the section closes, last first.
func (c *cluster) atExit(fn func()) {
	c.mu.Lock()
	c.undo = append(c.undo, fn)
	c.mu.Unlock()
}

// close removes everything the section made, whatever step failed.
func (c *cluster) close() {
	c.closed.Do(func() {
		c.mu.Lock()
		undo := c.undo
		c.mu.Unlock()
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		os.RemoveAll(c.dir)
	})
}

// start makes the hub (the underlay's bridge), etcd, the first node and
// the cluster network.
func (c *cluster) start(ctx context.Context) error {
	c.hub = "ckh" + c.b.tag
	c.hubPath = "/run/netns/" + c.hub
	if err := ipCmd("netns", "add", c.hub); err != nil {
		return err
	}
	// The bridge and every node's veth end go with the namespace.
	c.atExit(func() { exec.Command("ip", "netns", "del", c.hub).Run() })
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "underlay", "type", "bridge"},
		{"addr", "add", underlayHub + "/24", "dev", "underlay"},
		{"link", "set", "underlay", "up"},
	} {
		if err := ipCmd(append([]string{"-n", c.hub}, args...)...); err != nil {
			return err
		}
	}
	etcdDir := filepath.Join(c.dir, "etcd")
	if err := os.MkdirAll(etcdDir, 0o700); err != nil {
		return err
	}
	var err error
	if c.etcd, err = startEtcd(ctx, c.hubPath, etcdDir, underlayHub, etcdClientPort, etcdPeerPort); err != nil {
		return err
	}
	c.atExit(c.etcd.stop)
	c.store = fmt.Sprintf("etcd://%s:%d", underlayHub, etcdClientPort)

	n0, err := c.newNode()
	if err != nil {
		return err
	}
	if err := c.startAgent(ctx, n0); err != nil {
		return err
	}
	if err := c.createNetwork(ctx, n0); err != nil {
		return err
	}
	c.nodes = append(c.nodes, n0)
	if err := c.connectResident(ctx, n0); err != nil {
		return err
	}
	// Node 0's resident container is the one every round's container pings.
	addr, err := c.addrOf(ctx, n0, n0.resident)
	if err != nil {
		return err
	}
	c.echoAddr, err = netip.ParseAddr(addr)
	return err
}

// newNode makes a node's namespace, its link to the underlay and its
// state dir, and watches its routes; its agent is not started.
func (c *cluster) newNode() (*clusterNode, error) {
	i := len(c.nodes)
	n := &clusterNode{
		index:   i,
		name:    fmt.Sprintf("node-%d", i),
		netns:   fmt.Sprintf("ckn%s-%d", c.b.tag, i),
		hubLink: fmt.Sprintf("node-%d", i),
		addr:    fmt.Sprintf("10.250.0.%d", 10+i),
		state:   filepath.Join(c.dir, fmt.Sprintf("node-%d", i)),
	}
	n.nsPath = "/run/netns/" + n.netns
	if err := ipCmd("netns", "add", n.netns); err != nil {
		return nil, err
	}
	c.atExit(func() {
		// Pins are bind mounts of the containers' namespaces: unmounted
		// here, so the state dir can go.
		pins, _ := filepath.Glob(filepath.Join(n.state, "netns", "*"))
		for _, p := range pins {
			syscall.Unmount(p, syscall.MNT_DETACH)
		}
		exec.Command("ip", "netns", "del", n.netns).Run()
	})
	// Made in the hub, its peer moved into the node's namespace: neither
	// end is ever in the host's.
	if err := ipCmd("-n", c.hub, "link", "add", n.hubLink, "type", "veth", "peer", "name", "eth0", "netns", n.netns); err != nil {
		return nil, err
	}
	for _, args := range [][]string{
		{"-n", c.hub, "link", "set", n.hubLink, "master", "underlay", "up"},
		{"-n", n.netns, "addr", "add", n.addr + "/24", "dev", "eth0"},
		{"-n", n.netns, "link", "set", "eth0", "up"},
		{"-n", n.netns, "link", "set", "lo", "up"},
	} {
		if err := ipCmd(args...); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(n.state, 0o700); err != nil {
		return nil, err
	}
	var err error
	if n.routes, err = watchRoutes(n.nsPath); err != nil {
		return nil, err
	}
	c.atExit(n.routes.stop)
	return n, nil
}

// startAgent runs the node's agent with the defaults a real node would
// have (lease TTL, resync, request timeout) and waits for its socket.
func (c *cluster) startAgent(ctx context.Context, n *clusterNode) error {
	var err error
	n.agent, err = startAgent(n.nsPath, filepath.Join(c.dir, n.name+".log"), filepath.Join(c.dir, n.name+".rss"), c.agentBin,
		"--store", c.store, "--store-prefix", c.prefix, "--node", n.name, "--state", n.state, "--advertise-addr", n.addr)
	if err != nil {
		return fmt.Errorf("%s: %w", n.name, err)
	}
	c.atExit(func() { n.agent.stop(5 * time.Second) })
	sock := filepath.Join(n.state, agentapi.SocketName)
	for deadline := time.Now().Add(startBound); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	return fmt.Errorf("%s: circuit-agent serves no socket after %s: %s", n.name, startBound, tailFile(n.agent.logPath, 10))
}

// run runs the circuit binary in the node's namespace with exactly args;
// started, if not nil, is set right before the process starts.
func (c *cluster) run(ctx context.Context, n *clusterNode, started *time.Time, env []string, stdin []byte, args ...string) (result, error) {
	var res result
	err := inNetns(n.nsPath, func() error {
		if started != nil {
			*started = time.Now()
		}
		var err error
		res, err = execTimed(ctx, env, stdin, c.b.cfg.circuit, args...)
		return err
	})
	if err != nil {
		return res, fmt.Errorf("%s: %w", n.name, err)
	}
	return res, nil
}

// nodeArgs puts the node's state dir and the plugins before args.
func (c *cluster) nodeArgs(n *clusterNode, args ...string) []string {
	return append([]string{"--state", n.state, "--cni-path", c.b.cfg.cniPath}, args...)
}

// circuit runs a circuit command on the node.
func (c *cluster) circuit(ctx context.Context, n *clusterNode, args ...string) (result, error) {
	return c.run(ctx, n, nil, nil, nil, c.nodeArgs(n, args...)...)
}

// clusterConf is the cluster network's shape: the README's bridge without
// the plugin's masquerade (circuit turns it off on cluster networks
// anyway), with the ips capability so that a convergence round knows the
// address its container will get; mtu 0 leaves the plugin's default.
func clusterConf(name, bridge string, ipam map[string]any, mtu int) []byte {
	plugin := map[string]any{
		"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
		"capabilities": map[string]bool{"ips": true},
		"ipam":         ipam,
	}
	if mtu > 0 {
		plugin["mtu"] = mtu
	}
	raw, _ := json.Marshal(map[string]any{"cniVersion": "1.0.0", "name": name, "plugins": []any{plugin}})
	return raw
}

// createNetwork makes the cluster network on n (its agent must be in the
// cluster: the create is retried until etcd answers it) and waits until n
// holds a block and knows the overlay's MTU.
func (c *cluster) createNetwork(ctx context.Context, n *clusterNode) error {
	file := filepath.Join(c.dir, clusterNet+".conflist")
	conf := clusterConf(clusterNet, "ckb"+c.b.tag, map[string]any{"type": "host-local", "ranges": [][]map[string]string{{{"subnet": clusterRange}}}}, 0)
	if err := os.WriteFile(file, conf, 0o600); err != nil {
		return err
	}
	var err error
	for deadline := time.Now().Add(startBound); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if _, err = c.circuit(ctx, n, "network", "create", "--overlay", "vxlan", file); err == nil {
			break
		}
		if !strings.Contains(err.Error(), "unavailable") {
			return err
		}
	}
	if err != nil {
		return fmt.Errorf("%w\nagent: %s", err, tailFile(n.agent.logPath, 10))
	}
	for deadline := time.Now().Add(startBound); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		net, err := c.inspect(ctx, n, clusterNet)
		if err != nil {
			return err
		}
		if net.Cluster != nil && len(net.Cluster.Blocks) > 0 && net.Cluster.MTU > 0 {
			c.device = overlay.DeviceName(net.Cluster.VNI)
			n.block, err = netip.ParsePrefix(net.Cluster.Blocks[0])
			return err
		}
	}
	return fmt.Errorf("%s holds no block of %s after %s: %s", n.name, clusterNet, startBound, tailFile(n.agent.logPath, 10))
}

func (c *cluster) inspect(ctx context.Context, n *clusterNode, network string) (*api.Network, error) {
	out, err := c.circuit(ctx, n, "network", "inspect", network)
	if err != nil {
		return nil, err
	}
	var net api.Network
	if err := json.Unmarshal(out.out, &net); err != nil {
		return nil, fmt.Errorf("network inspect %s: %w", network, err)
	}
	return &net, nil
}

// sleeper starts a container (a sleeper), killed when the section closes.
func (c *cluster) sleeper() (*testutil.Sleeper, error) {
	s, err := c.b.sleeper()
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	first := len(c.sleepers) == 0
	c.sleepers = append(c.sleepers, s)
	c.mu.Unlock()
	if first {
		c.atExit(func() {
			c.mu.Lock()
			all := c.sleepers
			c.sleepers = nil
			c.mu.Unlock()
			for _, s := range all {
				c.b.kill(s)
			}
		})
	}
	return s, nil
}

func sleeperNetns(s *testutil.Sleeper) string { return "/proc/" + strconv.Itoa(s.PID) + "/ns/net" }

// connectResident connects the node's first container: its bridge exists
// from then on, so every round meets a node as it is in use.
func (c *cluster) connectResident(ctx context.Context, n *clusterNode) error {
	s, err := c.sleeper()
	if err != nil {
		return err
	}
	if _, err := c.circuit(ctx, n, "network", "connect", strconv.Itoa(s.PID), clusterNet); err != nil {
		return err
	}
	n.resident = s
	n.peers++
	return nil
}

// addrOf is the IPv4 address a container of n got on the cluster network.
func (c *cluster) addrOf(ctx context.Context, n *clusterNode, s *testutil.Sleeper) (string, error) {
	net, err := c.inspect(ctx, n, clusterNet)
	if err != nil {
		return "", err
	}
	for _, p := range net.Peers {
		if p.PID != s.PID || (p.Node != "" && p.Node != n.name) {
			continue
		}
		for _, ip := range p.IPs {
			if pre, err := netip.ParsePrefix(ip); err == nil && pre.Addr().Is4() {
				return pre.Addr().String(), nil
			}
		}
	}
	return "", fmt.Errorf("%s: no IPv4 address recorded for container %d", n.name, s.PID)
}

// agentsCPU is the CPU time each running agent has used so far, by node.
func (c *cluster) agentsCPU() map[int]time.Duration {
	out := map[int]time.Duration{}
	for _, n := range c.nodes {
		if n.agent != nil {
			if t, err := cpuTime(n.agent.pid); err == nil {
				out[n.index] = t
			}
		}
	}
	return out
}

// cpuSince is the CPU the agents used since before (an agent started since
// counts from zero).
func (c *cluster) cpuSince(before map[int]time.Duration) time.Duration {
	var sum time.Duration
	for i, t := range c.agentsCPU() {
		sum += t - before[i]
	}
	return sum
}

// grow adds nodes until there are size, timing each join: from the start
// of its agent until every other node routes its block (and until it
// routes every other node's). Each new node then gets its resident
// container.
func (c *cluster) grow(ctx context.Context, size int, sr *clusterSize) error {
	first := len(c.nodes)
	for len(c.nodes) < size {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := c.join(ctx, sr); err != nil {
			return err
		}
	}
	for _, n := range c.nodes[first:] {
		if err := c.connectResident(ctx, n); err != nil {
			return err
		}
	}
	return nil
}

func (c *cluster) join(ctx context.Context, sr *clusterSize) error {
	n, err := c.newNode()
	if err != nil {
		return err
	}
	h, err := handleAt(n.nsPath)
	if err != nil {
		return err
	}
	defer h.Close()
	others := slices.Clone(c.nodes)
	before := c.agentsCPU()
	t0 := time.Now()
	if err := c.startAgent(ctx, n); err != nil {
		return err
	}
	c.nodes = append(c.nodes, n)
	deadline := t0.Add(joinBound)
	for {
		var ok bool
		if n.block, ok = overlayBlock(h, c.device, api.DefaultBlockSize); ok {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s holds no block of %s after %s: %s", n.name, clusterNet, joinBound, tailFile(n.agent.logPath, 10))
		}
		if err := sleepCtx(ctx, 5*time.Millisecond); err != nil {
			return err
		}
	}
	// The route events carry their own times; this loop only notices.
	var routed, routes time.Time
	for routed.IsZero() || routes.IsZero() {
		if time.Now().After(deadline) {
			sr.joinsLost++
			logf("cluster: %s: not every node routes its block after %s", n.name, joinBound)
			return nil
		}
		if routed.IsZero() {
			routed = lastSeen(others, func(o *clusterNode) (time.Time, bool, error) { return o.routes.firstSeen(n.block) })
		}
		if routes.IsZero() {
			routes = lastSeen(others, func(o *clusterNode) (time.Time, bool, error) { return n.routes.firstSeen(o.block) })
		}
		if err := sleepCtx(ctx, 2*time.Millisecond); err != nil {
			return err
		}
	}
	if err := sleepCtx(ctx, joinSettle); err != nil {
		return err
	}
	sr.joins = append(sr.joins, ms(routed.Sub(t0)))
	sr.joinerRoutes = append(sr.joinerRoutes, ms(routes.Sub(t0)))
	sr.joinCPU = append(sr.joinCPU, ms(c.cpuSince(before)))
	return nil
}

// lastSeen is the latest of seen over nodes, or zero while one has not
// seen it.
func lastSeen(nodes []*clusterNode, seen func(*clusterNode) (time.Time, bool, error)) time.Time {
	var last time.Time
	for _, o := range nodes {
		t, ok, _ := seen(o)
		if !ok {
			return time.Time{}
		}
		if t.After(last) {
			last = t
		}
	}
	return last
}

func handleAt(nsPath string) (*netlink.Handle, error) {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	return netlink.NewHandleAt(ns)
}

// convergence times, round by round, `network connect` of a container on
// one node to the first packet from another: once the connect has
// returned (when runc would start the container's process), the container
// pings node 0's resident container every probeInterval, and the time is
// that of the first echo reply. The node connecting rotates over the
// others.
//
// Pings sent from before the connect starts would time the kernel's ARP
// retries instead: the bridge plugin gives the container its address
// before the host's end of the veth is up, so the container's first ARP
// for its gateway may be lost and is sent again a second later; the other
// way round, node 0 pinging the address before it exists leaves an
// unresolved neighbour entry on the connecting node's bridge, also
// retried once a second (the plugin sends no gratuitous ARP).
func (c *cluster) convergence(ctx context.Context, sr *clusterSize) error {
	before := c.agentsCPU()
	for i := range c.b.cfg.rounds {
		if err := ctx.Err(); err != nil {
			return err
		}
		target := c.nodes[1+i%(len(c.nodes)-1)]
		conn, first, ok, err := c.firstPacket(ctx, target, uint16(sr.nodes)<<8|uint16(i&0xff))
		if err != nil {
			return err
		}
		sr.connect = append(sr.connect, conn)
		if !ok {
			sr.lost++
			continue
		}
		sr.firstPacket = append(sr.firstPacket, first)
		sr.afterConnect = append(sr.afterConnect, first-conn)
	}
	sr.roundCPU = ms(c.cpuSince(before)) / float64(c.b.cfg.rounds)
	return nil
}

func (c *cluster) firstPacket(ctx context.Context, target *clusterNode, id uint16) (connectMS, firstMS float64, ok bool, err error) {
	s, err := c.sleeper()
	if err != nil {
		return 0, 0, false, err
	}
	defer c.b.kill(s)
	pinger, err := openPinger(sleeperNetns(s))
	if err != nil {
		return 0, 0, false, err
	}
	defer pinger.close()
	pid := strconv.Itoa(s.PID)
	var t0 time.Time
	res, err := c.run(ctx, target, &t0, nil, nil, c.nodeArgs(target, "network", "connect", pid, clusterNet)...)
	if err != nil {
		return 0, 0, false, err
	}
	pr := pinger.start(c.echoAddr, id, probeInterval)
	defer pr.stop()
	select {
	case at := <-pr.first:
		firstMS, ok = ms(at.Sub(t0)), true
	case <-time.After(firstPacketBound):
		logf("cluster: no echo reply from node 0 to a container on %s within %s of its connect", target.name, firstPacketBound)
	case <-ctx.Done():
		return 0, 0, false, ctx.Err()
	}
	if _, err := c.circuit(ctx, target, "network", "disconnect", pid, clusterNet); err != nil {
		return 0, 0, false, err
	}
	return ms(res.took), firstMS, ok, nil
}

// throughput measures TCP from one container to another: on one node's
// bridge (the same-host baseline), across nodes through the overlay, and,
// for what the underlay alone carries, from node to node without it.
func (c *cluster) throughput(ctx context.Context) (*throughputResult, error) {
	n0, n1 := c.nodes[0], c.nodes[1]
	server := n0.resident
	neighbour, err := c.sleeper() // a second container on node 0's bridge
	if err != nil {
		return nil, err
	}
	if _, err := c.circuit(ctx, n0, "network", "connect", strconv.Itoa(neighbour.PID), clusterNet); err != nil {
		return nil, err
	}
	n0.peers++
	serverAddr, err := c.addrOf(ctx, n0, server)
	if err != nil {
		return nil, err
	}
	inContainer, err := startIperfServer(ctx, sleeperNetns(server), serverAddr)
	if err != nil {
		return nil, err
	}
	defer inContainer.stop()
	onNode, err := startIperfServer(ctx, n0.nsPath, n0.addr)
	if err != nil {
		return nil, err
	}
	defer onNode.stop()
	res := &throughputResult{seconds: 2, omit: 1}
	reps := 3
	if c.b.cfg.smoke {
		res.seconds, res.omit, reps = 1, 0, 1
	}
	for range reps {
		for _, path := range []struct {
			from string
			to   *iperfServer
			into *sample
		}{
			{sleeperNetns(neighbour), inContainer, &res.sameBridge},
			{sleeperNetns(n1.resident), inContainer, &res.overlay},
			{n1.nsPath, onNode, &res.underlay},
		} {
			mbps, err := iperfFrom(ctx, path.from, path.to, res.seconds, res.omit)
			if err != nil {
				return nil, err
			}
			*path.into = append(*path.into, mbps)
		}
	}
	logf("cluster: TCP: same bridge %s, overlay %s, underlay %s Mbit/s", f(res.sameBridge.median()), f(res.overlay.median()), f(res.underlay.median()))
	return res, nil
}

// connectVsLocal times connect, disconnect and both hooks on the cluster
// network against a local network of the same shape on one node: the
// cluster network's configuration as circuit runs it for a connect (its
// MTU, no masquerade, a route to a wider range) on a bridge and subnet of
// its own. Rounds are paired and alternate which goes first, after two
// warm-up rounds.
func (c *cluster) connectVsLocal(ctx context.Context) (*clusterPaired, error) {
	n := c.nodes[1]
	cl, err := c.inspect(ctx, n, clusterNet)
	if err != nil {
		return nil, err
	}
	conf := clusterConf(localNet, "ckl"+c.b.tag, map[string]any{
		"type": "host-local", "ranges": [][]map[string]string{{{"subnet": localSubnet}}},
		"routes": []map[string]string{{"dst": localRoute}}, "dataDir": filepath.Join(n.state, "local-ipam"),
	}, cl.Cluster.MTU)
	file := filepath.Join(c.dir, localNet+".conflist")
	if err := os.WriteFile(file, conf, 0o600); err != nil {
		return nil, err
	}
	if _, err := c.circuit(ctx, n, "network", "create", file); err != nil {
		return nil, err
	}
	// A resident container, as the cluster network has on every node: a
	// bridge left without ports loses its carrier, and the next connect
	// waits for it to come back (the bridge plugin waits for its veth to
	// be up), which would be the local network's cost alone.
	resident, err := c.sleeper()
	if err != nil {
		return nil, err
	}
	if _, err := c.circuit(ctx, n, "network", "connect", strconv.Itoa(resident.PID), localNet); err != nil {
		return nil, err
	}
	res := &clusterPaired{rounds: c.b.cfg.rounds, nodes: len(c.nodes)}
	// Each step runs one process and keeps its result.
	cli := func(args ...string) func() (result, error) {
		return func() (result, error) { return c.circuit(ctx, n, args...) }
	}
	hook := func(network, id, status string, pid int) func() (result, error) {
		st := map[string]any{"ociVersion": "1.0.2", "id": id, "status": status, "bundle": c.dir}
		if pid > 0 {
			st["pid"] = pid
		}
		raw, _ := json.Marshal(st)
		env := []string{"CIRCUIT_NETWORK=" + network, "CIRCUIT_STATE=" + n.state, "CNI_PATH=" + c.b.cfg.cniPath,
			"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
		// As runc runs a hook: no arguments, the state on stdin.
		return func() (result, error) { return c.run(ctx, n, nil, env, raw) }
	}
	into := func(dst *result, run func() (result, error)) func() error {
		return func() error {
			var err error
			*dst, err = run()
			return err
		}
	}
	warmup := 2
	if c.b.cfg.smoke {
		warmup = 1
	}
	res.warmup = warmup
	for i := range warmup + c.b.cfg.rounds {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		sc, err := c.sleeper()
		if err != nil {
			return nil, err
		}
		sl, err := c.sleeper()
		if err != nil {
			return nil, err
		}
		pc, pl := strconv.Itoa(sc.PID), strconv.Itoa(sl.PID)
		idc, idl := fmt.Sprintf("bench-%s-hc-%d", c.b.tag, i), fmt.Sprintf("bench-%s-hl-%d", c.b.tag, i)
		var conn, connL, disc, discL, hs, hsL, hp, hpL result
		// One network's four steps, then the other's (the order
		// alternating between rounds), each step once the node's agent
		// is idle: after a cluster operation the agent publishes and
		// reads the datastore for a while, and a step run meanwhile
		// would wait on the datastore's lock for it, whichever network
		// it is on.
		steps := func(steps ...func() error) func() error {
			return func() error {
				for _, step := range steps {
					if err := c.agentIdle(ctx, n); err != nil {
						return err
					}
					if err := step(); err != nil {
						return err
					}
				}
				return nil
			}
		}
		onCluster := steps(into(&conn, cli("network", "connect", pc, clusterNet)), into(&disc, cli("network", "disconnect", pc, clusterNet)),
			into(&hs, hook(clusterNet, idc, "creating", sc.PID)), into(&hp, hook(clusterNet, idc, "stopped", 0)))
		onLocal := steps(into(&connL, cli("network", "connect", pl, localNet)), into(&discL, cli("network", "disconnect", pl, localNet)),
			into(&hsL, hook(localNet, idl, "creating", sl.PID)), into(&hpL, hook(localNet, idl, "stopped", 0)))
		for _, block := range order(i%2 == 0, onCluster, onLocal) {
			if err := block(); err != nil {
				return nil, err
			}
		}
		c.b.kill(sc)
		c.b.kill(sl)
		if i < warmup {
			continue
		}
		res.connect = append(res.connect, ms(conn.took))
		res.connectLocal = append(res.connectLocal, ms(connL.took))
		res.disconnect = append(res.disconnect, ms(disc.took))
		res.discLocal = append(res.discLocal, ms(discL.took))
		res.hookStart = append(res.hookStart, ms(hs.took))
		res.hookStartLocal = append(res.hookStartLocal, ms(hsL.took))
		res.hookStop = append(res.hookStop, ms(hp.took))
		res.hookStopLocal = append(res.hookStopLocal, ms(hpL.took))
	}
	logf("cluster: connect on the cluster network vs a local one: x%s", f2(paired(res.connect, res.connectLocal, ratio).median()))
	return res, nil
}

// resources fills every node up to peers containers, lets the cluster
// rest, and measures the agents' CPU over a resync period and their
// memory: VmRSS before and after the fill, then the peak at exit.
func (c *cluster) resources(ctx context.Context, peers int) (*clusterResources, error) {
	res := &clusterResources{nodes: len(c.nodes), peersPerNode: peers, settle: 3 * time.Second, steady: agentResync}
	if c.b.cfg.smoke {
		res.settle, res.steady = 500*time.Millisecond, 2*time.Second
	}
	for _, n := range c.nodes {
		if v, err := statusKiB(n.agent.pid, "VmRSS"); err == nil {
			res.rssJoined = append(res.rssJoined, float64(v))
		}
	}
	// fillGroup nodes at a time (their connects in turn), 8 connects at a
	// time, while every other agent is paused (see pausedExcept). With
	// every agent running, each connect costs every agent an overlay pass
	// (at 32 nodes x 50 containers the fill took 9 minutes of this
	// machine's 2 CPUs, most of it theirs); what an agent does per connect
	// is measured in the convergence rounds. What is measured here is the
	// state once filled. (Four nodes at a time was no faster than one:
	// their agents hear each other's connects.)
	t0 := time.Now()
	var done int
	for first := 0; first < len(c.nodes); first += fillGroup {
		group := c.nodes[first:min(first+fillGroup, len(c.nodes))]
		var jobs []*clusterNode
		for k := 0; k < peers; k++ {
			for _, n := range group {
				if n.peers+k < peers {
					jobs = append(jobs, n)
				}
			}
		}
		fill := make([]error, len(jobs))
		c.pausedExcept(group, func() {
			parallel(clusterOpts.fill, len(jobs), func(i int) {
				if fill[i] = ctx.Err(); fill[i] != nil {
					return
				}
				s, err := c.sleeper()
				if err == nil {
					_, err = c.circuit(ctx, jobs[i], "network", "connect", strconv.Itoa(s.PID), clusterNet)
				}
				fill[i] = err
			})
		})
		if err := firstErr(fill...); err != nil {
			return nil, err
		}
		done += len(jobs)
		for _, n := range group {
			n.peers = peers
		}
		if last := first + len(group); last%8 == 0 || last == len(c.nodes) {
			logf("cluster: %d nodes filled (%d containers) in %s", last, done, time.Since(t0).Round(time.Second))
		}
	}
	res.fill = time.Since(t0)
	res.filled, res.fillWidth = done, clusterOpts.fill
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(res.settle):
	}
	before, etcdBefore := c.agentsCPU(), cpuOrZero(c.etcd.pid())
	start := time.Now()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(res.steady):
	}
	after, etcdAfter := c.agentsCPU(), cpuOrZero(c.etcd.pid())
	elapsed := time.Since(start)
	for i, t := range after {
		res.agentCPU = append(res.agentCPU, 100*float64(t-before[i])/float64(elapsed))
	}
	res.etcdCPU = 100 * float64(etcdAfter-etcdBefore) / float64(elapsed)
	for _, n := range c.nodes {
		if v, err := statusKiB(n.agent.pid, "VmRSS"); err == nil {
			res.rssFilled = append(res.rssFilled, float64(v))
		}
		if v, err := statusKiB(n.agent.pid, "VmHWM"); err == nil {
			res.hwm = append(res.hwm, float64(v))
		}
	}
	parallel(len(c.nodes), len(c.nodes), func(i int) { c.nodes[i].agent.stop(10 * time.Second) })
	for _, n := range c.nodes {
		v, err := n.agent.peakRSS()
		if err != nil { // GNU time killed after the grace: reported as missing
			logf("cluster: %s: no peak RSS: %v", n.name, err)
			continue
		}
		res.peakRSS = append(res.peakRSS, float64(v))
	}
	logf("cluster: %d nodes x %d containers: agents at rest %s%% of a core each (median), peak RSS %s (median)",
		res.nodes, peers, f2(res.agentCPU.median()), kib(int64(res.peakRSS.median())))
	return res, nil
}

// pausedExcept runs fn with every agent but active's stopped (SIGSTOP), in
// spells of at most pauseFor with resumeFor between them, so that none
// misses its lease (a TTL of 10s, kept alive every third of it) nor its
// node record's refresh for long. Once continued, an agent reads what
// changed meanwhile from its watch, as it would after any pause.
func (c *cluster) pausedExcept(active []*clusterNode, fn func()) {
	var others []*agentProc
	for _, o := range c.nodes {
		if !slices.Contains(active, o) && o.agent != nil {
			others = append(others, o.agent)
		}
	}
	signal := func(sig syscall.Signal) {
		for _, a := range others {
			a.signal(sig)
		}
	}
	done := make(chan struct{})
	paused := make(chan struct{})
	go func() {
		defer close(paused)
		for {
			signal(syscall.SIGSTOP)
			select {
			case <-done:
				signal(syscall.SIGCONT)
				return
			case <-time.After(pauseFor):
			}
			signal(syscall.SIGCONT)
			select {
			case <-done:
				return
			case <-time.After(resumeFor):
			}
		}
	}()
	defer func() {
		close(done)
		<-paused
	}()
	fn()
}

// agentIdle waits until n's agent has used no CPU for idleFor (at most
// idleBound).
func (c *cluster) agentIdle(ctx context.Context, n *clusterNode) error {
	last, _ := cpuTime(n.agent.pid)
	still := time.Duration(0)
	for deadline := time.Now().Add(idleBound); still < idleFor && time.Now().Before(deadline); {
		if err := sleepCtx(ctx, idlePoll); err != nil {
			return err
		}
		now, _ := cpuTime(n.agent.pid)
		if now == last {
			still += idlePoll
		} else {
			last, still = now, 0
		}
	}
	return nil
}

// sleepCtx sleeps for d, or less if ctx ends (its error then).
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// cpuOrZero is cpuTime for a process that is known to run.
func cpuOrZero(pid int) time.Duration {
	t, _ := cpuTime(pid)
	return t
}

// ipCmd runs ip; the benchmark may shell out, circuit may not.
func ipCmd(args ...string) error {
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
