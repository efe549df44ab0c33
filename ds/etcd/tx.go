package etcd

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/ds/record"
)

var errTxOver = errors.New("transaction is over")

// keys are a Store's key names; see the layout in doc.go. Directories end
// in "/", so a scan of one never reaches a sibling that shares its prefix.
type keys struct {
	meta, schema, commit, lock string
	networks, peers, services  string
}

func newKeys(prefix string) keys {
	return keys{
		meta:     prefix + "/meta/",
		schema:   prefix + "/meta/schema",
		commit:   prefix + "/meta/commit",
		lock:     prefix + "/meta/lock",
		networks: prefix + "/networks/",
		peers:    prefix + "/peers/",
		services: prefix + "/services/",
	}
}

func (k keys) network(name string) string     { return k.networks + name }
func (k keys) service(name string) string     { return k.services + name }
func (k keys) netPeers(network string) string { return k.peers + network + "/" }
func (k keys) containerPeers(network, containerID string) string {
	return k.netPeers(network) + containerID + "/"
}
func (k keys) peer(network, containerID, ifname string) string {
	return k.containerPeers(network, containerID) + ifname
}

// tx implements ds.Tx. Reads are at one revision; an Update's writes are
// buffered here, and reads merge them, until commit turns them into ops.
type tx struct {
	s        *Store
	ctx      context.Context
	rev      int64
	writable bool
	over     bool

	read map[string][]byte // keys read at rev, nil values for missing ones
	puts map[string][]byte // key -> value to write
	dels map[string]bool   // keys to delete, outside any of dirs
	dirs map[string]bool   // directories to delete whole (a network's peers)
}

var _ ds.Tx = (*tx)(nil)

func (s *Store) newTx(ctx context.Context, rev int64, writable bool) *tx {
	return &tx{s: s, ctx: ctx, rev: rev, writable: writable,
		read: map[string][]byte{}, puts: map[string][]byte{}, dels: map[string]bool{}, dirs: map[string]bool{}}
}

// end makes later writes fail: a tx kept past its fn must not seem to work.
func (t *tx) end() { t.over = true }

func (t *tx) empty() bool { return len(t.puts)+len(t.dels)+len(t.dirs) == 0 }

// GetNetwork returns the named network, without peers.
func (t *tx) GetNetwork(name string) (*api.Network, error) {
	if err := validName("network", name); err != nil {
		return nil, err
	}
	raw, err := t.get(t.s.keys.network(name))
	if err != nil {
		return nil, err
	}
	if raw == nil {
		return nil, notFound("network %q", name)
	}
	return decode(raw, record.DecodeNetwork, "network %q", name)
}

// ListNetworks returns every network, without peers, sorted by name.
func (t *tx) ListNetworks() ([]api.Network, error) {
	return list(t, t.s.keys.networks, record.DecodeNetwork, "network")
}

// PutNetwork creates or replaces a network record; a replaced network keeps
// its peers. n.Peers is not stored: peers have their own records.
func (t *tx) PutNetwork(n *api.Network) error {
	if n == nil {
		return fmt.Errorf("put network: nil network: %w", api.ErrInvalid)
	}
	if err := t.writes("put network %q", n.Name); err != nil {
		return err
	}
	if err := validName("network", n.Name); err != nil {
		return err
	}
	data, err := record.EncodeNetwork(n)
	if err != nil {
		return fmt.Errorf("put network %q: %w", n.Name, err)
	}
	t.put(t.s.keys.network(n.Name), data)
	return nil
}

// DeleteNetwork deletes a network and its peers.
func (t *tx) DeleteNetwork(name string) error {
	if err := t.writes("delete network %q", name); err != nil {
		return err
	}
	if err := validName("network", name); err != nil {
		return err
	}
	if err := t.networkExists(name); err != nil {
		return err
	}
	t.del(t.s.keys.network(name))
	t.delDir(t.s.keys.netPeers(name))
	return nil
}

// GetPeer returns one attachment.
func (t *tx) GetPeer(network, containerID, ifname string) (*api.Peer, error) {
	if err := validPeerKey(network, containerID, ifname); err != nil {
		return nil, err
	}
	raw, err := t.get(t.s.keys.peer(network, containerID, ifname))
	if err != nil {
		return nil, err
	}
	if raw == nil {
		// Peers live only on existing networks: look only now, to say
		// which is missing.
		if err := t.networkExists(network); err != nil {
			return nil, err
		}
		return nil, peerNotFound(network, containerID, ifname)
	}
	return decode(raw, record.DecodePeer, "peer %q", peerName(network, containerID, ifname))
}

// ListPeers returns the peers of one network, or of all with network "",
// sorted by network, container ID and interface name.
func (t *tx) ListPeers(network string) ([]api.Peer, error) {
	dir := t.s.keys.peers
	if network != "" {
		if err := validName("network", network); err != nil {
			return nil, err
		}
		if err := t.networkExists(network); err != nil {
			return nil, err
		}
		dir = t.s.keys.netPeers(network)
	}
	return listPeers(t, dir)
}

// ContainerPeers returns one container's attachments to one network.
func (t *tx) ContainerPeers(network, containerID string) ([]api.Peer, error) {
	if err := validName("network", network); err != nil {
		return nil, err
	}
	if err := validName("container ID", containerID); err != nil {
		return nil, err
	}
	if err := t.networkExists(network); err != nil {
		return nil, err
	}
	return listPeers(t, t.s.keys.containerPeers(network, containerID))
}

// PutPeer creates or replaces an attachment on an existing network.
func (t *tx) PutPeer(p *api.Peer) error {
	if p == nil {
		return fmt.Errorf("put peer: nil peer: %w", api.ErrInvalid)
	}
	name := peerName(p.Network, p.ContainerID, p.IfName)
	if err := t.writes("put peer %q", name); err != nil {
		return err
	}
	if err := validPeerKey(p.Network, p.ContainerID, p.IfName); err != nil {
		return err
	}
	if err := t.networkExists(p.Network); err != nil {
		return fmt.Errorf("put peer %q: %w", name, err)
	}
	data, err := record.EncodePeer(p)
	if err != nil {
		return fmt.Errorf("put peer %q: %w", name, err)
	}
	t.put(t.s.keys.peer(p.Network, p.ContainerID, p.IfName), data)
	return nil
}

// DeletePeer deletes one attachment.
func (t *tx) DeletePeer(network, containerID, ifname string) error {
	if err := t.writes("delete peer %q", peerName(network, containerID, ifname)); err != nil {
		return err
	}
	if err := validPeerKey(network, containerID, ifname); err != nil {
		return err
	}
	key := t.s.keys.peer(network, containerID, ifname)
	raw, err := t.get(key)
	if err != nil {
		return err
	}
	if raw == nil {
		if err := t.networkExists(network); err != nil {
			return err
		}
		return peerNotFound(network, containerID, ifname)
	}
	t.del(key)
	return nil
}

// GetService returns the named service.
func (t *tx) GetService(name string) (*api.Service, error) {
	if err := validName("service", name); err != nil {
		return nil, err
	}
	raw, err := t.get(t.s.keys.service(name))
	if err != nil {
		return nil, err
	}
	if raw == nil {
		return nil, notFound("service %q", name)
	}
	return decode(raw, record.DecodeService, "service %q", name)
}

// ListServices returns every service, sorted by name.
func (t *tx) ListServices() ([]api.Service, error) {
	return list(t, t.s.keys.services, record.DecodeService, "service")
}

// PutService creates or replaces a service.
func (t *tx) PutService(s *api.Service) error {
	if s == nil {
		return fmt.Errorf("put service: nil service: %w", api.ErrInvalid)
	}
	if err := t.writes("put service %q", s.Name); err != nil {
		return err
	}
	if err := validName("service", s.Name); err != nil {
		return err
	}
	data, err := record.EncodeService(s)
	if err != nil {
		return fmt.Errorf("put service %q: %w", s.Name, err)
	}
	t.put(t.s.keys.service(s.Name), data)
	return nil
}

// DeleteService deletes a service.
func (t *tx) DeleteService(name string) error {
	if err := t.writes("delete service %q", name); err != nil {
		return err
	}
	if err := validName("service", name); err != nil {
		return err
	}
	key := t.s.keys.service(name)
	raw, err := t.get(key)
	if err != nil {
		return err
	}
	if raw == nil {
		return notFound("service %q", name)
	}
	t.del(key)
	return nil
}

// writes fails in a View, and after the transaction's fn returned.
func (t *tx) writes(format string, args ...any) error {
	switch {
	case t.over:
		return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), errTxOver)
	case !t.writable:
		return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), errReadOnly)
	}
	return nil
}

func (t *tx) networkExists(name string) error {
	raw, err := t.get(t.s.keys.network(name))
	if err != nil {
		return err
	}
	if raw == nil {
		return notFound("network %q", name)
	}
	return nil
}

// get returns a key's value as this transaction sees it, or nil if the key
// does not exist.
func (t *tx) get(key string) ([]byte, error) {
	if v, ok := t.puts[key]; ok {
		return v, nil
	}
	if t.deleted(key) {
		return nil, nil
	}
	// Nothing changes at a past revision: read each key once (PutPeer
	// checks the network fn has just read, typically).
	if v, ok := t.read[key]; ok {
		return v, nil
	}
	resp, err := t.s.client.Get(t.ctx, key, clientv3.WithRev(t.rev))
	if err != nil {
		return nil, t.s.callErr(t.ctx, "read "+key, err)
	}
	var v []byte
	if len(resp.Kvs) > 0 {
		v = resp.Kvs[0].Value
	}
	t.read[key] = v
	return v, nil
}

type kv struct {
	key   string
	value []byte
}

// scan returns every key under dir (ending in "/") as this transaction
// sees it, sorted by key.
func (t *tx) scan(dir string) ([]kv, error) {
	resp, err := t.s.client.Get(t.ctx, dir, clientv3.WithPrefix(), clientv3.WithRev(t.rev))
	if err != nil {
		return nil, t.s.callErr(t.ctx, "read "+dir, err)
	}
	out := make([]kv, 0, len(resp.Kvs))
	for _, e := range resp.Kvs {
		key := string(e.Key)
		if _, put := t.puts[key]; put || t.deleted(key) {
			continue // the buffered write is added below, or it is gone
		}
		out = append(out, kv{key, e.Value})
	}
	for key, v := range t.puts {
		if strings.HasPrefix(key, dir) {
			out = append(out, kv{key, v})
		}
	}
	slices.SortFunc(out, func(a, b kv) int { return strings.Compare(a.key, b.key) })
	return out, nil
}

// list decodes every record under dir; kind names them in errors.
func list[T any](t *tx, dir string, fn func([]byte) (*T, error), kind string) ([]T, error) {
	entries, err := t.scan(dir)
	if err != nil {
		return nil, err
	}
	out := make([]T, 0, len(entries))
	for _, e := range entries {
		v, err := decode(e.value, fn, "%s %q", kind, strings.TrimPrefix(e.key, dir))
		if err != nil {
			return nil, err
		}
		out = append(out, *v)
	}
	return out, nil
}

// listPeers decodes every peer under dir, sorted by network, container ID
// and interface: key order differs, since '/' sorts after '-', '.' and '+'.
func listPeers(t *tx, dir string) ([]api.Peer, error) {
	peers, err := list(t, dir, record.DecodePeer, "peer")
	if err != nil {
		return nil, err
	}
	slices.SortFunc(peers, func(a, b api.Peer) int {
		if c := strings.Compare(a.Network, b.Network); c != 0 {
			return c
		}
		if c := strings.Compare(a.ContainerID, b.ContainerID); c != 0 {
			return c
		}
		return strings.Compare(a.IfName, b.IfName)
	})
	return peers, nil
}

// deleted reports whether a buffered delete covers key.
func (t *tx) deleted(key string) bool {
	if t.dels[key] {
		return true
	}
	for dir := range t.dirs {
		if strings.HasPrefix(key, dir) {
			return true
		}
	}
	return false
}

func (t *tx) put(key string, v []byte) {
	t.puts[key] = v
	delete(t.dels, key)
}

func (t *tx) del(key string) {
	delete(t.puts, key)
	if !t.deleted(key) {
		t.dels[key] = true
	}
}

// delDir deletes everything under dir, buffered writes included.
func (t *tx) delDir(dir string) {
	for key := range t.puts {
		if strings.HasPrefix(key, dir) {
			delete(t.puts, key)
		}
	}
	for key := range t.dels {
		if strings.HasPrefix(key, dir) {
			delete(t.dels, key)
		}
	}
	t.dirs[dir] = true
}

// ops turns the buffered writes into etcd operations, in a fixed order.
// etcd refuses a Txn whose puts overlap its deletes, so a directory's
// range delete skips the keys written again under it.
func (t *tx) ops() []clientv3.Op {
	var ops []clientv3.Op
	puts := slices.Sorted(maps.Keys(t.puts))
	for _, dir := range slices.Sorted(maps.Keys(t.dirs)) {
		from := dir
		for _, key := range puts {
			if !strings.HasPrefix(key, dir) {
				continue
			}
			if from < key {
				ops = append(ops, clientv3.OpDelete(from, clientv3.WithRange(key)))
			}
			from = key + "\x00" // the next key after it
		}
		ops = append(ops, clientv3.OpDelete(from, clientv3.WithRange(clientv3.GetPrefixRangeEnd(dir))))
	}
	for _, key := range slices.Sorted(maps.Keys(t.dels)) {
		ops = append(ops, clientv3.OpDelete(key))
	}
	for _, key := range puts {
		ops = append(ops, clientv3.OpPut(key, string(t.puts[key])))
	}
	return ops
}

// decode reads a stored record with fn; format and args name it in errors.
func decode[T any](raw []byte, fn func([]byte) (*T, error), format string, args ...any) (*T, error) {
	v, err := fn(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), err)
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

// validName judges a key by circuit's rule for its kind (package api), as
// ds/bolt does: no name that passes holds a "/", so names are safe in keys.
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
