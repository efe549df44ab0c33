// Package record is how circuit's state is written down: versioned record
// types, apart from the CLI's JSON (package api's tags), and the codec
// between them and the domain types. Every datastore (bbolt on one host,
// etcd for a cluster) stores these bytes, so a record written by one can be
// read by the other, and the CLI's output can change without a migration.
//
// Each record carries its version in "v". A reader refuses a version newer
// than it knows, naming it; older versions are converted by the datastore's
// migrations (see V1 for the first layout, which was the CLI's JSON).
//
// Durations are integer nanoseconds and rates integer bits per second, so
// nothing depends on how the CLI prints them.
package record

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/circuit-cni/circuit/api"
)

// Version is the record layout this code writes.
const Version = 2

// Network is a network's record, without its peers (they have their own).
type Network struct {
	V          int             `json:"v"`
	Name       string          `json:"name"`
	Type       string          `json:"type"`
	Plugins    []string        `json:"plugins"`
	CNIVersion string          `json:"cniVersion"`
	IsList     bool            `json:"isList"`
	Config     json.RawMessage `json:"config"` // exactly as the user gave it
	CreatedAt  time.Time       `json:"createdAt"`
	QoS        *QoS            `json:"qos,omitempty"`
	GC         *Process        `json:"gc,omitempty"` // the circuit process running the plugins' GC
	// OwnedBridge is the bridge circuit's first connect made.
	OwnedBridge string `json:"ownedBridge,omitempty"`
	// Cluster is set on a cluster network (its replica on a node).
	Cluster *Cluster `json:"cluster,omitempty"`
}

// Cluster is a cluster network's overlay, block sizes, VNI and the blocks
// the node holding the record holds.
type Cluster struct {
	Overlay    string   `json:"overlay"`
	BlockSize  int      `json:"blockSize"`
	BlockSize6 int      `json:"blockSize6"`
	Blocks     []string `json:"blocks,omitempty"`
	VNI        int      `json:"vni,omitempty"`
	Node       string   `json:"node,omitempty"`
	MTU        int      `json:"mtu,omitempty"`
}

// QoS is a stored policy.
type QoS struct {
	RateBits    uint64  `json:"rateBits,omitempty"`
	CeilingBits uint64  `json:"ceilingBits,omitempty"`
	DelayNanos  int64   `json:"delayNanos,omitempty"`
	JitterNanos int64   `json:"jitterNanos,omitempty"`
	LossPercent float64 `json:"lossPercent,omitempty"`
	Direction   string  `json:"direction,omitempty"`
}

// Peer is one container interface on one network.
type Peer struct {
	V           int       `json:"v"`
	Network     string    `json:"network"`
	ContainerID string    `json:"containerID"`
	PID         int       `json:"pid"`
	IfName      string    `json:"ifname"`
	IPs         []string  `json:"ips,omitempty"`
	MAC         string    `json:"mac,omitempty"`
	HostIf      string    `json:"hostIf,omitempty"`
	Netns       string    `json:"netns"`
	State       string    `json:"state"`
	ConnectedAt time.Time `json:"connectedAt"`
	QoS         *QoS      `json:"qos,omitempty"`
	Owner       *Process  `json:"owner,omitempty"`
	PIDStart    uint64    `json:"pidStartTicks,omitempty"` // with bootID, which process PID was
	BootID      string    `json:"bootID,omitempty"`
	// Config is the configuration the peer was added with, kept when the
	// network's was replaced under it.
	Config json.RawMessage `json:"config,omitempty"`
	Node   string          `json:"node,omitempty"` // cluster networks: the peer's node
	// What the connect asked the plugins for (capability arguments).
	Publish      []PortMapping `json:"publish,omitempty"`
	RequestedIPs []string      `json:"requestedIPs,omitempty"`
	RequestedMAC string        `json:"requestedMAC,omitempty"`
	Aliases      []string      `json:"aliases,omitempty"`
	Name         string        `json:"name,omitempty"`
}

// PortMapping is a published port.
type PortMapping struct {
	HostIP        string `json:"hostIP,omitempty"`
	HostPort      uint16 `json:"hostPort"`
	ContainerPort uint16 `json:"containerPort"`
	Protocol      string `json:"protocol"`
}

// Process identifies a process across PID reuse.
type Process struct {
	PID        int    `json:"pid"`
	StartTicks uint64 `json:"startTicks"`
}

// Service is a load-balanced service with its targets.
type Service struct {
	V                int       `json:"v"`
	Name             string    `json:"name"`
	Address          string    `json:"address"`
	Protocol         string    `json:"protocol"`
	Scheduler        string    `json:"scheduler"`
	PersistenceNanos int64     `json:"persistenceNanos,omitempty"`
	Backend          string    `json:"backend"`
	Targets          []Target  `json:"targets"`
	CreatedAt        time.Time `json:"createdAt"`
	BootID           string    `json:"bootID,omitempty"` // the boot circuit last programmed it in
	Cluster          bool      `json:"cluster,omitempty"`
	DrainNanos       int64     `json:"drainNanos,omitempty"`
}

// Target is one real server of a service.
type Target struct {
	Address    string    `json:"address"`
	Weight     int       `json:"weight"`
	Forward    string    `json:"forward,omitempty"`
	DrainUntil time.Time `json:"drainUntil,omitzero"`
	DrainOwner *Process  `json:"drainOwner,omitempty"`
}

// EncodeNetwork writes a network's record; n.Peers is not part of it.
func EncodeNetwork(n *api.Network) ([]byte, error) {
	return json.Marshal(Network{
		V: Version, Name: n.Name, Type: n.Type, Plugins: n.Plugins, CNIVersion: n.CNIVersion,
		IsList: n.IsList, Config: n.Config, CreatedAt: n.CreatedAt, QoS: encodeQoS(n.QoS), GC: encodeProcess(n.GC),
		OwnedBridge: n.OwnedBridge, Cluster: (*Cluster)(n.Cluster),
	})
}

// DecodeNetwork reads a network's record.
func DecodeNetwork(b []byte) (*api.Network, error) {
	var r Network
	if err := decode(b, &r, &r.V); err != nil {
		return nil, err
	}
	return &api.Network{
		Name: r.Name, Type: r.Type, Plugins: r.Plugins, CNIVersion: r.CNIVersion, IsList: r.IsList,
		Config: r.Config, CreatedAt: r.CreatedAt, QoS: decodeQoS(r.QoS), GC: decodeProcess(r.GC),
		OwnedBridge: r.OwnedBridge, Cluster: (*api.Cluster)(r.Cluster),
	}, nil
}

// EncodePeer writes a peer's record.
func EncodePeer(p *api.Peer) ([]byte, error) {
	r := Peer{
		V: Version, Network: p.Network, ContainerID: p.ContainerID, PID: p.PID, IfName: p.IfName,
		IPs: p.IPs, MAC: p.MAC, HostIf: p.HostIf, Netns: p.Netns, State: string(p.State),
		ConnectedAt: p.ConnectedAt, QoS: encodeQoS(p.QoS), PIDStart: p.PIDStart, BootID: p.BootID, Config: p.Config, Node: p.Node,
		RequestedIPs: p.RequestedIPs, RequestedMAC: p.RequestedMAC, Aliases: p.Aliases, Name: p.Name,
	}
	for _, m := range p.Publish {
		r.Publish = append(r.Publish, PortMapping(m))
	}
	r.Owner = encodeProcess(p.Owner)
	return json.Marshal(r)
}

// DecodePeer reads a peer's record.
func DecodePeer(b []byte) (*api.Peer, error) {
	var r Peer
	if err := decode(b, &r, &r.V); err != nil {
		return nil, err
	}
	p := &api.Peer{
		Network: r.Network, ContainerID: r.ContainerID, PID: r.PID, IfName: r.IfName,
		IPs: r.IPs, MAC: r.MAC, HostIf: r.HostIf, Netns: r.Netns, State: api.PeerState(r.State),
		ConnectedAt: r.ConnectedAt, QoS: decodeQoS(r.QoS), PIDStart: r.PIDStart, BootID: r.BootID, Config: r.Config, Node: r.Node,
	}
	p.Settings = api.Settings{RequestedIPs: r.RequestedIPs, RequestedMAC: r.RequestedMAC, Aliases: r.Aliases, Name: r.Name}
	for _, m := range r.Publish {
		p.Publish = append(p.Publish, api.PortMapping(m))
	}
	p.Owner = decodeProcess(r.Owner)
	return p, nil
}

// EncodeService writes a service's record.
func EncodeService(s *api.Service) ([]byte, error) {
	r := Service{
		V: Version, Name: s.Name, Address: s.Address, Protocol: s.Protocol, Scheduler: s.Scheduler,
		PersistenceNanos: int64(s.Persistence), Backend: s.Backend, Targets: []Target{}, CreatedAt: s.CreatedAt,
		BootID: s.BootID, Cluster: s.Cluster, DrainNanos: int64(s.Drain),
	}
	for _, t := range s.Targets {
		rt := Target{Address: t.Address, Weight: t.Weight, Forward: t.Forward, DrainUntil: t.DrainUntil}
		if t.DrainOwner != (api.Process{}) {
			rt.DrainOwner = encodeProcess(&t.DrainOwner)
		}
		r.Targets = append(r.Targets, rt)
	}
	return json.Marshal(r)
}

// DecodeService reads a service's record.
func DecodeService(b []byte) (*api.Service, error) {
	var r Service
	if err := decode(b, &r, &r.V); err != nil {
		return nil, err
	}
	s := &api.Service{
		Name: r.Name, Address: r.Address, Protocol: r.Protocol, Scheduler: r.Scheduler,
		Persistence: time.Duration(r.PersistenceNanos), Backend: r.Backend, Targets: []api.Target{}, CreatedAt: r.CreatedAt,
		BootID: r.BootID, Cluster: r.Cluster, Drain: time.Duration(r.DrainNanos),
	}
	for _, t := range r.Targets {
		at := api.Target{Address: t.Address, Weight: t.Weight, Forward: t.Forward, DrainUntil: t.DrainUntil}
		if o := decodeProcess(t.DrainOwner); o != nil {
			at.DrainOwner = *o
		}
		s.Targets = append(s.Targets, at)
	}
	return s, nil
}

func encodeProcess(p *api.Process) *Process {
	if p == nil {
		return nil
	}
	return &Process{PID: p.PID, StartTicks: p.Start}
}

func decodeProcess(r *Process) *api.Process {
	if r == nil {
		return nil
	}
	return &api.Process{PID: r.PID, Start: r.StartTicks}
}

func encodeQoS(p *api.QoSPolicy) *QoS {
	if p == nil {
		return nil
	}
	return &QoS{RateBits: p.Rate, CeilingBits: p.Ceiling, DelayNanos: int64(p.Delay), JitterNanos: int64(p.Jitter),
		LossPercent: p.Loss, Direction: string(p.Direction)}
}

func decodeQoS(r *QoS) *api.QoSPolicy {
	if r == nil {
		return nil
	}
	return &api.QoSPolicy{Rate: r.RateBits, Ceiling: r.CeilingBits, Delay: time.Duration(r.DelayNanos),
		Jitter: time.Duration(r.JitterNanos), Loss: r.LossPercent, Direction: api.Direction(r.Direction)}
}

// decode unmarshals a record and checks its version.
func decode(b []byte, v any, version *int) error {
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decode datastore record: %w", err)
	}
	switch {
	case *version > Version:
		return fmt.Errorf("datastore record version %d is newer than this circuit supports (%d)", *version, Version)
	case *version < Version:
		return fmt.Errorf("datastore record version %d is older than %d and was not migrated", *version, Version)
	}
	return nil
}
