package api

import (
	"encoding/json"
	"time"
)

// Network is a CNI network definition as the user gave it, plus its peers.
type Network struct {
	Name       string   `json:"name"`
	Type       string   `json:"type"`    // first plugin's type (the chain's main plugin)
	Plugins    []string `json:"plugins"` // every plugin type in the chain, in order
	CNIVersion string   `json:"cniVersion"`
	IsList     bool     `json:"isList"` // given as a .conflist
	// Config is the raw configuration bytes exactly as given.
	Config    json.RawMessage `json:"config"`
	CreatedAt time.Time       `json:"createdAt"`
	QoS       *QoSPolicy      `json:"qos,omitempty"`
	// Cluster is set on a network shared by a cluster's nodes.
	Cluster *Cluster `json:"cluster,omitempty"`
	Peers   []Peer   `json:"peers"`
	// GC is the circuit process running the plugins' GC on the network,
	// while it does: connects wait for it, so GC never tears down an
	// attachment made after it listed the valid ones. Not in the CLI's JSON.
	GC *Process `json:"-"`
	// OwnedBridge is the bridge the plugins made at circuit's first
	// connect (it was not there before), which network delete removes
	// when nothing uses it any more. Not in the CLI's JSON.
	OwnedBridge string `json:"-"`
}

// PeerState is where a peer is in its life. A connect records intent
// before the CNI ADD, so a crash in between leaves a record that gc can
// finish.
type PeerState string

const (
	PeerConnecting    PeerState = "connecting"
	PeerConnected     PeerState = "connected"
	PeerDisconnecting PeerState = "disconnecting"
	// PeerUndoFailed is a connect that failed and whose undo (CNI DEL)
	// failed too: the plugins may have left an interface and an address
	// behind, which gc releases once a DEL succeeds.
	PeerUndoFailed PeerState = "undo-failed"
)

func (s PeerState) String() string { return string(s) }

// Peer is one attachment of a container to a network, keyed by
// (Network, ContainerID, IfName).
type Peer struct {
	Network     string     `json:"network"`
	ContainerID string     `json:"containerID"`
	PID         int        `json:"pid"`
	IfName      string     `json:"ifname"`
	IPs         []string   `json:"ips"` // CIDR notation
	MAC         string     `json:"mac,omitempty"`
	HostIf      string     `json:"hostInterface,omitempty"`
	Netns       string     `json:"netns"` // pinned netns path under the state dir
	State       PeerState  `json:"state"`
	ConnectedAt time.Time  `json:"connectedAt"`
	QoS         *QoSPolicy `json:"qos,omitempty"` // per-container override
	// Node is the cluster node the peer is on (cluster networks only).
	Node string `json:"node,omitempty"`
	// Settings are what its connect asked the plugins for; its DEL passes
	// the same.
	Settings
	// Owner is the circuit process connecting or disconnecting the peer,
	// so gc can tell work in progress from work a killed process left.
	Owner *Process `json:"owner,omitempty"`
	// PIDStart and BootID pin PID to one process of one boot, so a
	// record whose container is gone is told from a live one when its ID
	// is used again. Not part of the CLI's JSON.
	PIDStart uint64 `json:"-"`
	BootID   string `json:"-"`
	// Config is the network configuration the peer was added with, when
	// the network's has been replaced since (network create --force): its
	// DEL runs with it. Not in the CLI's JSON.
	Config json.RawMessage `json:"-"`
}

// Process identifies a process across PID reuse.
type Process struct {
	PID   int    `json:"pid"`
	Start uint64 `json:"start"` // clock ticks since boot
}

// ConnectRequest names a container (PID or runc ID) and a network, and
// what the plugins are asked for it (CNI capability arguments).
type ConnectRequest struct {
	Container string
	Network   string
	IfName    string // "" picks the first free ethN
	// ContainerID, when set (hook mode), is the identity; Container is then the PID.
	ContainerID string
	Settings
}

// Settings are what a connect asks of the plugins beyond an interface:
// each goes to the plugins that declare its capability.
type Settings struct {
	Publish      []PortMapping `json:"publish,omitempty"`      // portMappings
	RequestedIPs []string      `json:"requestedIPs,omitempty"` // ips: addresses asked for
	RequestedMAC string        `json:"requestedMAC,omitempty"` // mac
	Aliases      []string      `json:"aliases,omitempty"`      // aliases
	// Name is the container's name for plugins (CNI_ARGS K8S_POD_NAME):
	// its runc ID, or one given for a plain process.
	Name string `json:"name,omitempty"`
}

// IsZero reports whether nothing beyond an interface is asked for.
func (s Settings) IsZero() bool {
	return len(s.Publish) == 0 && len(s.RequestedIPs) == 0 && s.RequestedMAC == "" && len(s.Aliases) == 0 && s.Name == ""
}

type DisconnectRequest struct {
	Container string
	Network   string
	IfName    string // "" matches the container's only interface on the network
}

// Direction is the traffic a policy shapes: egress is what the container
// sends, ingress what it receives. "" means egress, or the direction
// already set when a policy is merged.
type Direction string

const (
	DirEgress  Direction = "egress"
	DirIngress Direction = "ingress"
	DirBoth    Direction = "both"
)

func (d Direction) String() string { return string(d) }

// PolicySource says where a peer's effective policy comes from.
type PolicySource string

const (
	SourceNetwork   PolicySource = "network"
	SourceContainer PolicySource = "container"
	SourceNone      PolicySource = "none"
)

func (s PolicySource) String() string { return string(s) }

// QoSPolicy shapes a container interface. Zero values mean "not set".
// Rates are in bits per second; in JSON, durations are strings ("50ms").
type QoSPolicy struct {
	Rate      uint64        `json:"rate,omitempty"`
	Ceiling   uint64        `json:"ceiling,omitempty"`
	Delay     time.Duration `json:"delay,omitempty"`
	Jitter    time.Duration `json:"jitter,omitempty"`
	Loss      float64       `json:"loss,omitempty"` // percent, 0-100
	Direction Direction     `json:"direction,omitempty"`
}

// NeedsNetem reports whether the policy uses netem (delay, jitter, loss).
func (p QoSPolicy) NeedsNetem() bool { return p.Delay > 0 || p.Jitter > 0 || p.Loss > 0 }

// IsZero reports whether the policy shapes nothing.
func (p QoSPolicy) IsZero() bool { return p.Rate == 0 && p.Ceiling == 0 && !p.NeedsNetem() }

// QoSCounters are the kernel's live counters for a shaped interface.
type QoSCounters struct {
	Bytes      uint64 `json:"bytes"`
	Packets    uint64 `json:"packets"`
	Drops      uint64 `json:"drops"`
	Overlimits uint64 `json:"overlimits"`
}

// PeerQoS is one peer's effective policy and counters.
type PeerQoS struct {
	Network     string       `json:"network"`
	ContainerID string       `json:"containerID"`
	PID         int          `json:"pid"`
	IfName      string       `json:"ifname"`
	Source      PolicySource `json:"source"`
	Policy      *QoSPolicy   `json:"policy,omitempty"`
	Egress      *QoSCounters `json:"egress,omitempty"`
	Ingress     *QoSCounters `json:"ingress,omitempty"`
	Error       string       `json:"error,omitempty"`
}

// Service is a load-balanced virtual address.
type Service struct {
	Name        string        `json:"name"`
	Address     string        `json:"address"` // host:port, IPv6 bracketed
	Protocol    string        `json:"protocol"`
	Scheduler   string        `json:"scheduler"`
	Persistence time.Duration `json:"persistence,omitempty"`
	Backend     string        `json:"backend"` // "ipvs" or "nftables" once created; "auto" on request
	Targets     []Target      `json:"targets"`
	CreatedAt   time.Time     `json:"createdAt"`
	// Cluster is set on a service every node of a cluster balances.
	Cluster bool `json:"cluster,omitempty"`
	// Drain is how long a drain circuit starts itself (a target tied to a
	// container that went) lets the target's connections run on.
	Drain time.Duration `json:"drain,omitempty"`
	// BootID is the boot during which circuit last programmed the service
	// into the kernel: IPVS services have no owner, so one circuit did not
	// program since this boot is not circuit's. Not part of the CLI's JSON.
	BootID string `json:"-"`
}

// Target is one real server behind a service.
type Target struct {
	Address string `json:"address"` // host:port
	Weight  int    `json:"weight"`
	Forward string `json:"forward,omitempty"` // nat, dr, tunnel
	// DrainUntil is set while the target drains: the kernel gives it
	// weight 0 (no new connections; Weight is kept, for lb set to give
	// back), and it is removed when its connections end or at this time,
	// whichever comes first.
	DrainUntil time.Time `json:"drainUntil,omitzero"`
	// DrainOwner is the circuit process waiting on the drain; when it is
	// gone (interrupted, crashed, rebooted) the next lb command on the
	// service, gc or restore finishes the drain. Not in the CLI's JSON.
	DrainOwner Process `json:"-"`
}

// Draining reports whether the target is draining.
func (t Target) Draining() bool { return !t.DrainUntil.IsZero() }

// TargetChange is an lb set: the target's new weight and forwarding
// method, each left as it is when zero.
type TargetChange struct {
	Address string
	Weight  int
	Forward string
}

// DrainRequest is an lb remove --drain: the targets get no new
// connections, and go when their connections end or Timeout has passed.
type DrainRequest struct {
	Service string
	Targets []string
	Timeout time.Duration
	// Progress, when set, hears what the drain is waiting on.
	Progress func(line string) `json:"-"`
}

// Counters are kernel statistics of a service or target.
type Counters struct {
	Connections uint64 `json:"connections"`
	Packets     uint64 `json:"packets"`
	Bytes       uint64 `json:"bytes"`
}

// ServiceStatus is a service with live kernel counters.
type ServiceStatus struct {
	Service
	Stats   Counters            `json:"stats"`
	Targets map[string]Counters `json:"targetStats"`
	// Active is the connections each target holds now (what a drain
	// waits on), by target address.
	Active map[string]uint64 `json:"activeConnections"`
}

// HookRequest is what runc handed a hook, plus the environment's choices.
type HookRequest struct {
	ID          string
	Status      string // creating, created, running, stopped
	PID         int
	Bundle      string
	Annotations map[string]string
	CNIConf     string   // CNI_CONF: a conf or conflist file
	Networks    []string // CIRCUIT_NETWORK or the circuit.network annotation
	IfName      string   // CIRCUIT_IFNAME
	// Settings from the container's circuit.* annotations or the hook's
	// CIRCUIT_PUBLISH, CIRCUIT_IP, CIRCUIT_MAC and CIRCUIT_ALIAS.
	Settings
}

// HookResult says what a hook did, one line per action.
type HookResult struct {
	Actions []string
}

// Report lists what restore or gc did (or would do, with --dry-run).
type Report struct {
	Actions []string `json:"actions"`
}
