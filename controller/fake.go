package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/circuit-cni/circuit/internal/ident"
)

// Fake is an in-memory Controller. It is not test-only code (like knftables'
// Fake) so that any package's unit tests can drive the CLI or other callers
// without root, netlink or a datastore. It validates its input and wraps the
// package's sentinel errors the way a real Controller should, so callers can
// test their error paths against it.
//
// Addresses come from the network's ipam.subnet (or 10.88.N.0/24) in
// connection order, starting at .2, so outputs are deterministic.
type Fake struct {
	mu sync.Mutex

	networks map[string]*fakeNetwork
	services map[string]*Service
	stats    map[string]*ServiceStatus // injected counters, by service
	errs     map[string]error          // injected errors, by method name
	hooks    []HookRequest
	netSeq   int
	peerSeq  int
	pidSeq   int
	closes   int

	// Now stamps created objects; tests may replace it before use.
	Now func() time.Time
}

type fakeNetwork struct {
	net    Network
	subnet netip.Prefix
	nextIP int
}

var _ Controller = (*Fake)(nil)

// NewFake returns an empty Fake whose clock is fixed at 2016-10-12T18:45:27Z.
func NewFake() *Fake {
	return &Fake{
		networks: map[string]*fakeNetwork{},
		services: map[string]*Service{},
		stats:    map[string]*ServiceStatus{},
		errs:     map[string]error{},
		pidSeq:   19000,
		Now:      func() time.Time { return time.Date(2016, 10, 12, 18, 45, 27, 0, time.UTC) },
	}
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
func (f *Fake) SetServiceStats(service string, stats Counters, targets map[string]Counters) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stats[service] = &ServiceStatus{Stats: stats, Targets: cloneMap(targets)}
}

// AddPeer records a peer as is (any state), for tests of listings and gc.
func (f *Fake) AddPeer(p Peer) error {
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
func (f *Fake) Hooks() []HookRequest {
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

// validName is the CNI spec's rule for network names; services follow it
// too, which also keeps names usable as path components.
func validName(kind, name string) error {
	if !ident.Valid(name, 0, true, "_.-") || len(name) > 253 {
		return fmt.Errorf("%s name %q: must start with a letter or digit and contain only letters, digits, '_', '.' and '-': %w", kind, name, ErrInvalid)
	}
	return nil
}

// fakeConf is the part of a CNI conf or conflist the Fake looks at.
type fakeConf struct {
	Name       string `json:"name"`
	CNIVersion string `json:"cniVersion"`
	Type       string `json:"type"`
	IPAM       struct {
		Subnet string `json:"subnet"`
	} `json:"ipam"`
	Plugins []struct {
		Type string `json:"type"`
		IPAM struct {
			Subnet string `json:"subnet"`
		} `json:"ipam"`
	} `json:"plugins"`
}

func (f *Fake) CreateNetwork(ctx context.Context, config []byte, force bool) (*Network, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.injected("CreateNetwork"); err != nil {
		return nil, err
	}
	return f.createNetwork(config, force)
}

func (f *Fake) createNetwork(config []byte, force bool) (*Network, error) {
	var c fakeConf
	if err := json.Unmarshal(config, &c); err != nil {
		return nil, fmt.Errorf("network config is not JSON: %v: %w", err, ErrInvalid)
	}
	if err := validName("network", c.Name); err != nil {
		return nil, err
	}
	n := Network{
		Name:       c.Name,
		CNIVersion: c.CNIVersion,
		Config:     json.RawMessage(slices.Clone(config)),
		CreatedAt:  f.Now(),
		Peers:      []Peer{},
	}
	subnet := c.IPAM.Subnet
	if c.Plugins != nil {
		n.IsList = true
		for _, p := range c.Plugins {
			if p.Type == "" {
				return nil, fmt.Errorf("network %q: plugin without type: %w", c.Name, ErrInvalid)
			}
			n.Plugins = append(n.Plugins, p.Type)
		}
		if len(c.Plugins) > 0 {
			subnet = c.Plugins[0].IPAM.Subnet
		}
	} else if c.Type != "" {
		n.Plugins = []string{c.Type}
	}
	if len(n.Plugins) == 0 {
		return nil, fmt.Errorf("network %q: no plugin type: %w", c.Name, ErrInvalid)
	}
	n.Type = n.Plugins[0]

	fn := &fakeNetwork{net: n, nextIP: 1}
	if subnet != "" {
		p, err := netip.ParsePrefix(subnet)
		if err != nil {
			return nil, fmt.Errorf("network %q: ipam subnet: %v: %w", c.Name, err, ErrInvalid)
		}
		fn.subnet = p.Masked()
	} else {
		f.netSeq++
		fn.subnet = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 88, byte(f.netSeq), 0}), 24)
	}
	if old, ok := f.networks[c.Name]; ok {
		if !force {
			return nil, fmt.Errorf("network %q: %w", c.Name, ErrExists)
		}
		// Replacing a definition keeps its attachments, as the real one must.
		fn.net.Peers = old.net.Peers
		fn.net.QoS = old.net.QoS
		fn.nextIP = old.nextIP
	}
	f.networks[c.Name] = fn
	out := cloneNetwork(fn.net)
	return &out, nil
}

func (f *Fake) ListNetworks(ctx context.Context) ([]Network, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.injected("ListNetworks"); err != nil {
		return nil, err
	}
	out := []Network{}
	for _, n := range f.networks {
		out = append(out, cloneNetwork(n.net))
	}
	slices.SortFunc(out, func(a, b Network) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

func (f *Fake) InspectNetwork(ctx context.Context, name string) (*Network, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.injected("InspectNetwork"); err != nil {
		return nil, err
	}
	n, err := f.network(name)
	if err != nil {
		return nil, err
	}
	out := cloneNetwork(n.net)
	return &out, nil
}

func (f *Fake) DeleteNetwork(ctx context.Context, name string, force bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.injected("DeleteNetwork"); err != nil {
		return err
	}
	n, err := f.network(name)
	if err != nil {
		return err
	}
	if len(n.net.Peers) > 0 && !force {
		return fmt.Errorf("network %q has %d peer(s), disconnect them or use --force: %w", name, len(n.net.Peers), ErrInUse)
	}
	delete(f.networks, name)
	return nil
}

func (f *Fake) network(name string) (*fakeNetwork, error) {
	n, ok := f.networks[name]
	if !ok {
		return nil, fmt.Errorf("network %q: %w", name, ErrNotFound)
	}
	return n, nil
}

func (f *Fake) Connect(ctx context.Context, req ConnectRequest) (*Peer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.injected("Connect"); err != nil {
		return nil, err
	}
	return f.connect(req)
}

func (f *Fake) connect(req ConnectRequest) (*Peer, error) {
	if req.Container == "" && req.ContainerID == "" {
		return nil, fmt.Errorf("no container given: %w", ErrInvalid)
	}
	n, err := f.network(req.Network)
	if err != nil {
		return nil, err
	}
	id := req.ContainerID
	if id == "" {
		id = req.Container
	}
	pid, err := strconv.Atoi(req.Container)
	if err != nil || pid <= 0 {
		f.pidSeq++
		pid = f.pidSeq
	}

	// Interface names are unique per container netns, across networks.
	used := map[string]bool{}
	for _, other := range f.networks {
		for _, p := range other.net.Peers {
			if p.ContainerID != id {
				continue
			}
			used[p.IfName] = true
			if other.net.Name == req.Network && (req.IfName == "" || req.IfName == p.IfName) {
				return nil, fmt.Errorf("container %q is already connected to network %q: %w", req.Container, req.Network, ErrExists)
			}
		}
	}
	ifname := req.IfName
	if ifname == "" {
		for i := 0; ; i++ {
			if ifname = fmt.Sprintf("eth%d", i); !used[ifname] {
				break
			}
		}
	} else if used[ifname] {
		return nil, fmt.Errorf("container %q already has an interface %q: %w", req.Container, ifname, ErrExists)
	}

	addr := n.subnet.Addr()
	for i := 0; i <= n.nextIP; i++ {
		addr = addr.Next()
	}
	if !n.subnet.Contains(addr) {
		return nil, fmt.Errorf("network %q: subnet %s is exhausted: %w", req.Network, n.subnet, ErrInUse)
	}
	n.nextIP++
	f.peerSeq++
	seq := f.peerSeq
	p := Peer{
		Network:     req.Network,
		ContainerID: id,
		PID:         pid,
		IfName:      ifname,
		IPs:         []string{netip.PrefixFrom(addr, n.subnet.Bits()).String()},
		MAC:         fmt.Sprintf("02:42:ac:%02x:%02x:%02x", byte(seq>>16), byte(seq>>8), byte(seq)),
		HostIf:      fmt.Sprintf("veth%08x", uint32(seq)),
		Netns:       "/var/lib/circuit/netns/" + id,
		State:       PeerConnected,
		ConnectedAt: f.Now(),
	}
	n.net.Peers = append(n.net.Peers, p)
	out := clonePeer(p)
	return &out, nil
}

func (f *Fake) Disconnect(ctx context.Context, req DisconnectRequest) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.injected("Disconnect"); err != nil {
		return err
	}
	n, err := f.network(req.Network)
	if err != nil {
		return err
	}
	i, err := n.findPeer(req.Container, req.IfName)
	if err != nil {
		return err
	}
	n.net.Peers = slices.Delete(n.net.Peers, i, i+1)
	return nil
}

// findPeer matches a container by ID or by PID, as the CLI accepts either.
func (n *fakeNetwork) findPeer(container, ifname string) (int, error) {
	found := -1
	for i, p := range n.net.Peers {
		if p.ContainerID != container && strconv.Itoa(p.PID) != container {
			continue
		}
		if ifname != "" && p.IfName != ifname {
			continue
		}
		if found >= 0 {
			return -1, fmt.Errorf("container %q has several interfaces on network %q, name one: %w", container, n.net.Name, ErrInvalid)
		}
		found = i
	}
	if found < 0 {
		return -1, fmt.Errorf("container %q on network %q: %w", container, n.net.Name, ErrNotFound)
	}
	return found, nil
}

func validQoS(p QoSPolicy) error {
	switch {
	case p.IsZero():
		return fmt.Errorf("qos policy sets nothing: %w", ErrInvalid)
	case p.Ceiling > 0 && p.Rate == 0:
		return fmt.Errorf("qos ceiling needs a rate: %w", ErrInvalid)
	case p.Ceiling > 0 && p.Ceiling < p.Rate:
		return fmt.Errorf("qos ceiling is below the rate: %w", ErrInvalid)
	case p.Loss < 0 || p.Loss > 100:
		return fmt.Errorf("qos loss %g%% is not within 0-100%%: %w", p.Loss, ErrInvalid)
	case p.Delay < 0 || p.Jitter < 0:
		return fmt.Errorf("qos delay and jitter must not be negative: %w", ErrInvalid)
	}
	switch p.Direction {
	case "", DirEgress, DirIngress, DirBoth:
		return nil
	}
	return fmt.Errorf("qos direction %q: %w", p.Direction, ErrInvalid)
}

func (f *Fake) SetQoS(ctx context.Context, network, container string, p QoSPolicy) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.injected("SetQoS"); err != nil {
		return err
	}
	if err := validQoS(p); err != nil {
		return err
	}
	n, err := f.network(network)
	if err != nil {
		return err
	}
	if container == "" {
		n.net.QoS = &p
		return nil
	}
	i, err := n.findPeer(container, "")
	if err != nil {
		return err
	}
	n.net.Peers[i].QoS = &p
	return nil
}

func (f *Fake) ResetQoS(ctx context.Context, network, container string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.injected("ResetQoS"); err != nil {
		return err
	}
	n, err := f.network(network)
	if err != nil {
		return err
	}
	if container == "" {
		n.net.QoS = nil
		return nil
	}
	i, err := n.findPeer(container, "")
	if err != nil {
		return err
	}
	n.net.Peers[i].QoS = nil
	return nil
}

func (f *Fake) ShowQoS(ctx context.Context, network string) ([]PeerQoS, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.injected("ShowQoS"); err != nil {
		return nil, err
	}
	n, err := f.network(network)
	if err != nil {
		return nil, err
	}
	out := []PeerQoS{}
	for _, p := range n.net.Peers {
		q := PeerQoS{Network: network, ContainerID: p.ContainerID, PID: p.PID, IfName: p.IfName, Source: "none"}
		switch {
		case p.QoS != nil:
			q.Source, q.Policy = "container", clonePolicy(p.QoS)
		case n.net.QoS != nil:
			q.Source, q.Policy = "network", clonePolicy(n.net.QoS)
		}
		if q.Policy != nil {
			q.Egress = &QoSCounters{}
			if q.Policy.Direction == DirIngress || q.Policy.Direction == DirBoth {
				q.Ingress = &QoSCounters{}
			}
		}
		out = append(out, q)
	}
	return out, nil
}

var (
	schedulers = []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh"}
	protocols  = []string{"tcp", "udp", "sctp"}
	forwards   = []string{"nat", "dr", "tunnel"}
)

func validHostPort(what, s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%s %q: %v: %w", what, s, err, ErrInvalid)
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return fmt.Errorf("%s %q: not an IP address: %w", what, s, ErrInvalid)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%s %q: port must be 1-65535: %w", what, s, ErrInvalid)
	}
	return nil
}

func (f *Fake) CreateService(ctx context.Context, svc Service) (*Service, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.injected("CreateService"); err != nil {
		return nil, err
	}
	if err := validName("service", svc.Name); err != nil {
		return nil, err
	}
	if err := validHostPort("service address", svc.Address); err != nil {
		return nil, err
	}
	if svc.Protocol == "" {
		svc.Protocol = "tcp"
	}
	if svc.Scheduler == "" {
		svc.Scheduler = "rr"
	}
	if !slices.Contains(protocols, svc.Protocol) {
		return nil, fmt.Errorf("protocol %q: %w", svc.Protocol, ErrInvalid)
	}
	if !slices.Contains(schedulers, svc.Scheduler) {
		return nil, fmt.Errorf("scheduler %q: %w", svc.Scheduler, ErrInvalid)
	}
	switch svc.Backend {
	case "", "auto":
		svc.Backend = "ipvs"
	case "ipvs", "nftables":
	default:
		return nil, fmt.Errorf("backend %q: %w", svc.Backend, ErrInvalid)
	}
	if svc.Persistence < 0 {
		return nil, fmt.Errorf("persistence must not be negative: %w", ErrInvalid)
	}
	if _, ok := f.services[svc.Name]; ok {
		return nil, fmt.Errorf("service %q: %w", svc.Name, ErrExists)
	}
	for _, s := range f.services {
		if s.Address == svc.Address && s.Protocol == svc.Protocol {
			return nil, fmt.Errorf("service %q already serves %s/%s: %w", s.Name, svc.Address, svc.Protocol, ErrExists)
		}
	}
	svc.Targets = []Target{}
	svc.CreatedAt = f.Now()
	f.services[svc.Name] = &svc
	out := cloneService(svc)
	return &out, nil
}

func (f *Fake) service(name string) (*Service, error) {
	s, ok := f.services[name]
	if !ok {
		return nil, fmt.Errorf("service %q: %w", name, ErrNotFound)
	}
	return s, nil
}

func (f *Fake) AddTargets(ctx context.Context, service string, targets []Target) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.injected("AddTargets"); err != nil {
		return err
	}
	s, err := f.service(service)
	if err != nil {
		return err
	}
	if len(targets) == 0 {
		return fmt.Errorf("service %q: no targets given: %w", service, ErrInvalid)
	}
	// All or nothing: validate every target before changing anything.
	targets = slices.Clone(targets)
	for i, t := range targets {
		if err := validHostPort("target", t.Address); err != nil {
			return err
		}
		if t.Weight == 0 {
			targets[i].Weight = 1
		} else if t.Weight < 0 || t.Weight > 65535 {
			return fmt.Errorf("target %s: weight %d is not within 1-65535: %w", t.Address, t.Weight, ErrInvalid)
		}
		if t.Forward == "" {
			targets[i].Forward = "nat"
		} else if !slices.Contains(forwards, t.Forward) {
			return fmt.Errorf("target %s: forwarding method %q: %w", t.Address, t.Forward, ErrInvalid)
		}
	}
	// All or nothing, like the real controller: a known target is refused.
	for i, t := range targets {
		dup := slices.ContainsFunc(targets[:i], func(o Target) bool { return o.Address == t.Address })
		if dup || slices.ContainsFunc(s.Targets, func(o Target) bool { return o.Address == t.Address }) {
			return Errorf(ErrExists, "target %s is already in service %s", t.Address, s.Name)
		}
	}
	s.Targets = append(s.Targets, targets...)
	return nil
}

func (f *Fake) RemoveTargets(ctx context.Context, service string, targets []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.injected("RemoveTargets"); err != nil {
		return err
	}
	s, err := f.service(service)
	if err != nil {
		return err
	}
	for _, a := range targets {
		if !slices.ContainsFunc(s.Targets, func(t Target) bool { return t.Address == a }) {
			return fmt.Errorf("service %q: target %s: %w", service, a, ErrNotFound)
		}
	}
	s.Targets = slices.DeleteFunc(s.Targets, func(t Target) bool { return slices.Contains(targets, t.Address) })
	return nil
}

func (f *Fake) DeleteService(ctx context.Context, service string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.injected("DeleteService"); err != nil {
		return err
	}
	if _, err := f.service(service); err != nil {
		return err
	}
	delete(f.services, service)
	delete(f.stats, service)
	return nil
}

func (f *Fake) ListServices(ctx context.Context) ([]Service, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.injected("ListServices"); err != nil {
		return nil, err
	}
	out := []Service{}
	for _, s := range f.services {
		out = append(out, cloneService(*s))
	}
	slices.SortFunc(out, func(a, b Service) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

func (f *Fake) ShowService(ctx context.Context, service string) (*ServiceStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.injected("ShowService"); err != nil {
		return nil, err
	}
	s, err := f.service(service)
	if err != nil {
		return nil, err
	}
	st := &ServiceStatus{Service: cloneService(*s), Targets: map[string]Counters{}}
	if in, ok := f.stats[service]; ok {
		st.Stats = in.Stats
		for _, t := range s.Targets {
			if c, ok := in.Targets[t.Address]; ok {
				st.Targets[t.Address] = c
			}
		}
	}
	return st, nil
}

// Hook connects the container to its networks on creating/created, and
// disconnects every interface it has on stopped; running does nothing.
// A network named by CNIConf is created from the file if it is missing.
func (f *Fake) Hook(ctx context.Context, req HookRequest) (*HookResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hooks = append(f.hooks, cloneHookRequest(req))
	if err := f.injected("Hook"); err != nil {
		return nil, err
	}
	if req.ID == "" {
		return nil, fmt.Errorf("hook: no container id: %w", ErrInvalid)
	}
	res := &HookResult{Actions: []string{}}
	switch req.Status {
	case "creating", "created":
		networks := req.Networks
		if len(networks) == 0 {
			name, err := f.networkFromFile(req.CNIConf)
			if err != nil {
				return nil, err
			}
			networks = []string{name}
		}
		for _, name := range networks {
			n, err := f.network(name)
			if err != nil {
				return res, err
			}
			if _, err := n.findPeer(req.ID, req.IfName); err == nil {
				res.Actions = append(res.Actions, fmt.Sprintf("container %s is already connected to network %s", req.ID, name))
				continue
			}
			p, err := f.connect(ConnectRequest{Container: strconv.Itoa(req.PID), ContainerID: req.ID, Network: name, IfName: req.IfName})
			if err != nil {
				return res, err
			}
			res.Actions = append(res.Actions, fmt.Sprintf("connected container %s to network %s as %s (%s)", req.ID, name, p.IfName, strings.Join(p.IPs, ", ")))
		}
	case "running":
	case "stopped":
		names := make([]string, 0, len(f.networks))
		for name := range f.networks {
			names = append(names, name)
		}
		slices.Sort(names)
		for _, name := range names {
			n := f.networks[name]
			kept := n.net.Peers[:0]
			for _, p := range n.net.Peers {
				if p.ContainerID == req.ID {
					res.Actions = append(res.Actions, fmt.Sprintf("disconnected container %s from network %s", req.ID, name))
					continue
				}
				kept = append(kept, p)
			}
			n.net.Peers = kept
		}
	default:
		return nil, fmt.Errorf("hook: container status %q: %w", req.Status, ErrInvalid)
	}
	return res, nil
}

func (f *Fake) networkFromFile(path string) (string, error) {
	if path == "" {
		return "", fmt.Errorf("hook: no network: set CIRCUIT_NETWORK or CNI_CONF: %w", ErrInvalid)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	var c fakeConf
	if err := json.Unmarshal(b, &c); err != nil {
		return "", fmt.Errorf("%s is not JSON: %v: %w", path, err, ErrInvalid)
	}
	if _, ok := f.networks[c.Name]; ok {
		return c.Name, nil
	}
	n, err := f.createNetwork(b, false)
	if err != nil {
		return "", err
	}
	return n.Name, nil
}

// Restore reports one action per network and service it would re-program.
func (f *Fake) Restore(ctx context.Context) (*Report, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.injected("Restore"); err != nil {
		return nil, err
	}
	r := &Report{Actions: []string{}}
	for _, n := range sortedKeys(f.networks) {
		if q := f.networks[n].net.QoS; q != nil {
			r.Actions = append(r.Actions, "restored qos of network "+n)
		}
	}
	for _, s := range sortedKeys(f.services) {
		r.Actions = append(r.Actions, fmt.Sprintf("restored service %s with %d target(s)", s, len(f.services[s].Targets)))
	}
	return r, nil
}

// GC removes peers left in a transitional state (a crash between intent and
// outcome); with dryRun it only says what it would remove.
func (f *Fake) GC(ctx context.Context, dryRun bool) (*Report, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.injected("GC"); err != nil {
		return nil, err
	}
	r := &Report{Actions: []string{}}
	verb := "removed"
	if dryRun {
		verb = "would remove"
	}
	for _, name := range sortedKeys(f.networks) {
		n := f.networks[name]
		kept := n.net.Peers[:0]
		for _, p := range n.net.Peers {
			if p.State == PeerConnected {
				kept = append(kept, p)
				continue
			}
			r.Actions = append(r.Actions, fmt.Sprintf("%s %s peer %s/%s on network %s", verb, p.State, p.ContainerID, p.IfName, name))
			if dryRun {
				kept = append(kept, p)
			}
		}
		n.net.Peers = kept
	}
	return r, nil
}

func (f *Fake) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closes++
	return f.injected("Close")
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func cloneMap[V any](m map[string]V) map[string]V {
	if m == nil {
		return nil
	}
	out := make(map[string]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// The clone helpers make sure callers never share memory with the Fake's
// state, as a real Controller's results never alias its datastore.

func clonePolicy(p *QoSPolicy) *QoSPolicy {
	if p == nil {
		return nil
	}
	c := *p
	return &c
}

func clonePeer(p Peer) Peer {
	p.IPs = slices.Clone(p.IPs)
	p.QoS = clonePolicy(p.QoS)
	return p
}

func cloneNetwork(n Network) Network {
	n.Plugins = slices.Clone(n.Plugins)
	n.Config = slices.Clone(n.Config)
	n.QoS = clonePolicy(n.QoS)
	peers := make([]Peer, 0, len(n.Peers))
	for _, p := range n.Peers {
		peers = append(peers, clonePeer(p))
	}
	n.Peers = peers
	return n
}

func cloneService(s Service) Service {
	s.Targets = append([]Target{}, s.Targets...)
	return s
}

func cloneHookRequest(r HookRequest) HookRequest {
	r.Annotations = cloneMap(r.Annotations)
	r.Networks = slices.Clone(r.Networks)
	return r
}
