// Package controller defines what circuit can do, independent of how it is
// done.
//
// The CLI in cmd/ talks only to the Controller interface, in the types of
// package api. The default implementation lives in controller/local; an
// in-memory one for tests in controller/fake. A second implementation plugs
// in by changing one constructor and passing controller/contract's suite.
package controller

import (
	"context"
	"time"

	"github.com/circuit-cni/circuit/api"
)

// Controller is circuit's whole capability set. Errors wrap api's sentinels.
type Controller interface {
	// Networks. A request with an Overlay makes a cluster network (through
	// circuit-agent).
	CreateNetwork(ctx context.Context, req api.CreateNetworkRequest) (*api.Network, error)
	ListNetworks(ctx context.Context) ([]api.Network, error)
	InspectNetwork(ctx context.Context, name string) (*api.Network, error)
	DeleteNetwork(ctx context.Context, name string, force bool) error

	// Peers. Connect returns the recorded peer.
	Connect(ctx context.Context, req api.ConnectRequest) (*api.Peer, error)
	Disconnect(ctx context.Context, req api.DisconnectRequest) error

	// Quality of service. container == "" addresses the network's policy.
	SetQoS(ctx context.Context, network, container string, p api.QoSPolicy) error
	ResetQoS(ctx context.Context, network, container string) error
	ShowQoS(ctx context.Context, network string) ([]api.PeerQoS, error)

	// Load balancing.
	CreateService(ctx context.Context, svc api.Service) (*api.Service, error)
	AddTargets(ctx context.Context, service string, targets []api.Target) error
	RemoveTargets(ctx context.Context, service string, targets []string) error
	// SetTarget changes one target's weight or forwarding in place.
	SetTarget(ctx context.Context, service string, change api.TargetChange) error
	// DrainTargets gives targets no new connections and removes each when
	// its connections end or the timeout passed, whichever is first. It
	// waits; interrupted (ctx), it leaves them draining, and the next lb
	// command on the service, gc or restore finishes them.
	DrainTargets(ctx context.Context, req api.DrainRequest) (*api.Report, error)
	DeleteService(ctx context.Context, service string) error
	ListServices(ctx context.Context) ([]api.Service, error)
	ShowService(ctx context.Context, service string) (*api.ServiceStatus, error)

	// runc hooks: the OCI state runc wrote on stdin, with the hook's settings.
	Hook(ctx context.Context, req api.HookRequest) (*api.HookResult, error)

	// Repair.
	Restore(ctx context.Context) (*api.Report, error)
	GC(ctx context.Context, dryRun bool) (*api.Report, error)

	// Cluster (through circuit-agent): the nodes, and the blocks of nodes
	// lost longer than grace given back.
	ListNodes(ctx context.Context) ([]api.Node, error)
	GCCluster(ctx context.Context, grace time.Duration, dryRun bool) (*api.Report, error)

	Close() error
}
