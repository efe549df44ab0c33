package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/pkg/testutil"
)

// A cluster on one machine: each node is a network namespace on an
// underlay bridge (10.251.0.0/24, the host at .1), with its own state dir,
// node name and circuit-agent; circuit runs in the node's namespace
// (nsenter --net, so its pins are in the host's mount namespace). etcd is
// Debian's etcd-server, a real process listening on the underlay, on ports
// other than 2379/2380: one for the package, started by the first test
// that needs it, and each test under a key prefix of its own.

const (
	underlayBridge = "cund0"
	underlayHost   = "10.251.0.1"
	metricsPort    = "9464" // each agent's, on its node's address
)

var (
	clusterMu   sync.Mutex
	underlayUp  bool
	sharedEtcd  *etcdProc
	nextNodeIP  = 10
	clusterDone []func() // package teardown, in reverse order
)

func TestMain(m *testing.M) {
	code := m.Run()
	clusterMu.Lock()
	for i := len(clusterDone) - 1; i >= 0; i-- {
		clusterDone[i]()
	}
	clusterMu.Unlock()
	os.Exit(code)
}

// needCluster skips where a cluster cannot run: the VM tier (nothing of
// it needs that kernel) and a machine without Debian's etcd.
func needCluster(t *testing.T) {
	t.Helper()
	testutil.RequireRoot(t)
	if testutil.InVM() {
		t.Skip("needs no kernel the host lacks")
	}
	if _, err := exec.LookPath("etcd"); err != nil {
		t.Fatal("no etcd binary: make deps installs Debian's etcd-server")
	}
}

// setupUnderlay makes the bridge the nodes hang on, once; the caller holds
// clusterMu.
func setupUnderlay(t *testing.T) {
	if underlayUp {
		return
	}
	exec.Command("ip", "link", "del", underlayBridge).Run() // a crashed run's
	for _, args := range [][]string{
		{"link", "add", underlayBridge, "type", "bridge"},
		{"addr", "add", underlayHost + "/24", "dev", underlayBridge},
		{"link", "set", underlayBridge, "up"},
	} {
		testutil.Run(t, "ip", args...)
	}
	underlayUp = true
	clusterDone = append(clusterDone, func() { exec.Command("ip", "link", "del", underlayBridge).Run() })
}

// etcdProc is one etcd server process.
type etcdProc struct {
	cmd        *exec.Cmd
	dir        string
	clientPort int
	peerPort   int
	log        *bytes.Buffer
}

// URL is what circuit-agent's --store takes.
func (e *etcdProc) URL() string { return fmt.Sprintf("etcd://%s:%d", underlayHost, e.clientPort) }

// packageEtcd is the package's etcd, started once.
func packageEtcd(t *testing.T) *etcdProc {
	t.Helper()
	clusterMu.Lock()
	defer clusterMu.Unlock()
	setupUnderlay(t)
	if sharedEtcd == nil {
		dir, err := os.MkdirTemp("", "circuit-etcd")
		if err != nil {
			t.Fatal(err)
		}
		e := &etcdProc{dir: dir, clientPort: 23791, peerPort: 23801}
		if err := e.start(); err != nil {
			t.Fatal(err)
		}
		sharedEtcd = e
		clusterDone = append(clusterDone, func() { e.stop(); os.RemoveAll(dir) })
	}
	return sharedEtcd
}

// ownEtcd is an etcd for one test (one it stops and starts).
func ownEtcd(t *testing.T, clientPort, peerPort int) *etcdProc {
	t.Helper()
	clusterMu.Lock()
	setupUnderlay(t)
	clusterMu.Unlock()
	e := &etcdProc{dir: t.TempDir(), clientPort: clientPort, peerPort: peerPort}
	if err := e.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.stop)
	return e
}

func (e *etcdProc) start() error {
	client := fmt.Sprintf("http://%s:%d", underlayHost, e.clientPort)
	peer := fmt.Sprintf("http://127.0.0.1:%d", e.peerPort)
	e.log = &bytes.Buffer{}
	e.cmd = exec.Command("etcd", "--name", "test", "--data-dir", filepath.Join(e.dir, "data"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "test="+peer, "--log-outputs", "stderr")
	e.cmd.Stdout, e.cmd.Stderr = e.log, e.log
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := e.cmd.Start(); err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	// etcd answers /health once it has a leader: a second or so.
	for range 400 {
		if r, err := http.Get(client + "/health"); err == nil {
			r.Body.Close()
			if r.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(25 * time.Millisecond)
	}
	e.stop()
	return fmt.Errorf("etcd did not become healthy:\n%s", e.log)
}

// stop kills etcd, as a crash or a power cut would.
func (e *etcdProc) stop() {
	if e.cmd == nil || e.cmd.Process == nil {
		return
	}
	e.cmd.Process.Kill()
	e.cmd.Wait()
	e.cmd = nil
}

// cnode is one node of a test's cluster.
type cnode struct {
	t      *testing.T
	name   string
	netns  string // under /run/netns
	addr   string // on the underlay
	state  string
	plugin string // --cni-path
	agent  *exec.Cmd
	alog   *lockedBuffer
	store  string
	prefix string
}

// newNode makes a node's namespace and state dir; startAgent runs its agent.
func newNode(t *testing.T, name string) *cnode {
	t.Helper()
	clusterMu.Lock()
	setupUnderlay(t)
	ip := fmt.Sprintf("10.251.0.%d", nextNodeIP)
	nextNodeIP++
	if nextNodeIP > 250 {
		nextNodeIP = 10
	}
	clusterMu.Unlock()
	n := &cnode{t: t, name: name, netns: testutil.RandName("cn-"), addr: ip, state: t.TempDir(), plugin: testutil.CNIPath(t)}
	host := testutil.RandName("vu")
	testutil.Run(t, "ip", "netns", "add", n.netns)
	t.Cleanup(func() {
		n.stopAgent()
		pins, _ := filepath.Glob(filepath.Join(n.state, "netns", "*"))
		for _, p := range pins {
			syscall.Unmount(p, syscall.MNT_DETACH)
		}
		exec.Command("ip", "netns", "del", n.netns).Run()
		exec.Command("ip", "link", "del", host).Run()
	})
	for _, args := range [][]string{
		{"link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", n.netns},
		{"link", "set", host, "master", underlayBridge, "up"},
		{"-n", n.netns, "addr", "add", ip + "/24", "dev", "eth0"},
		{"-n", n.netns, "link", "set", "eth0", "up"},
		{"-n", n.netns, "link", "set", "lo", "up"},
	} {
		testutil.Run(t, "ip", args...)
	}
	return n
}

// startAgent runs the node's circuit-agent against store under prefix,
// with bounds short enough for tests.
func (n *cnode) startAgent(store, prefix string, extra ...string) {
	n.t.Helper()
	n.store, n.prefix = store, prefix
	args := append([]string{"--net=/run/netns/" + n.netns, testutil.AgentBin(n.t), "--store", store, "--store-prefix", prefix,
		"--node", n.name, "--state", n.state, "--advertise-addr", n.addr,
		"--lease-ttl", "3s", "--request-timeout", "2s", "--resync", "2s",
		"--metrics-addr", n.addr + ":" + metricsPort}, extra...)
	n.alog = &lockedBuffer{}
	n.agent = exec.Command("nsenter", args...)
	n.agent.Stdout, n.agent.Stderr = n.alog, n.alog
	n.agent.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := n.agent.Start(); err != nil {
		n.t.Fatal(err)
	}
	// Serving its socket is the agent's first step.
	eventually(n.t, "circuit-agent of "+n.name+" serves its socket", func() bool {
		_, err := os.Stat(filepath.Join(n.state, "agent.sock"))
		return err == nil
	})
}

// stopAgent ends the agent as systemd would (SIGTERM: it revokes its lease).
func (n *cnode) stopAgent() { n.signalAgent(syscall.SIGTERM) }

// killAgent kills the agent as a crash would: its lease runs out.
func (n *cnode) killAgent() { n.signalAgent(syscall.SIGKILL) }

func (n *cnode) signalAgent(sig syscall.Signal) {
	if n.agent == nil || n.agent.Process == nil {
		return
	}
	n.agent.Process.Signal(sig)
	n.agent.Wait()
	n.agent = nil
}

// run runs circuit in the node's namespace with its state dir.
func (n *cnode) run(stdin string, args ...string) (string, string, error) {
	full := append([]string{"--net=/run/netns/" + n.netns, testutil.CircuitBin(n.t), "--state", n.state, "--cni-path", n.plugin}, args...)
	cmd := exec.Command("nsenter", full...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

func (n *cnode) must(args ...string) string {
	n.t.Helper()
	out, stderr, err := n.run("", args...)
	if err != nil {
		n.t.Fatalf("%s: circuit %s: %v\n%s%s\nagent log:\n%s", n.name, strings.Join(args, " "), err, out, stderr, n.agentLog())
	}
	return out
}

// lockedBuffer is an agent's output: exec's copier writes it while the
// test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (n *cnode) agentLog() string {
	if n.alog == nil {
		return ""
	}
	return n.alog.String()
}

// nodes is the node list as n sees it, by name.
func (n *cnode) nodes() map[string]api.Node {
	n.t.Helper()
	out, _, err := n.run("", "node", "list", "--format", "json")
	if err != nil {
		return nil
	}
	var list []api.Node
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		n.t.Fatalf("node list: %v\n%s", err, out)
	}
	m := map[string]api.Node{}
	for _, x := range list {
		m[x.Name] = x
	}
	return m
}

// network is a network as n's replica has it (nil if it has none).
func (n *cnode) network(name string) *api.Network {
	out, _, err := n.run("", "network", "inspect", name)
	if err != nil {
		return nil
	}
	var net api.Network
	if err := json.Unmarshal([]byte(out), &net); err != nil {
		n.t.Fatalf("network inspect %s: %v\n%s", name, err, out)
	}
	return &net
}

// eventually polls cond until it holds; the agents react in milliseconds
// to a watch event, so the backstop only bounds a broken test.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// clusterConf is a bridge network whose host-local range is the cluster's.
func clusterConf(t *testing.T, name, bridge string, subnets ...string) string {
	t.Helper()
	var ranges []string
	for _, s := range subnets {
		ranges = append(ranges, fmt.Sprintf(`[{"subnet": %q}]`, s))
	}
	body := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %q, "plugins": [
  {"type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [%s]}}]}`, name, bridge, strings.Join(ranges, ", "))
	path := filepath.Join(t.TempDir(), name+".conflist")
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// testPrefix is a key prefix of the test's own in the shared etcd.
func testPrefix(t *testing.T) string {
	return "/circuit-test/" + strings.ReplaceAll(t.Name(), "/", "_") + "-" + testutil.RandName("")
}
