package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/circuit-cni/circuit/agentapi"
	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
)

// One etcd server serves the package's tests; each test keeps its keys
// under its own prefix, and its agents their state in their own dirs, so
// tests run in parallel. Agents talk to each other only through etcd.
var (
	endpoint string           // "" in the VM tier
	admin    *clientv3.Client // reads and writes behind the agents' backs
	prefixes atomic.Int64
)

// backstop bounds every wait for an event: generous, since a loaded
// machine is slow; a test that passes never waits for it.
const backstop = 20 * time.Second

func TestMain(m *testing.M) {
	// The VM tier runs the kernel tests; this package needs no kernel.
	if os.Getenv("CIRCUIT_TEST_VM") != "" {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "circuit-agent-etcd-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	e, err := startEtcd(dir, "0", "0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "start embedded etcd:", err)
		os.Exit(1)
	}
	endpoint = "http://" + e.Clients[0].Addr().String()
	admin, err = clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, Logger: zap.NewNop()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	admin.Close()
	e.Close()
	os.RemoveAll(dir)
	os.Exit(code)
}

// startEtcd starts a one-member etcd on 127.0.0.1 with its data in dir, on
// the given ports ("0": the kernel picks; never 2379/2380, which a real
// etcd may hold), and waits until it is ready.
func startEtcd(dir, clientPort, peerPort string) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name = "agenttest"
	cfg.Dir = dir
	client := url.URL{Scheme: "http", Host: "127.0.0.1:" + clientPort}
	peer := url.URL{Scheme: "http", Host: "127.0.0.1:" + peerPort}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = cfg.Name + "=" + peer.String()
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	// Test data outlives nothing: no fsyncs, and a quick election.
	cfg.UnsafeNoFsync = true
	cfg.TickMs, cfg.ElectionMs = 10, 100
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, err
	case <-time.After(backstop):
		e.Close()
		return nil, errors.New("etcd not ready")
	}
}

// needEtcd skips in the VM tier, which runs the kernel tests: this
// package needs no kernel, and the unit tier runs all of it.
func needEtcd(t *testing.T) {
	t.Helper()
	if endpoint == "" {
		t.Skip("the unit tier runs this package")
	}
}

// newPrefix is a key prefix no other test uses.
func newPrefix() string { return fmt.Sprintf("/agent-test/%d", prefixes.Add(1)) }

// logBuffer collects an agent's log for the test to read.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// testAgent is one node's agent, run in-process.
type testAgent struct {
	*Agent
	t      *testing.T
	api    *agentapi.Client
	logs   *logBuffer
	cancel context.CancelFunc
	done   chan error
}

// startAgent runs an agent for node under prefix with short bounds: a 2s
// lease, 2s per etcd request (a loaded machine with the race detector
// needs more than 1s now and then). cfg, if given, changes its Config
// first.
func startAgent(t *testing.T, prefix, node, state string, cfg ...func(*Config)) *testAgent {
	t.Helper()
	ta := newAgent(t, prefix, node, state, cfg...)
	ta.start()
	waitFor(t, node+" in the cluster", func() bool { return ta.live.Load() })
	return ta
}

func newAgent(t *testing.T, prefix, node, state string, cfg ...func(*Config)) *testAgent {
	t.Helper()
	if state == "" {
		state = t.TempDir()
	}
	logs := &logBuffer{}
	log := logrus.New()
	log.SetOutput(logs)
	log.SetLevel(logrus.DebugLevel)
	c := Config{
		Endpoints: []string{endpoint}, Prefix: prefix, Node: node, StateDir: state, AdvertiseAddr: "127.0.0.1",
		LeaseTTL: 2 * time.Second, RequestTimeout: 2 * time.Second, Resync: 30 * time.Second, Log: log,
		Dataplane: newFakeDataplane(), // never the test process's own kernel
	}
	for _, f := range cfg {
		f(&c)
	}
	a, err := New(c)
	if err != nil {
		t.Fatalf("New(%s): %v", node, err)
	}
	return &testAgent{Agent: a, t: t, api: agentapi.NewClient(state, 0), logs: logs}
}

func (ta *testAgent) start() {
	ctx, cancel := context.WithCancel(context.Background())
	ta.cancel, ta.done = cancel, make(chan error, 1)
	go func() { ta.done <- ta.Run(ctx) }()
	ta.t.Cleanup(ta.stop)
	waitFor(ta.t, ta.cfg.Node+"'s socket", func() bool {
		_, err := os.Stat(ta.cfg.StateDir + "/" + agentapi.SocketName)
		return err == nil
	})
}

// stop ends the agent as SIGTERM does; a second stop does nothing.
func (ta *testAgent) stop() {
	if ta.cancel == nil {
		return
	}
	ta.cancel()
	select {
	case err := <-ta.done:
		if err != nil {
			ta.t.Errorf("agent %s: Run: %v", ta.cfg.Node, err)
		}
	case <-time.After(backstop):
		ta.t.Errorf("agent %s did not stop", ta.cfg.Node)
	}
	ta.cancel = nil
}

// waitFor polls cond until it holds; the backstop only catches a hang.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(backstop)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", backstop, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// createNetwork asks the agent for a cluster network.
func (ta *testAgent) createNetwork(conf string, force bool, blockSizes ...int) (*api.Network, error) {
	req := agentapi.CreateNetwork{Config: []byte(conf), Overlay: api.OverlayVXLAN, Force: force}
	if len(blockSizes) > 0 {
		req.BlockSize = blockSizes[0]
	}
	if len(blockSizes) > 1 {
		req.BlockSize6 = blockSizes[1]
	}
	var n api.Network
	err := ta.api.Do(context.Background(), "POST", agentapi.PathNetworks, req, &n)
	return &n, err
}

func (ta *testAgent) mustCreate(conf string, blockSizes ...int) *api.Network {
	ta.t.Helper()
	n, err := ta.createNetwork(conf, false, blockSizes...)
	if err != nil {
		ta.t.Fatalf("%s: create network: %v", ta.cfg.Node, err)
	}
	return n
}

func (ta *testAgent) nodes() []api.Node {
	ta.t.Helper()
	var out agentapi.Nodes
	if err := ta.api.Do(context.Background(), "GET", agentapi.PathNodes, nil, &out); err != nil {
		ta.t.Fatalf("%s: nodes: %v", ta.cfg.Node, err)
	}
	return out.Nodes
}

func (ta *testAgent) node(name string) *api.Node {
	ta.t.Helper()
	for _, n := range ta.nodes() {
		if n.Name == name {
			return &n
		}
	}
	return nil
}

// replica reads a network from the agent's node datastore; nil if absent.
func (ta *testAgent) replica(name string) *api.Network {
	ta.t.Helper()
	var n *api.Network
	err := ta.local.View(context.Background(), func(tx ds.Tx) (err error) {
		n, err = tx.GetNetwork(name)
		return err
	})
	if errors.Is(err, api.ErrNotFound) {
		return nil
	}
	if err != nil {
		ta.t.Fatalf("%s: replica of %s: %v", ta.cfg.Node, name, err)
	}
	return n
}

// replicaBlocks is the blocks of a network's replica; nil if absent.
func (ta *testAgent) replicaBlocks(name string) []string {
	n := ta.replica(name)
	if n == nil || n.Cluster == nil {
		return nil
	}
	return n.Cluster.Blocks
}

func (ta *testAgent) update(fn func(ds.Tx) error) {
	ta.t.Helper()
	if err := ta.local.Update(context.Background(), fn); err != nil {
		ta.t.Fatalf("%s: local update: %v", ta.cfg.Node, err)
	}
}

func (ta *testAgent) logged(s string) bool { return strings.Contains(ta.logs.String(), s) }

// conf is a bridge network with host-local IPAM over ranges.
func conf(name string, ranges ...string) string {
	var sets []string
	for _, r := range ranges {
		sets = append(sets, fmt.Sprintf(`[{"subnet":%q}]`, r))
	}
	return fmt.Sprintf(`{"cniVersion":"1.0.0","name":%q,"plugins":[{"type":"bridge","bridge":"br-%s","ipam":{"type":"host-local","ranges":[%s]}}]}`,
		name, name, strings.Join(sets, ","))
}

// holder is who etcd says holds a block of network; "" if no one.
func holder(t *testing.T, prefix, network, block string) string {
	t.Helper()
	resp, err := admin.Get(context.Background(), prefix+"/blocks/"+network+"/"+strings.Replace(block, "/", "_", 1))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return ""
	}
	var v blockValue
	if err := json.Unmarshal(resp.Kvs[0].Value, &v); err != nil {
		t.Fatal(err)
	}
	return v.Node
}

// count is how many keys are under dir.
func count(t *testing.T, dir string) int64 {
	t.Helper()
	resp, err := admin.Get(context.Background(), dir, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Count
}

// rawJSON embeds s in a request as JSON, not as a string.
type rawJSON string

func (r rawJSON) MarshalJSON() ([]byte, error) { return []byte(r), nil }
