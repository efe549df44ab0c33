// Package fake is an in-memory controller.Controller for tests that must
// not need root: the CLI's unit tests drive it, and it passes the same
// contract suite (controller/contract) as the local controller.
//
// It judges input with circuit's own rules (package api, pkg/cni's
// configuration parser, pkg/lb's backend checks) and never with copies of
// them. What it simulates is the host: processes and runc containers that
// run or stop (Start, StartRunc, Stop), a kernel that holds QoS and
// load-balancer state until Flush (a reboot), whether it has netem and
// which load-balancing backends.
package fake

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/controller"
	"github.com/circuit-cni/circuit/pkg/cni"
	"github.com/circuit-cni/circuit/pkg/lb"
	"github.com/circuit-cni/circuit/pkg/qos"
)

// Fake is an in-memory Controller. Its methods are safe for concurrent use.
type Fake struct {
	mu sync.Mutex

	networks map[string]*network
	services map[string]*api.Service
	stats    map[string]*api.ServiceStatus // injected counters, by service
	active   map[string]map[string]uint64  // injected active connections, by service and target
	draining map[string]bool               // service/target drains a DrainTargets call waits on
	errs     map[string]error              // injected errors, by method name
	hooks    []api.HookRequest
	closes   int
	netSeq   int

	// The simulated host.
	procs    map[int]*process // by PID; an unknown positive PID is a live process
	runc     map[string]int   // runc ID -> PID
	nextPID  int
	netem    bool
	backends []string        // available, in the order "auto" tries them
	shaped   map[string]bool // peer keys whose QoS the kernel holds
	lbKernel map[string]bool // services the kernel holds
	cluster  *cluster        // the circuit-agent this node has, if any

	// Now stamps created objects; tests may replace it before use.
	Now func() time.Time
}

type network struct {
	net    api.Network // Peers is the network's peers
	subnet netip.Prefix
}

type process struct {
	start uint64
	runc  string
	dead  bool
}

var _ controller.Controller = (*Fake)(nil)

// Option configures New.
type Option func(*Fake)

// WithoutNetem simulates a kernel without netem (as this project's hosts).
func WithoutNetem() Option { return func(f *Fake) { f.netem = false } }

// WithBackends sets the load-balancing backends the kernel has, in the
// order "auto" tries them (default: ipvs, nftables).
func WithBackends(names ...string) Option {
	return func(f *Fake) { f.backends = slices.Clone(names) }
}

// cluster is a simulated circuit-agent and its cluster: nodes, each
// network's next free block.
type cluster struct {
	node  string
	nodes []api.Node
	next  map[string]int
}

// WithCluster simulates a circuit-agent on node, in a cluster of these
// nodes (node itself is added, ready). Without it, cluster commands fail
// as they do with no agent running.
func WithCluster(node string, others ...api.Node) Option {
	return func(f *Fake) {
		nodes := append([]api.Node{{Name: node, Address: "10.255.0.1", State: api.NodeReady, Blocks: []string{}}}, others...)
		f.cluster = &cluster{node: node, nodes: nodes, next: map[string]int{}}
	}
}

// New returns an empty Fake whose clock is fixed at 2016-10-12T18:45:27Z,
// on a kernel with netem and both load-balancing backends.
func New(opts ...Option) *Fake {
	f := &Fake{
		networks: map[string]*network{},
		services: map[string]*api.Service{},
		stats:    map[string]*api.ServiceStatus{},
		active:   map[string]map[string]uint64{},
		draining: map[string]bool{},
		errs:     map[string]error{},
		procs:    map[int]*process{},
		runc:     map[string]int{},
		nextPID:  30000,
		netem:    true,
		backends: []string{lb.IPVS, lb.Nftables},
		shaped:   map[string]bool{},
		lbKernel: map[string]bool{},
		Now:      func() time.Time { return time.Date(2016, 10, 12, 18, 45, 27, 0, time.UTC) },
	}
	for _, o := range opts {
		o(f)
	}
	return f
}

// Start starts a simulated process with a network namespace of its own
// and returns its PID; it is connected by PID as "pid-<PID>-<start>".
func (f *Fake) Start() int { return f.StartRunc("") }

// StartRunc starts a simulated runc container (id "" for a plain process)
// and returns its init PID.
func (f *Fake) StartRunc(id string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nextPID++
	pid := f.nextPID
	f.procs[pid] = &process{start: uint64(pid) * 7, runc: id}
	if id != "" {
		f.runc[id] = pid
	}
	return pid
}

// Stop ends a simulated process: its network namespace goes with it.
func (f *Fake) Stop(pid int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.proc(pid).dead = true
}

// Flush forgets all kernel state (QoS and load balancing), as a reboot
// does; records stay, for Restore to re-program.
func (f *Fake) Flush() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.shaped = map[string]bool{}
	f.lbKernel = map[string]bool{}
	f.active = map[string]map[string]uint64{}
}

// SetError makes every later call of method (e.g. "Connect") fail with err;
// a nil err clears it.
func (f *Fake) SetError(method string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		delete(f.errs, method)
		return
	}
	f.errs[method] = err
}

// SetServiceStats sets the counters ShowService reports for a service.
func (f *Fake) SetServiceStats(service string, stats api.Counters, targets map[string]api.Counters) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := &api.ServiceStatus{Stats: stats, Targets: map[string]api.Counters{}}
	for k, v := range targets {
		st.Targets[k] = v
	}
	f.stats[service] = st
}

// AddPeer records a peer as is (any state), as a crash would leave it.
func (f *Fake) AddPeer(p api.Peer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.network(p.Network)
	if err != nil {
		return err
	}
	n.net.Peers = append(n.net.Peers, clonePeer(p))
	return nil
}

// Hooks returns the requests Hook received, in order.
func (f *Fake) Hooks() []api.HookRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.hooks)
}

// Closes reports how often Close was called.
func (f *Fake) Closes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closes
}

func (f *Fake) injected(method string) error { return f.errs[method] }

// call runs one Controller method under the lock, failing with the error
// SetError injected for it, if any.
func call[T any](f *Fake, method string, fn func() (T, error)) (T, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.injected(method); err != nil {
		var zero T
		return zero, err
	}
	return fn()
}

// run is call for methods that return only an error.
func (f *Fake) run(method string, fn func() error) error {
	_, err := call(f, method, func() (struct{}, error) { return struct{}{}, fn() })
	return err
}

// proc returns a PID's process, a live one if the PID is new.
func (f *Fake) proc(pid int) *process {
	p, ok := f.procs[pid]
	if !ok {
		p = &process{start: uint64(pid) * 7}
		f.procs[pid] = p
	}
	return p
}

func (f *Fake) alive(pid int) bool { return pid > 0 && !f.proc(pid).dead }

// resolve finds a running container by PID or runc ID, as pkg/runc does.
func (f *Fake) resolve(arg string) (id string, pid int, err error) {
	if n, err := strconv.Atoi(arg); err == nil {
		if n <= 0 {
			return "", 0, api.Errorf(api.ErrInvalid, "pid %d is not a process id", n)
		}
		if !f.alive(n) {
			return "", 0, api.Errorf(api.ErrNotFound, "no process with pid %d", n)
		}
		p := f.proc(n)
		if p.runc != "" {
			return p.runc, n, nil
		}
		return fmt.Sprintf("pid-%d-%d", n, p.start), n, nil
	}
	if err := api.ValidContainerID(arg); err != nil {
		return "", 0, err
	}
	pid, ok := f.runc[arg]
	if !ok || !f.alive(pid) {
		return "", 0, api.Errorf(api.ErrNotFound, "no runc container %q is running", arg)
	}
	return arg, pid, nil
}

// --- networks ---------------------------------------------------------------

func (f *Fake) CreateNetwork(ctx context.Context, req api.CreateNetworkRequest) (*api.Network, error) {
	return call(f, "CreateNetwork", func() (*api.Network, error) {
		cfg, err := cni.Parse(req.Config)
		if err != nil {
			return nil, fmt.Errorf("create network: %w", err)
		}
		if req.Overlay != "" {
			n, err := f.createCluster(cfg, req)
			if err != nil {
				return nil, fmt.Errorf("create network %s: %w", cfg.Name, err)
			}
			out := cloneNetwork(n.net)
			return &out, nil
		}
		n, err := f.createNetwork(cfg, req.Force)
		if err != nil {
			return nil, err
		}
		out := cloneNetwork(n.net)
		return &out, nil
	})
}

func (f *Fake) createNetwork(cfg *cni.Config, force bool) (*network, error) {
	n := &network{net: api.Network{
		Name: cfg.Name, Type: cfg.Plugins[0], Plugins: cfg.Plugins, CNIVersion: cfg.CNIVersion,
		IsList: cfg.IsList, Config: json.RawMessage(slices.Clone(cfg.Raw)), CreatedAt: f.Now(), Peers: []api.Peer{},
	}}
	n.subnet = subnetOf(cfg.Raw)
	if !n.subnet.IsValid() {
		f.netSeq++
		n.subnet = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 88, byte(f.netSeq), 0}), 24)
	}
	if old, ok := f.networks[cfg.Name]; ok {
		if !force {
			return nil, fmt.Errorf("create network %s: %w (use --force to replace it)", cfg.Name, api.ErrExists)
		}
		// Replacing a definition keeps its peers, QoS and creation time.
		n.net.Peers, n.net.QoS, n.net.CreatedAt = old.net.Peers, old.net.QoS, old.net.CreatedAt
	}
	f.networks[cfg.Name] = n
	return n, nil
}

// subnetOf finds the first ipam subnet of a conf or conflist.
func subnetOf(raw []byte) netip.Prefix {
	type ipam struct {
		Subnet string `json:"subnet"`
	}
	var c struct {
		IPAM    ipam `json:"ipam"`
		Plugins []struct {
			IPAM ipam `json:"ipam"`
		} `json:"plugins"`
	}
	_ = json.Unmarshal(raw, &c)
	subnets := []string{c.IPAM.Subnet}
	for _, p := range c.Plugins {
		subnets = append(subnets, p.IPAM.Subnet)
	}
	for _, s := range subnets {
		if p, err := netip.ParsePrefix(s); err == nil {
			return p.Masked()
		}
	}
	return netip.Prefix{}
}

func (f *Fake) ListNetworks(ctx context.Context) ([]api.Network, error) {
	return call(f, "ListNetworks", func() ([]api.Network, error) {
		out := []api.Network{}
		for _, name := range sortedKeys(f.networks) {
			out = append(out, cloneNetwork(f.networks[name].net))
		}
		return out, nil
	})
}

func (f *Fake) InspectNetwork(ctx context.Context, name string) (*api.Network, error) {
	return call(f, "InspectNetwork", func() (*api.Network, error) {
		n, err := f.lookupNetwork(name)
		if err != nil {
			return nil, fmt.Errorf("inspect network %s: %w", name, err)
		}
		out := cloneNetwork(n.net)
		return &out, nil
	})
}

func (f *Fake) DeleteNetwork(ctx context.Context, name string, force bool) error {
	return f.run("DeleteNetwork", func() error {
		n, err := f.lookupNetwork(name)
		if err != nil {
			return fmt.Errorf("delete network %s: %w", name, err)
		}
		if len(n.net.Peers) > 0 && !force {
			return fmt.Errorf("delete network %s: %w: %d container(s) connected (disconnect them or use --force)", name, api.ErrInUse, len(n.net.Peers))
		}
		for _, p := range n.net.Peers {
			delete(f.shaped, key(p))
		}
		delete(f.networks, name)
		return nil
	})
}

// lookupNetwork validates a name and finds its network.
func (f *Fake) lookupNetwork(name string) (*network, error) {
	if err := api.ValidNetworkName(name); err != nil {
		return nil, err
	}
	return f.network(name)
}

func (f *Fake) network(name string) (*network, error) {
	n, ok := f.networks[name]
	if !ok {
		return nil, fmt.Errorf("network %q: %w", name, api.ErrNotFound)
	}
	return n, nil
}

// --- cluster ----------------------------------------------------------------

// errNoAgent is what every cluster command meets without WithCluster.
func (f *Fake) errNoAgent() error {
	return api.Errorf(api.ErrUnavailable, "circuit-agent at /var/lib/circuit/agent.sock does not answer (is it running?)")
}

// createCluster makes a cluster network whose node holds the next block of
// each of its ranges.
func (f *Fake) createCluster(cfg *cni.Config, req api.CreateNetworkRequest) (*network, error) {
	ranges, err := cni.IPAMRanges(cfg.Raw)
	if err != nil {
		return nil, err
	}
	cl := api.Cluster{Overlay: req.Overlay, BlockSize: req.BlockSize, BlockSize6: req.BlockSize6}
	if err := api.ValidCluster(&cl, ranges); err != nil {
		return nil, err
	}
	if f.cluster == nil {
		return nil, f.errNoAgent()
	}
	if old, ok := f.networks[cfg.Name]; ok && (old.net.Cluster == nil || !req.Force) {
		return nil, api.Errorf(api.ErrExists, "network %s exists", cfg.Name)
	}
	for _, r := range ranges {
		p := netip.MustParsePrefix(r)
		bits := cl.BlockSize
		if p.Addr().Is6() {
			bits = cl.BlockSize6
		}
		blocks, err := api.Blocks(p, bits)
		if err != nil {
			return nil, api.Errorf(api.ErrInvalid, "%v", err)
		}
		cl.Blocks = append(cl.Blocks, blocks[f.cluster.next[cfg.Name]%len(blocks)].String())
	}
	f.cluster.next[cfg.Name]++
	cl.Node, cl.VNI = f.cluster.node, 4096+len(f.networks)
	n, err := f.createNetwork(cfg, true)
	if err != nil {
		return nil, err
	}
	n.net.Cluster = &cl
	n.subnet = netip.MustParsePrefix(cl.Blocks[0])
	f.cluster.nodes[0].Blocks = append(f.cluster.nodes[0].Blocks, cl.Blocks...)
	return n, nil
}

func (f *Fake) ListNodes(ctx context.Context) ([]api.Node, error) {
	return call(f, "ListNodes", func() ([]api.Node, error) {
		if f.cluster == nil {
			return nil, fmt.Errorf("node list: %w", f.errNoAgent())
		}
		out := make([]api.Node, len(f.cluster.nodes))
		for i, n := range f.cluster.nodes {
			n.Blocks = slices.Clone(n.Blocks)
			slices.Sort(n.Blocks)
			out[i] = n
		}
		slices.SortFunc(out, func(a, b api.Node) int { return strings.Compare(a.Name, b.Name) })
		return out, nil
	})
}

// GCCluster gives back the blocks of lost nodes whose last sign of life is
// older than grace (against the Fake's clock).
func (f *Fake) GCCluster(ctx context.Context, grace time.Duration, dryRun bool) (*api.Report, error) {
	return call(f, "GCCluster", func() (*api.Report, error) {
		if f.cluster == nil {
			return nil, fmt.Errorf("gc --cluster: %w", f.errNoAgent())
		}
		r := &api.Report{Actions: []string{}}
		for i := range f.cluster.nodes {
			n := &f.cluster.nodes[i]
			if n.State != api.NodeLost || f.Now().Sub(n.LastSeen) <= grace {
				continue
			}
			for _, b := range n.Blocks {
				line := fmt.Sprintf("release block %s (node %s, lost since %s)", b, n.Name, n.LastSeen.UTC().Format(time.RFC3339))
				if dryRun {
					line = "would " + line
				}
				r.Actions = append(r.Actions, line)
			}
			if !dryRun {
				n.Blocks = []string{}
			}
		}
		return r, nil
	})
}

// --- peers ------------------------------------------------------------------

func (f *Fake) Connect(ctx context.Context, req api.ConnectRequest) (*api.Peer, error) {
	return call(f, "Connect", func() (*api.Peer, error) {
		p, err := f.connect(req)
		if err != nil {
			return nil, fmt.Errorf("connect %s to %s: %w", req.Container, req.Network, err)
		}
		return p, nil
	})
}

func (f *Fake) connect(req api.ConnectRequest) (*api.Peer, error) {
	n, err := f.lookupNetwork(req.Network)
	if err != nil {
		return nil, err
	}
	var id string
	var pid int
	if req.ContainerID != "" {
		if err := api.ValidContainerID(req.ContainerID); err != nil {
			return nil, err
		}
		pid, err = strconv.Atoi(req.Container)
		if err != nil || pid <= 0 {
			return nil, api.Errorf(api.ErrInvalid, "container %s has no pid", req.ContainerID)
		}
		if !f.alive(pid) {
			return nil, api.Errorf(api.ErrNotFound, "no process with pid %d", pid)
		}
		id = req.ContainerID
	} else if id, pid, err = f.resolve(req.Container); err != nil {
		return nil, err
	}
	ifname := req.IfName
	if ifname == "" {
		ifname = f.freeIfName(pid)
	} else if err := api.ValidIfName(ifname); err != nil {
		return nil, err
	}
	for _, q := range n.net.Peers {
		if q.ContainerID == id {
			return nil, api.Errorf(api.ErrExists, "container %s is already connected to network %s (as %s)", req.Container, n.net.Name, q.IfName)
		}
	}
	settings, err := f.checkSettings(n, req.Settings, id)
	if err != nil {
		return nil, err
	}
	ip, err := n.allocate()
	if err != nil {
		return nil, err
	}
	if len(settings.RequestedIPs) > 0 {
		ip = settings.RequestedIPs[0] + "/" + strconv.Itoa(n.subnet.Bits())
	}
	seq := f.peerCount() + 1
	p := api.Peer{
		Network: n.net.Name, ContainerID: id, PID: pid, IfName: ifname, IPs: []string{ip},
		MAC:         fmt.Sprintf("02:42:ac:00:%02x:%02x", seq>>8&0xff, seq&0xff),
		HostIf:      fmt.Sprintf("veth%08x", seq),
		Netns:       pinPath(n.net.Name, id, ifname),
		State:       api.PeerConnected,
		ConnectedAt: f.Now(),
		Settings:    settings,
	}
	if settings.RequestedMAC != "" {
		p.MAC = settings.RequestedMAC
	}
	if n.net.Cluster != nil {
		p.Node = n.net.Cluster.Node
	}
	if pol, _ := api.Effective(n.net.QoS, nil); pol != nil {
		f.shaped[key(p)] = true
	}
	n.net.Peers = append(n.net.Peers, p)
	out := clonePeer(p)
	return &out, nil
}

// checkSettings judges a connect's settings by the rules the local
// controller applies: the network's capabilities, its ranges, what other
// peers hold.
func (f *Fake) checkSettings(n *network, s api.Settings, id string) (api.Settings, error) {
	cfg, err := cni.Parse(n.net.Config)
	if err != nil {
		return s, err
	}
	caps := cfg.Capabilities()
	for _, c := range []struct {
		asked      bool
		flag, need string
	}{{len(s.Publish) > 0, "--publish", "portMappings"}, {len(s.RequestedIPs) > 0, "--ip", "ips"},
		{s.RequestedMAC != "", "--mac", "mac"}, {len(s.Aliases) > 0, "--alias", "aliases"}} {
		if c.asked && !caps[c.need] {
			return s, api.Errorf(api.ErrInvalid, "%s needs a plugin with the %s capability, and network %s has none", c.flag, c.need, n.net.Name)
		}
	}
	if s.Name != "" {
		if err := api.ValidPodName(s.Name); err != nil {
			return s, err
		}
	}
	if s.RequestedMAC != "" {
		if s.RequestedMAC, err = api.ValidMAC(s.RequestedMAC); err != nil {
			return s, err
		}
	}
	for _, a := range s.Aliases {
		if err := api.ValidAlias(a); err != nil {
			return s, err
		}
	}
	for i, ip := range s.RequestedIPs {
		a, err := api.ValidRequestedIP(ip)
		if err != nil {
			return s, err
		}
		if !n.subnet.Contains(a) {
			return s, api.Errorf(api.ErrInvalid, "address %s is outside network %s's ranges [%s]", a, n.net.Name, n.subnet)
		}
		s.RequestedIPs[i] = a.String()
		for _, q := range n.net.Peers {
			for _, held := range q.IPs {
				if pr, err := netip.ParsePrefix(held); err == nil && pr.Addr() == a {
					return s, api.Errorf(api.ErrExists, "address %s is held by container %s on network %s", a, q.ContainerID, n.net.Name)
				}
			}
		}
	}
	for _, other := range f.networks {
		for _, q := range other.net.Peers {
			for _, m := range s.Publish {
				for _, o := range q.Publish {
					if m.Conflicts(o) {
						return s, api.Errorf(api.ErrExists, "host port %d/%s is already published by container %s on network %s (%s)", m.HostPort, m.Protocol, q.ContainerID, q.Network, o)
					}
				}
			}
		}
	}
	return s, nil
}

// freeIfName is the first ethN a process's namespace does not use.
func (f *Fake) freeIfName(pid int) string {
	used := map[string]bool{}
	for _, n := range f.networks {
		for _, p := range n.net.Peers {
			if p.PID == pid {
				used[p.IfName] = true
			}
		}
	}
	for i := 0; ; i++ {
		if name := "eth" + strconv.Itoa(i); !used[name] {
			return name
		}
	}
}

func (f *Fake) peerCount() int {
	c := 0
	for _, n := range f.networks {
		c += len(n.net.Peers)
	}
	return c
}

// allocate gives the lowest free address of the subnet, from .2 on (.1 is
// the gateway), as CIDR.
func (n *network) allocate() (string, error) {
	used := map[netip.Addr]bool{}
	for _, p := range n.net.Peers {
		for _, ip := range p.IPs {
			if pr, err := netip.ParsePrefix(ip); err == nil {
				used[pr.Addr()] = true
			}
		}
	}
	a := n.subnet.Addr().Next().Next()
	for ; n.subnet.Contains(a); a = a.Next() {
		if !used[a] {
			return netip.PrefixFrom(a, n.subnet.Bits()).String(), nil
		}
	}
	return "", fmt.Errorf("CNI ADD: no free address in %s", n.subnet)
}

func (f *Fake) Disconnect(ctx context.Context, req api.DisconnectRequest) error {
	return f.run("Disconnect", func() error {
		if err := f.disconnect(req); err != nil {
			return fmt.Errorf("disconnect %s from %s: %w", req.Container, req.Network, err)
		}
		return nil
	})
}

func (f *Fake) disconnect(req api.DisconnectRequest) error {
	n, err := f.lookupNetwork(req.Network)
	if err != nil {
		return err
	}
	match := f.findPeers(n, req.Container, req.IfName)
	switch {
	case len(match) == 0:
		return api.Errorf(api.ErrNotFound, "container %s is not connected to network %s", req.Container, req.Network)
	case len(match) > 1:
		return api.Errorf(api.ErrInvalid, "container %s has %d interfaces on network %s; choose one with --ifname", req.Container, len(match), req.Network)
	}
	f.remove(n, match[0])
	return nil
}

// findPeers finds a container's peers by recorded ID, by the ID it resolves
// to, or by recorded PID; it returns their indexes.
func (f *Fake) findPeers(n *network, container, ifname string) []int {
	match := func(ok func(api.Peer) bool) []int {
		var out []int
		for i, p := range n.net.Peers {
			if ok(p) && (ifname == "" || p.IfName == ifname) {
				out = append(out, i)
			}
		}
		return out
	}
	if m := match(func(p api.Peer) bool { return p.ContainerID == container }); len(m) > 0 {
		return m
	}
	if id, _, err := f.resolve(container); err == nil {
		if m := match(func(p api.Peer) bool { return p.ContainerID == id }); len(m) > 0 {
			return m
		}
	}
	return match(func(p api.Peer) bool { return strconv.Itoa(p.PID) == container })
}

func (f *Fake) remove(n *network, i int) {
	delete(f.shaped, key(n.net.Peers[i]))
	n.net.Peers = slices.Delete(n.net.Peers, i, i+1)
}

// --- quality of service -----------------------------------------------------

func (f *Fake) SetQoS(ctx context.Context, network, container string, p api.QoSPolicy) error {
	return f.run("SetQoS", func() error {
		if err := f.setQoS(network, container, &p); err != nil {
			return fmt.Errorf("qos set %s: %w", network, err)
		}
		return nil
	})
}

func (f *Fake) ResetQoS(ctx context.Context, network, container string) error {
	return f.run("ResetQoS", func() error {
		if err := f.setQoS(network, container, nil); err != nil {
			return fmt.Errorf("qos reset %s: %w", network, err)
		}
		return nil
	})
}

func (f *Fake) setQoS(name, container string, upd *api.QoSPolicy) error {
	if upd != nil {
		if err := api.ValidatePolicy(*upd); err != nil {
			return err
		}
	}
	n, err := f.lookupNetwork(name)
	if err != nil {
		return err
	}
	var targets []int
	if container != "" {
		for i, p := range n.net.Peers {
			if p.ContainerID == container || strconv.Itoa(p.PID) == container {
				targets = append(targets, i)
			}
		}
		if len(targets) == 0 {
			return api.Errorf(api.ErrNotFound, "container %s is not connected to network %s", container, name)
		}
	}
	if upd != nil && upd.NeedsNetem() && !f.netem {
		return qos.ErrNoNetem
	}
	switch {
	case container == "" && upd == nil:
		n.net.QoS = nil
		for i := range n.net.Peers {
			n.net.Peers[i].QoS = nil
		}
	case container == "":
		m := api.MergePolicy(n.net.QoS, *upd)
		n.net.QoS = &m
	default:
		for _, i := range targets {
			p := &n.net.Peers[i]
			if upd == nil {
				p.QoS = nil
				continue
			}
			m := api.MergePolicy(p.QoS, *upd)
			p.QoS = &m
		}
	}
	for _, p := range n.net.Peers {
		pol, _ := api.Effective(n.net.QoS, p.QoS)
		f.shaped[key(p)] = pol != nil && f.alive(p.PID)
	}
	return nil
}

func (f *Fake) ShowQoS(ctx context.Context, name string) ([]api.PeerQoS, error) {
	return call(f, "ShowQoS", func() ([]api.PeerQoS, error) {
		n, err := f.lookupNetwork(name)
		if err != nil {
			return nil, fmt.Errorf("qos show %s: %w", name, err)
		}
		out := []api.PeerQoS{}
		for _, p := range n.net.Peers {
			pol, src := api.Effective(n.net.QoS, p.QoS)
			row := api.PeerQoS{Network: name, ContainerID: p.ContainerID, PID: p.PID, IfName: p.IfName, Source: src, Policy: clonePolicy(pol)}
			switch {
			case p.State != api.PeerConnected || !f.alive(p.PID):
				row.Error = "container is gone"
			case f.shaped[key(p)]:
				row.Egress = &api.QoSCounters{}
				if pol.Direction == api.DirIngress || pol.Direction == api.DirBoth {
					row.Ingress = &api.QoSCounters{}
				}
				if pol.Direction == api.DirIngress {
					row.Egress = nil
				}
			}
			out = append(out, row)
		}
		return out, nil
	})
}

// --- load balancing ---------------------------------------------------------

func toLB(s api.Service) lb.Service {
	out := lb.Service{Name: s.Name, Address: s.Address, Protocol: s.Protocol, Scheduler: s.Scheduler, Persistence: s.Persistence}
	for _, t := range s.Targets {
		out.Targets = append(out.Targets, toLBTarget(t))
	}
	return out
}

// toLBTarget is what the kernel holds of a target: weight 0 while it drains.
func toLBTarget(t api.Target) lb.Target {
	w := t.Weight
	if t.Draining() {
		w = 0
	}
	return lb.Target{Address: t.Address, Weight: w, Forward: t.Forward}
}

// backend chooses a backend as the local controller does.
func (f *Fake) backend(name string) (string, error) {
	if name == api.BackendAuto || name == "" {
		if len(f.backends) == 0 {
			return "", api.Errorf(api.ErrUnsupported, "lb: no load-balancing backend available")
		}
		return f.backends[0], nil
	}
	if !slices.Contains(f.backends, name) {
		return "", api.Errorf(api.ErrUnsupported, "lb: the %s backend is not available in this kernel", name)
	}
	return name, nil
}

func (f *Fake) CreateService(ctx context.Context, svc api.Service) (*api.Service, error) {
	return call(f, "CreateService", func() (*api.Service, error) {
		s, err := f.createService(svc)
		if err != nil {
			return nil, fmt.Errorf("lb create %s: %w", svc.Name, err)
		}
		return s, nil
	})
}

func (f *Fake) createService(svc api.Service) (*api.Service, error) {
	if err := api.NormalizeService(&svc); err != nil {
		return nil, err
	}
	if svc.Cluster && f.cluster == nil {
		return nil, f.errNoAgent()
	}
	b, err := f.backend(svc.Backend)
	if err != nil {
		return nil, err
	}
	svc.Backend = b
	svc.Targets = []api.Target{}
	svc.CreatedAt = f.Now()
	if err := lb.Validate(b, toLB(svc)); err != nil {
		return nil, err
	}
	if _, ok := f.services[svc.Name]; ok {
		return nil, api.Errorf(api.ErrExists, "service %s already exists", svc.Name)
	}
	for _, name := range sortedKeys(f.services) {
		if o := f.services[name]; o.Address == svc.Address && o.Protocol == svc.Protocol {
			return nil, api.Errorf(api.ErrExists, "service %s already balances %s/%s", o.Name, svc.Address, svc.Protocol)
		}
	}
	f.services[svc.Name] = &svc
	f.lbKernel[svc.Name] = true
	out := cloneService(svc)
	return &out, nil
}

func (f *Fake) service(name string) (*api.Service, error) {
	if err := api.ValidServiceName(name); err != nil {
		return nil, err
	}
	s, ok := f.services[name]
	if !ok {
		return nil, fmt.Errorf("service %q: %w", name, api.ErrNotFound)
	}
	return s, nil
}

func (f *Fake) AddTargets(ctx context.Context, service string, targets []api.Target) error {
	return f.run("AddTargets", func() error {
		if err := f.addTargets(service, targets); err != nil {
			return fmt.Errorf("lb add %s: %w", service, err)
		}
		return nil
	})
}

func (f *Fake) addTargets(service string, targets []api.Target) error {
	s, err := f.service(service)
	if err != nil {
		return err
	}
	f.finishDrains(s, false)
	if len(targets) == 0 {
		return api.Errorf(api.ErrInvalid, "no target given")
	}
	next := cloneService(*s)
	for _, t := range targets {
		if err := api.NormalizeTarget(&next, &t); err != nil {
			return err
		}
		if slices.ContainsFunc(next.Targets, func(o api.Target) bool { return o.Address == t.Address }) {
			return api.Errorf(api.ErrExists, "target %s is already in service %s", t.Address, s.Name)
		}
		next.Targets = append(next.Targets, t)
	}
	if err := lb.Validate(s.Backend, toLB(next)); err != nil {
		return err
	}
	*s = next
	return nil
}

func (f *Fake) RemoveTargets(ctx context.Context, service string, targets []string) error {
	return f.run("RemoveTargets", func() error {
		if err := f.removeTargets(service, targets); err != nil {
			return fmt.Errorf("lb remove %s: %w", service, err)
		}
		return nil
	})
}

func (f *Fake) removeTargets(service string, targets []string) error {
	s, err := f.service(service)
	if err != nil {
		return err
	}
	f.finishDrains(s, false)
	if len(targets) == 0 {
		return api.Errorf(api.ErrInvalid, "no target given")
	}
	next := cloneService(*s)
	for _, addr := range targets {
		ap, err := api.ParseAddrPort(addr)
		if err != nil {
			return err
		}
		i := slices.IndexFunc(next.Targets, func(o api.Target) bool { return o.Address == ap.String() })
		if i < 0 {
			return api.Errorf(api.ErrNotFound, "target %s is not in service %s", addr, s.Name)
		}
		next.Targets = slices.Delete(next.Targets, i, i+1)
	}
	*s = next
	return nil
}

func (f *Fake) DeleteService(ctx context.Context, service string) error {
	return f.run("DeleteService", func() error {
		if _, err := f.service(service); err != nil {
			return fmt.Errorf("lb delete %s: %w", service, err)
		}
		delete(f.services, service)
		delete(f.stats, service)
		delete(f.active, service)
		delete(f.lbKernel, service)
		return nil
	})
}

func (f *Fake) ListServices(ctx context.Context) ([]api.Service, error) {
	return call(f, "ListServices", func() ([]api.Service, error) {
		out := []api.Service{}
		for _, name := range sortedKeys(f.services) {
			out = append(out, cloneService(*f.services[name]))
		}
		return out, nil
	})
}

func (f *Fake) ShowService(ctx context.Context, service string) (*api.ServiceStatus, error) {
	return call(f, "ShowService", func() (*api.ServiceStatus, error) {
		s, err := f.service(service)
		if err != nil {
			return nil, fmt.Errorf("lb show %s: %w", service, err)
		}
		if !f.lbKernel[service] {
			return nil, fmt.Errorf("lb show %s: %s backend: %w", service, s.Backend, api.Errorf(api.ErrNotFound, "service is not programmed"))
		}
		f.finishDrains(s, false)
		st := &api.ServiceStatus{Service: cloneService(*s), Targets: map[string]api.Counters{}, Active: map[string]uint64{}}
		for _, t := range s.Targets {
			st.Active[t.Address] = f.active[service][t.Address]
		}
		in := f.stats[service]
		if in != nil {
			st.Stats = in.Stats
		}
		for _, t := range s.Targets {
			if in != nil {
				st.Targets[t.Address] = in.Targets[t.Address]
			} else {
				st.Targets[t.Address] = api.Counters{}
			}
		}
		return st, nil
	})
}

// --- hooks ------------------------------------------------------------------

// Hook connects the container to its networks on creating, created and
// running, and disconnects every interface it has on stopped, as the local
// controller does.
func (f *Fake) Hook(ctx context.Context, req api.HookRequest) (*api.HookResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hooks = append(f.hooks, cloneHookRequest(req))
	if err := f.injected("Hook"); err != nil {
		return nil, err
	}
	if err := api.ValidContainerID(req.ID); err != nil {
		return nil, fmt.Errorf("hook: %w", err)
	}
	switch req.Status {
	case "creating", "created", "running":
		return f.hookStart(req)
	case "stopped":
		return f.hookStop(req), nil
	}
	return nil, fmt.Errorf("hook %s: %w: unknown container status %q", req.ID, api.ErrInvalid, req.Status)
}

func (f *Fake) hookStart(req api.HookRequest) (*api.HookResult, error) {
	if req.PID <= 0 {
		return nil, fmt.Errorf("hook %s: %w: OCI state has no pid for status %s", req.ID, api.ErrInvalid, req.Status)
	}
	networks := req.Networks
	if len(networks) == 0 {
		name, err := f.networkFromFile(req.CNIConf)
		if err != nil {
			return nil, fmt.Errorf("hook %s: %w", req.ID, err)
		}
		networks = []string{name}
	}
	res := &api.HookResult{}
	var done []string
	for _, name := range networks {
		if n, ok := f.networks[name]; ok {
			// A record a dead container of the same ID left is replaced.
			for _, i := range slices.Backward(f.findPeers(n, req.ID, "")) {
				if p := n.net.Peers[i]; p.ContainerID == req.ID && !f.alive(p.PID) {
					f.remove(n, i)
				}
			}
		}
		if n, ok := f.networks[name]; ok && slices.ContainsFunc(n.net.Peers, func(p api.Peer) bool {
			return p.ContainerID == req.ID && p.PID == req.PID && p.State == api.PeerConnected
		}) {
			res.Actions = append(res.Actions, fmt.Sprintf("container %s is already connected to network %s", req.ID, name))
			continue
		}
		ifname := ""
		if len(networks) == 1 {
			ifname = req.IfName
		}
		settings := api.Settings{Name: req.Name}
		if name == networks[0] { // as the local controller: one network's ports and addresses
			settings = req.Settings
		}
		p, err := f.connect(api.ConnectRequest{Container: strconv.Itoa(req.PID), ContainerID: req.ID, Network: name, IfName: ifname, Settings: settings})
		if err != nil {
			// All or nothing, as the local controller.
			for _, d := range done {
				n := f.networks[d]
				for _, i := range f.findPeers(n, req.ID, "") {
					f.remove(n, i)
				}
			}
			return res, fmt.Errorf("hook %s: connect %d to %s: %w", req.ID, req.PID, name, err)
		}
		done = append(done, name)
		res.Actions = append(res.Actions, fmt.Sprintf("connected container %s to network %s as %s %v", req.ID, name, p.IfName, p.IPs))
	}
	return res, nil
}

func (f *Fake) hookStop(req api.HookRequest) *api.HookResult {
	res := &api.HookResult{}
	for _, name := range sortedKeys(f.networks) {
		n := f.networks[name]
		for i := len(n.net.Peers) - 1; i >= 0; i-- {
			if n.net.Peers[i].ContainerID == req.ID {
				f.remove(n, i)
				res.Actions = append(res.Actions, fmt.Sprintf("disconnected container %s from network %s", req.ID, name))
			}
		}
	}
	if len(res.Actions) == 0 {
		res.Actions = append(res.Actions, fmt.Sprintf("container %s has no networks: nothing to do", req.ID))
	}
	return res
}

// networkFromFile creates the network CNI_CONF describes, or checks that
// the stored one is the same.
func (f *Fake) networkFromFile(path string) (string, error) {
	if path == "" {
		return "", api.Errorf(api.ErrInvalid, "no network: set CNI_CONF or CIRCUIT_NETWORK in the hook's env, or the circuit.network annotation")
	}
	raw, err := cni.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("CNI_CONF: %w", err)
	}
	cfg, err := cni.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("CNI_CONF %s: %w", path, err)
	}
	if old, ok := f.networks[cfg.Name]; ok {
		if !cni.SameConfig(old.net.Config, raw) {
			return "", api.Errorf(api.ErrExists, "network %s exists with a configuration different from CNI_CONF %s", cfg.Name, path)
		}
		return cfg.Name, nil
	}
	if _, err := f.createNetwork(cfg, false); err != nil {
		return "", err
	}
	return cfg.Name, nil
}

// --- repair -----------------------------------------------------------------

// stale says why gc or restore removes a peer, as the local controller
// judges it: interrupted work whose owner is gone, or a dead container.
func (f *Fake) stale(p api.Peer) string {
	switch p.State {
	case api.PeerConnecting, api.PeerDisconnecting, api.PeerUndoFailed:
		if p.Owner != nil && f.alive(p.Owner.PID) && f.proc(p.Owner.PID).start == p.Owner.Start {
			return ""
		}
		switch p.State {
		case api.PeerConnecting:
			return "an interrupted connect"
		case api.PeerUndoFailed:
			return "an undo that failed"
		}
		return "an interrupted disconnect"
	case api.PeerConnected:
		if !f.alive(p.PID) {
			return "its container is gone"
		}
	}
	return ""
}

// Restore disconnects stale peers and re-programs what Flush forgot.
func (f *Fake) Restore(ctx context.Context) (*api.Report, error) {
	return call(f, "Restore", func() (*api.Report, error) {
		r := &api.Report{Actions: []string{}}
		for _, name := range sortedKeys(f.networks) {
			n := f.networks[name]
			for i := 0; i < len(n.net.Peers); i++ {
				p := n.net.Peers[i]
				if why := f.stale(p); why != "" {
					line := fmt.Sprintf("disconnected %s from %s (%s)", p.ContainerID, name, why)
					if len(p.IPs) > 0 {
						line += ", released " + strings.Join(p.IPs, ", ")
					}
					r.Actions = append(r.Actions, line)
					f.remove(n, i)
					i--
					continue
				}
				if pol, _ := api.Effective(n.net.QoS, p.QoS); pol != nil && p.State == api.PeerConnected && !f.shaped[key(p)] {
					f.shaped[key(p)] = true
					r.Actions = append(r.Actions, fmt.Sprintf("re-applied qos to %s on %s", p.ContainerID, name))
				}
			}
		}
		for _, name := range sortedKeys(f.services) {
			r.Actions = append(r.Actions, f.finishDrains(f.services[name], false)...)
			if s := f.services[name]; !f.lbKernel[name] {
				f.lbKernel[name] = true
				targets := "1 target"
				if len(s.Targets) != 1 {
					targets = fmt.Sprintf("%d targets", len(s.Targets))
				}
				r.Actions = append(r.Actions, fmt.Sprintf("restored service %s (%s, %s) with %s", name, s.Address, targets, s.Backend))
			}
		}
		return r, nil
	})
}

// GC disconnects stale peers; with dryRun it only says what it would do.
func (f *Fake) GC(ctx context.Context, dryRun bool) (*api.Report, error) {
	return call(f, "GC", func() (*api.Report, error) {
		r := &api.Report{Actions: []string{}}
		for _, name := range sortedKeys(f.networks) {
			n := f.networks[name]
			for i := 0; i < len(n.net.Peers); i++ {
				p := n.net.Peers[i]
				why := f.stale(p)
				if why == "" {
					continue
				}
				line := fmt.Sprintf("disconnect %s from %s (%s)", p.ContainerID, name, why)
				if len(p.IPs) > 0 {
					line += ": " + strings.Join(p.IPs, ", ")
				}
				if dryRun {
					r.Actions = append(r.Actions, "would "+line)
					continue
				}
				r.Actions = append(r.Actions, line)
				f.remove(n, i)
				i--
			}
		}
		for _, name := range sortedKeys(f.services) {
			r.Actions = append(r.Actions, f.finishDrains(f.services[name], dryRun)...)
		}
		return r, nil
	})
}

func (f *Fake) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closes++
	return f.injected("Close")
}

// --- helpers ----------------------------------------------------------------

func key(p api.Peer) string { return p.Network + "/" + p.ContainerID + "/" + p.IfName }

// pinPath is where the local controller would pin the peer's netns.
func pinPath(network, id, ifname string) string {
	sum := sha256.Sum256([]byte(network + "\x00" + id + "\x00" + ifname))
	return filepath.Join("/var/lib/circuit/netns", hex.EncodeToString(sum[:12]))
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

func clonePolicy(p *api.QoSPolicy) *api.QoSPolicy {
	if p == nil {
		return nil
	}
	c := *p
	return &c
}

func clonePeer(p api.Peer) api.Peer {
	p.IPs = slices.Clone(p.IPs)
	p.QoS = clonePolicy(p.QoS)
	if p.Owner != nil {
		o := *p.Owner
		p.Owner = &o
	}
	return p
}

func cloneNetwork(n api.Network) api.Network {
	n.Plugins = slices.Clone(n.Plugins)
	n.Config = slices.Clone(n.Config)
	n.QoS = clonePolicy(n.QoS)
	peers := make([]api.Peer, len(n.Peers))
	for i, p := range n.Peers {
		peers[i] = clonePeer(p)
	}
	n.Peers = peers
	return n
}

func cloneService(s api.Service) api.Service {
	s.Targets = slices.Clone(s.Targets)
	if s.Targets == nil {
		s.Targets = []api.Target{}
	}
	return s
}

func cloneHookRequest(r api.HookRequest) api.HookRequest {
	r.Networks = slices.Clone(r.Networks)
	if r.Annotations != nil {
		a := make(map[string]string, len(r.Annotations))
		for k, v := range r.Annotations {
			a[k] = v
		}
		r.Annotations = a
	}
	return r
}
