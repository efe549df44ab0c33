package agent

import (
	"fmt"
	"net/netip"
	"sync"

	"github.com/circuit-cni/circuit/pkg/masq"
	"github.com/circuit-cni/circuit/pkg/overlay"
)

// Dataplane is the node's kernel as the agent programs it: the overlays
// (pkg/overlay) and the cluster masquerade (pkg/masq). The agent decides
// what they should hold; a Dataplane only makes the kernel hold it. Tests
// give the agent a fake.
type Dataplane interface {
	// Underlay is the link that holds the node's advertised address.
	Underlay(local netip.Addr) (overlay.Underlay, error)
	// SyncOverlays makes circuit's overlay devices exactly nets.
	SyncOverlays(nets []overlay.Network) (overlay.Report, error)
	// SyncMasquerade makes circuit's cluster NAT table do r.
	SyncMasquerade(r masq.Rules) (bool, error)
	Close()
}

// kernel is the Dataplane of the agent's own network namespace.
type kernel struct {
	mu sync.Mutex // one netlink conversation at a time
	ov *overlay.Handle
	mq *masq.Handle
}

// NewKernel opens the Dataplane of the caller's network namespace.
func NewKernel() (Dataplane, error) {
	ov, err := overlay.Open("")
	if err != nil {
		return nil, err
	}
	mq, err := masq.Open("")
	if err != nil {
		ov.Close()
		return nil, fmt.Errorf("cluster masquerade: %w", err)
	}
	return &kernel{ov: ov, mq: mq}, nil
}

func (k *kernel) Underlay(local netip.Addr) (overlay.Underlay, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.ov.Underlay(local)
}

func (k *kernel) SyncOverlays(nets []overlay.Network) (overlay.Report, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.ov.Sync(nets)
}

func (k *kernel) SyncMasquerade(r masq.Rules) (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.mq.Sync(r)
}

func (k *kernel) Close() {
	k.ov.Close()
	k.mq.Close()
}
