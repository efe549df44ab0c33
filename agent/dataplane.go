package agent

import (
	"fmt"
	"net/netip"
	"os"
	"sync"

	"github.com/circuit-cni/circuit/pkg/lb"
	"github.com/circuit-cni/circuit/pkg/masq"
	"github.com/circuit-cni/circuit/pkg/overlay"
)

// Dataplane is the node's kernel as the agent programs it: the overlays
// (pkg/overlay), the cluster masquerade (pkg/masq) and the cluster's
// services (pkg/lb). The agent decides what they should hold; a Dataplane
// only makes the kernel hold it. Tests give the agent a fake.
type Dataplane interface {
	// Underlay is the link that holds the node's advertised address.
	Underlay(local netip.Addr) (overlay.Underlay, error)
	// SyncOverlays makes circuit's overlay devices exactly nets.
	SyncOverlays(nets []overlay.Network) (overlay.Report, error)
	// SyncMasquerade makes circuit's cluster NAT table do r.
	SyncMasquerade(r masq.Rules) (bool, error)
	// Balancer opens the named load-balancer backend ("auto": the one
	// the kernel has). The agent closes it.
	Balancer(backend string) (lb.Backend, error)
	Close()
}

// kernel is the Dataplane of the agent's own network namespace.
type kernel struct {
	mu sync.Mutex // one netlink conversation at a time
	ov *overlay.Handle
	mq *masq.Handle
}

// Balancer opens a backend of the agent's namespace. IPVS then tracks its
// connections in conntrack (net.ipv4.vs.conntrack=1, per namespace), so the
// cluster masquerade sees them: without it, a client outside the cluster's
// ranges balanced to another node would get no reply.
func (k *kernel) Balancer(backend string) (lb.Backend, error) {
	b, err := lb.Open(backend, "")
	if err != nil {
		return nil, err
	}
	if b.Name() == lb.IPVS {
		if err := os.WriteFile("/proc/sys/net/ipv4/vs/conntrack", []byte("1"), 0o644); err != nil {
			b.Close()
			return nil, fmt.Errorf("ipvs: track connections in conntrack: %w", err)
		}
	}
	return b, nil
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
