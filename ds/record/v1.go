package record

import (
	"encoding/json"
	"fmt"
	"time"
)

// The first layout (datastore schema 1) stored the CLI's JSON of the
// domain types as they were then. These are frozen copies of those shapes,
// for the migration to records: never change them.

type v1Network struct {
	Name       string          `json:"name"`
	Type       string          `json:"type"`
	Plugins    []string        `json:"plugins"`
	CNIVersion string          `json:"cniVersion"`
	IsList     bool            `json:"isList"`
	Config     json.RawMessage `json:"config"`
	CreatedAt  time.Time       `json:"createdAt"`
	QoS        *v1QoS          `json:"qos,omitempty"`
}

type v1QoS struct {
	Rate      uint64     `json:"rate,omitempty"`
	Ceiling   uint64     `json:"ceiling,omitempty"`
	Delay     v1Duration `json:"delay,omitempty"`
	Jitter    v1Duration `json:"jitter,omitempty"`
	Loss      float64    `json:"loss,omitempty"`
	Direction string     `json:"direction,omitempty"`
}

type v1Peer struct {
	Network     string    `json:"network"`
	ContainerID string    `json:"containerID"`
	PID         int       `json:"pid"`
	IfName      string    `json:"ifname"`
	IPs         []string  `json:"ips"`
	MAC         string    `json:"mac,omitempty"`
	HostIf      string    `json:"hostInterface,omitempty"`
	Netns       string    `json:"netns"`
	State       string    `json:"state"`
	ConnectedAt time.Time `json:"connectedAt"`
	QoS         *v1QoS    `json:"qos,omitempty"`
	Owner       *struct {
		PID   int    `json:"pid"`
		Start uint64 `json:"start"`
	} `json:"owner,omitempty"`
}

type v1Service struct {
	Name        string     `json:"name"`
	Address     string     `json:"address"`
	Protocol    string     `json:"protocol"`
	Scheduler   string     `json:"scheduler"`
	Persistence v1Duration `json:"persistence,omitempty"`
	Backend     string     `json:"backend"`
	Targets     []Target   `json:"targets"`
	CreatedAt   time.Time  `json:"createdAt"`
}

// v1Duration read "50ms" strings (and, for robustness, nanoseconds).
type v1Duration int64

func (d *v1Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var n int64
		if err := json.Unmarshal(b, &n); err != nil {
			return fmt.Errorf("duration: %s is neither a string nor a number", b)
		}
		*d = v1Duration(n)
		return nil
	}
	v, err := time.ParseDuration(s)
	*d = v1Duration(v)
	return err
}

func (q *v1QoS) record() *QoS {
	if q == nil {
		return nil
	}
	return &QoS{RateBits: q.Rate, CeilingBits: q.Ceiling, DelayNanos: int64(q.Delay), JitterNanos: int64(q.Jitter),
		LossPercent: q.Loss, Direction: q.Direction}
}

// NetworkFromV1 converts a schema-1 network value to a record.
func NetworkFromV1(b []byte) ([]byte, error) {
	var o v1Network
	if err := json.Unmarshal(b, &o); err != nil {
		return nil, fmt.Errorf("decode schema 1 network: %w", err)
	}
	return json.Marshal(Network{V: Version, Name: o.Name, Type: o.Type, Plugins: o.Plugins, CNIVersion: o.CNIVersion,
		IsList: o.IsList, Config: o.Config, CreatedAt: o.CreatedAt, QoS: o.QoS.record()})
}

// PeerFromV1 converts a schema-1 peer value to a record.
func PeerFromV1(b []byte) ([]byte, error) {
	var o v1Peer
	if err := json.Unmarshal(b, &o); err != nil {
		return nil, fmt.Errorf("decode schema 1 peer: %w", err)
	}
	r := Peer{V: Version, Network: o.Network, ContainerID: o.ContainerID, PID: o.PID, IfName: o.IfName, IPs: o.IPs,
		MAC: o.MAC, HostIf: o.HostIf, Netns: o.Netns, State: o.State, ConnectedAt: o.ConnectedAt, QoS: o.QoS.record()}
	if o.Owner != nil {
		r.Owner = &Process{PID: o.Owner.PID, StartTicks: o.Owner.Start}
	}
	return json.Marshal(r)
}

// ServiceFromV1 converts a schema-1 service value to a record.
func ServiceFromV1(b []byte) ([]byte, error) {
	var o v1Service
	if err := json.Unmarshal(b, &o); err != nil {
		return nil, fmt.Errorf("decode schema 1 service: %w", err)
	}
	if o.Targets == nil {
		o.Targets = []Target{}
	}
	return json.Marshal(Service{V: Version, Name: o.Name, Address: o.Address, Protocol: o.Protocol, Scheduler: o.Scheduler,
		PersistenceNanos: int64(o.Persistence), Backend: o.Backend, Targets: o.Targets, CreatedAt: o.CreatedAt})
}
