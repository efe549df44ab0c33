package bolt

import (
	"errors"
	"fmt"

	"go.etcd.io/bbolt"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/ds/record"
)

var errReadOnly = errors.New("write in a read-only transaction")

// tx implements ds.Tx. Values are JSON-decoded inside the transaction, which
// copies them out of bbolt's memory map: they stay valid after it closes.
type tx struct {
	btx  *bbolt.Tx     // nil in a View of a store with no file
	root *bbolt.Bucket // v1/; nil until the first write creates it
	path string        // the file, for errors about a damaged one
}

var _ ds.Tx = (*tx)(nil)

// GetNetwork returns the named network, without peers.
func (t *tx) GetNetwork(name string) (*api.Network, error) {
	if err := validName("network", name); err != nil {
		return nil, err
	}
	nb := t.network(name)
	if nb == nil {
		return nil, notFound("network %q", name)
	}
	return decode(t, nb.Get(keyConfig), record.DecodeNetwork, "network %q", name)
}

// ListNetworks returns every network, without peers, sorted by name.
func (t *tx) ListNetworks() ([]api.Network, error) {
	nets := []api.Network{}
	b := t.bucket(bucketNetworks)
	if b == nil {
		return nets, nil
	}
	err := b.ForEachBucket(func(k []byte) error {
		n, err := decode(t, b.Bucket(k).Get(keyConfig), record.DecodeNetwork, "network %q", k)
		if err != nil {
			return err
		}
		nets = append(nets, *n)
		return nil
	})
	return nets, err
}

// PutNetwork creates or replaces a network record; a replaced network keeps
// its peers. n.Peers is not stored: peers have their own records.
func (t *tx) PutNetwork(n *api.Network) error {
	if n == nil {
		return fmt.Errorf("put network: nil network: %w", api.ErrInvalid)
	}
	if err := t.writable("put network %q", n.Name); err != nil {
		return err
	}
	if err := validName("network", n.Name); err != nil {
		return err
	}
	data, err := record.EncodeNetwork(n)
	if err != nil {
		return fmt.Errorf("put network %q: %w", n.Name, err)
	}
	nb, err := t.root.Bucket(bucketNetworks).CreateBucketIfNotExists([]byte(n.Name))
	if err != nil {
		return fmt.Errorf("put network %q: %w", n.Name, err)
	}
	if err := nb.Put(keyConfig, data); err != nil {
		return fmt.Errorf("put network %q: %w", n.Name, err)
	}
	return nil
}

// DeleteNetwork deletes a network and, as they live in its bucket, its peers.
func (t *tx) DeleteNetwork(name string) error {
	if err := t.writable("delete network %q", name); err != nil {
		return err
	}
	if err := validName("network", name); err != nil {
		return err
	}
	if t.network(name) == nil {
		return notFound("network %q", name)
	}
	if err := t.root.Bucket(bucketNetworks).DeleteBucket([]byte(name)); err != nil {
		return fmt.Errorf("delete network %q: %w", name, err)
	}
	return nil
}

// GetPeer returns one attachment.
func (t *tx) GetPeer(network, containerID, ifname string) (*api.Peer, error) {
	if err := validPeerKey(network, containerID, ifname); err != nil {
		return nil, err
	}
	nb := t.network(network)
	if nb == nil {
		return nil, notFound("network %q", network)
	}
	raw := get(peerBucket(nb, containerID), ifname)
	if raw == nil {
		return nil, peerNotFound(network, containerID, ifname)
	}
	return decode(t, raw, record.DecodePeer, "peer %q", peerName(network, containerID, ifname))
}

// ListPeers returns the peers of one network, or of all with network "",
// sorted by network, container ID and interface name.
func (t *tx) ListPeers(network string) ([]api.Peer, error) {
	peers := []api.Peer{}
	if network != "" {
		if err := validName("network", network); err != nil {
			return nil, err
		}
		nb := t.network(network)
		if nb == nil {
			return nil, notFound("network %q", network)
		}
		return t.appendPeers(peers, nb, network)
	}
	b := t.bucket(bucketNetworks)
	if b == nil {
		return peers, nil
	}
	err := b.ForEachBucket(func(k []byte) error {
		var err error
		peers, err = t.appendPeers(peers, b.Bucket(k), string(k))
		return err
	})
	return peers, err
}

// ContainerPeers returns one container's attachments to one network.
func (t *tx) ContainerPeers(network, containerID string) ([]api.Peer, error) {
	if err := validName("network", network); err != nil {
		return nil, err
	}
	if err := validName("container ID", containerID); err != nil {
		return nil, err
	}
	nb := t.network(network)
	if nb == nil {
		return nil, notFound("network %q", network)
	}
	peers := []api.Peer{}
	cb := peerBucket(nb, containerID)
	if cb == nil {
		return peers, nil
	}
	err := cb.ForEach(func(ifname, v []byte) error {
		p, err := decode(t, v, record.DecodePeer, "peer %q", peerName(network, containerID, string(ifname)))
		if err != nil {
			return err
		}
		peers = append(peers, *p)
		return nil
	})
	return peers, err
}

// PutPeer creates or replaces an attachment on an existing network.
func (t *tx) PutPeer(p *api.Peer) error {
	if p == nil {
		return fmt.Errorf("put peer: nil peer: %w", api.ErrInvalid)
	}
	name := peerName(p.Network, p.ContainerID, p.IfName)
	if err := t.writable("put peer %q", name); err != nil {
		return err
	}
	if err := validPeerKey(p.Network, p.ContainerID, p.IfName); err != nil {
		return err
	}
	nb := t.network(p.Network)
	if nb == nil {
		return fmt.Errorf("put peer %q: %w", name, notFound("network %q", p.Network))
	}
	data, err := record.EncodePeer(p)
	if err != nil {
		return fmt.Errorf("put peer %q: %w", name, err)
	}
	pb, err := nb.CreateBucketIfNotExists(bucketPeers)
	if err != nil {
		return fmt.Errorf("put peer %q: %w", name, err)
	}
	cb, err := pb.CreateBucketIfNotExists([]byte(p.ContainerID))
	if err != nil {
		return fmt.Errorf("put peer %q: %w", name, err)
	}
	if err := cb.Put([]byte(p.IfName), data); err != nil {
		return fmt.Errorf("put peer %q: %w", name, err)
	}
	return nil
}

// DeletePeer deletes one attachment, and its container's bucket once empty.
func (t *tx) DeletePeer(network, containerID, ifname string) error {
	name := peerName(network, containerID, ifname)
	if err := t.writable("delete peer %q", name); err != nil {
		return err
	}
	if err := validPeerKey(network, containerID, ifname); err != nil {
		return err
	}
	nb := t.network(network)
	if nb == nil {
		return notFound("network %q", network)
	}
	cb := peerBucket(nb, containerID)
	if get(cb, ifname) == nil {
		return peerNotFound(network, containerID, ifname)
	}
	if err := cb.Delete([]byte(ifname)); err != nil {
		return fmt.Errorf("delete peer %q: %w", name, err)
	}
	if k, _ := cb.Cursor().First(); k == nil {
		if err := nb.Bucket(bucketPeers).DeleteBucket([]byte(containerID)); err != nil {
			return fmt.Errorf("delete peer %q: %w", name, err)
		}
	}
	return nil
}

// GetService returns the named service.
func (t *tx) GetService(name string) (*api.Service, error) {
	if err := validName("service", name); err != nil {
		return nil, err
	}
	raw := get(t.bucket(bucketServices), name)
	if raw == nil {
		return nil, notFound("service %q", name)
	}
	return decode(t, raw, record.DecodeService, "service %q", name)
}

// ListServices returns every service, sorted by name.
func (t *tx) ListServices() ([]api.Service, error) {
	svcs := []api.Service{}
	b := t.bucket(bucketServices)
	if b == nil {
		return svcs, nil
	}
	err := b.ForEach(func(k, v []byte) error {
		s, err := decode(t, v, record.DecodeService, "service %q", k)
		if err != nil {
			return err
		}
		svcs = append(svcs, *s)
		return nil
	})
	return svcs, err
}

// PutService creates or replaces a service.
func (t *tx) PutService(s *api.Service) error {
	if s == nil {
		return fmt.Errorf("put service: nil service: %w", api.ErrInvalid)
	}
	if err := t.writable("put service %q", s.Name); err != nil {
		return err
	}
	if err := validName("service", s.Name); err != nil {
		return err
	}
	data, err := record.EncodeService(s)
	if err != nil {
		return fmt.Errorf("put service %q: %w", s.Name, err)
	}
	if err := t.root.Bucket(bucketServices).Put([]byte(s.Name), data); err != nil {
		return fmt.Errorf("put service %q: %w", s.Name, err)
	}
	return nil
}

// DeleteService deletes a service.
func (t *tx) DeleteService(name string) error {
	if err := t.writable("delete service %q", name); err != nil {
		return err
	}
	if err := validName("service", name); err != nil {
		return err
	}
	b := t.root.Bucket(bucketServices)
	if b.Get([]byte(name)) == nil {
		return notFound("service %q", name)
	}
	if err := b.Delete([]byte(name)); err != nil {
		return fmt.Errorf("delete service %q: %w", name, err)
	}
	return nil
}

// writable fails in a View. bbolt would refuse the write itself, but not
// in a View of a store with no file, which has no bbolt transaction.
func (t *tx) writable(format string, args ...any) error {
	if t.btx == nil || !t.btx.Writable() {
		return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), errReadOnly)
	}
	return nil
}

// bucket returns a top-level bucket under v1/, or nil on an empty store.
func (t *tx) bucket(name []byte) *bbolt.Bucket {
	return sub(t.root, name)
}

// network returns a network's bucket, or nil.
func (t *tx) network(name string) *bbolt.Bucket {
	return sub(t.bucket(bucketNetworks), []byte(name))
}

// peerBucket returns a container's peer bucket in a network, or nil.
func peerBucket(nb *bbolt.Bucket, containerID string) *bbolt.Bucket {
	return sub(sub(nb, bucketPeers), []byte(containerID))
}

// sub returns a nested bucket, or nil; b may be nil, which bbolt's methods
// do not allow.
func sub(b *bbolt.Bucket, name []byte) *bbolt.Bucket {
	if b == nil {
		return nil
	}
	return b.Bucket(name)
}

// get returns a key's value, or nil; b may be nil.
func get(b *bbolt.Bucket, key string) []byte {
	if b == nil {
		return nil
	}
	return b.Get([]byte(key))
}

func (t *tx) appendPeers(peers []api.Peer, nb *bbolt.Bucket, network string) ([]api.Peer, error) {
	pb := nb.Bucket(bucketPeers)
	if pb == nil {
		return peers, nil
	}
	err := pb.ForEachBucket(func(cid []byte) error {
		return pb.Bucket(cid).ForEach(func(ifname, v []byte) error {
			p, err := decode(t, v, record.DecodePeer, "peer %q", peerName(network, string(cid), string(ifname)))
			if err != nil {
				return err
			}
			peers = append(peers, *p)
			return nil
		})
	})
	return peers, err
}

// decode reads a stored record with fn; format and args name it in errors.
// The record package copies what it keeps out of bbolt's memory map.
func decode[T any](t *tx, raw []byte, fn func([]byte) (*T, error), format string, args ...any) (*T, error) {
	what := fmt.Sprintf(format, args...)
	if raw == nil {
		return nil, damaged(t.path, what+": record missing")
	}
	v, err := fn(raw)
	if err != nil {
		return nil, damaged(t.path, what+": "+err.Error())
	}
	return v, nil
}

func notFound(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), api.ErrNotFound)
}

func peerNotFound(network, containerID, ifname string) error {
	return notFound("peer %q on network %q", containerID+"/"+ifname, network)
}

func peerName(network, containerID, ifname string) string {
	return network + "/" + containerID + "/" + ifname
}

// validName judges a key by circuit's rule for its kind (package api), so
// the datastore refuses exactly what the CLI and the controllers refuse.
func validName(kind, name string) error {
	switch kind {
	case "network":
		return api.ValidNetworkName(name)
	case "service":
		return api.ValidServiceName(name)
	case "container ID":
		return api.ValidContainerID(name)
	}
	return api.ValidIfName(name)
}

func validPeerKey(network, containerID, ifname string) error {
	if err := validName("network", network); err != nil {
		return err
	}
	if err := validName("container ID", containerID); err != nil {
		return err
	}
	return validName("interface", ifname)
}
