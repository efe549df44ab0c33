// Package ds defines circuit's datastore: networks, peers, QoS policies and
// load-balancer services, changed one transaction at a time.
//
// The default implementation is ds/bolt. An implementation must not hold its
// lock between transactions: circuit calls CNI plugins between them, and
// other circuit processes (hooks of other containers) must make progress
// meanwhile.
package ds

import (
	"context"

	"github.com/circuit-cni/circuit/api"
)

// Datastore runs transactions. Update's fn runs in one read-write transaction
// that commits only if fn returns nil; View's fn sees a consistent snapshot.
// Both wait for the store's lock up to a timeout and then fail with an error
// wrapping api.ErrBusy.
type Datastore interface {
	Update(ctx context.Context, fn func(Tx) error) error
	View(ctx context.Context, fn func(Tx) error) error
	Close() error
}

// Tx is one transaction. Getters return copies that outlive the transaction,
// and errors wrapping api.ErrNotFound for missing objects.
// Network records never carry Peers; peers are stored and read separately.
type Tx interface {
	GetNetwork(name string) (*api.Network, error)
	ListNetworks() ([]api.Network, error) // sorted by name
	PutNetwork(n *api.Network) error      // create or replace
	DeleteNetwork(name string) error      // also deletes its peers

	GetPeer(network, containerID, ifname string) (*api.Peer, error)
	ListPeers(network string) ([]api.Peer, error) // "" lists all networks' peers; sorted
	PutPeer(p *api.Peer) error                    // network must exist
	DeletePeer(network, containerID, ifname string) error
	// ContainerPeers lists one container's peers on one network (one per
	// interface, sorted); its cost does not grow with the network's peers.
	ContainerPeers(network, containerID string) ([]api.Peer, error)

	GetService(name string) (*api.Service, error)
	ListServices() ([]api.Service, error) // sorted by name
	PutService(s *api.Service) error
	DeleteService(name string) error
}
