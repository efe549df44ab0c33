package qos

import "time"

// Direction is the traffic a Policy shapes: what the interface sends
// (egress), what it receives (ingress, through an IFB device), or both.
type Direction string

const (
	Egress  Direction = "egress"
	Ingress Direction = "ingress"
	Both    Direction = "both"
)

// Policy is what to install on an interface. Zero values mean "not set";
// rates are in bits per second; an empty Direction is Egress.
type Policy struct {
	Rate      uint64
	Ceiling   uint64
	Delay     time.Duration
	Jitter    time.Duration
	Loss      float64 // percent, 0-100
	Direction Direction
}

// NeedsNetem reports whether the policy uses netem (delay, jitter, loss).
func (p Policy) NeedsNetem() bool { return p.Delay > 0 || p.Jitter > 0 || p.Loss > 0 }

// IsZero reports whether the policy shapes nothing.
func (p Policy) IsZero() bool { return p.Rate == 0 && p.Ceiling == 0 && !p.NeedsNetem() }

// Counters are the kernel's live counters of a shaped direction.
type Counters struct {
	Bytes      uint64
	Packets    uint64
	Drops      uint64
	Overlimits uint64
}
