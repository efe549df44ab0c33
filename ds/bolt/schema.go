package bolt

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/circuit-cni/circuit/ds/record"
	"go.etcd.io/bbolt"
)

// Bucket and key names; see the layout in doc.go.
var (
	bucketRoot     = []byte("v1")
	bucketMeta     = []byte("meta")
	keySchema      = []byte("schema")
	bucketNetworks = []byte("networks")
	keyConfig      = []byte("config")
	bucketPeers    = []byte("peers")
	bucketServices = []byte("services")
)

// schemaVersion is the layout this code reads and writes: the version the
// last migration produces.
const schemaVersion = 2

// migration brings a file from the previous version to version.
type migration struct {
	version int
	name    string
	apply   func(btx *bbolt.Tx) error
}

// migrations run in order, each at most once, in the read-write transaction
// that finds the file older than schemaVersion. Append; never edit or reorder.
var migrations = []migration{
	{version: 1, name: "create v1 buckets", apply: createV1},
	{version: 2, name: "records apart from the CLI's JSON", apply: toRecords},
}

func createV1(btx *bbolt.Tx) error {
	root, err := btx.CreateBucketIfNotExists(bucketRoot)
	if err != nil {
		return err
	}
	for _, name := range [][]byte{bucketMeta, bucketNetworks, bucketServices} {
		if _, err := root.CreateBucketIfNotExists(name); err != nil {
			return fmt.Errorf("bucket %s: %w", name, err)
		}
	}
	return nil
}

// readSchema returns the file's schema version: 0 for a file (or a nil
// btx, no file) that no write has touched yet.
func readSchema(btx *bbolt.Tx) (int, error) {
	if btx == nil {
		return 0, nil
	}
	root := btx.Bucket(bucketRoot)
	if root == nil {
		return 0, nil
	}
	meta := root.Bucket(bucketMeta)
	if meta == nil {
		return 0, nil
	}
	raw := meta.Get(keySchema)
	if raw == nil {
		return 0, nil
	}
	v, err := strconv.Atoi(string(raw))
	if err != nil || v < 0 {
		return 0, fmt.Errorf("datastore schema version %q is not a version number", raw)
	}
	return v, nil
}

func checkNotNewer(v int) error {
	if v > schemaVersion {
		return fmt.Errorf("datastore schema version %d is newer than this circuit supports (%d)", v, schemaVersion)
	}
	return nil
}

// migrate brings a read-write transaction's file to schemaVersion and
// returns the root bucket.
func migrate(btx *bbolt.Tx) (*bbolt.Bucket, error) {
	v, err := readSchema(btx)
	if err != nil {
		return nil, err
	}
	if err := checkNotNewer(v); err != nil {
		return nil, err
	}
	if v < schemaVersion {
		for _, m := range migrations {
			if m.version <= v {
				continue
			}
			if err := m.apply(btx); err != nil {
				return nil, fmt.Errorf("migrate datastore to schema %d (%s): %w", m.version, m.name, err)
			}
		}
		meta := btx.Bucket(bucketRoot).Bucket(bucketMeta)
		if err := meta.Put(keySchema, []byte(strconv.Itoa(schemaVersion))); err != nil {
			return nil, fmt.Errorf("write datastore schema version: %w", err)
		}
	}
	return btx.Bucket(bucketRoot), nil
}

// errOlderSchema: a read-only transaction cannot migrate the file.
var errOlderSchema = errors.New("migrate it first")

// viewRoot returns a read-only transaction's root bucket: nil for a store no
// write has touched, which reads as empty.
func viewRoot(btx *bbolt.Tx) (*bbolt.Bucket, error) {
	v, err := readSchema(btx)
	if err != nil {
		return nil, err
	}
	if err := checkNotNewer(v); err != nil {
		return nil, err
	}
	// Open migrates, so only a file it left unread or one replaced behind
	// our back gets here: View migrates it and reads again.
	if v != 0 && v < schemaVersion {
		return nil, fmt.Errorf("datastore schema version %d is older than %d: %w", v, schemaVersion, errOlderSchema)
	}
	if btx == nil {
		return nil, nil
	}
	return btx.Bucket(bucketRoot), nil
}

// toRecords rewrites every value of schema 1 (the CLI's JSON of the day)
// as a versioned record (package record). The layout of buckets and keys
// stays.
func toRecords(btx *bbolt.Tx) error {
	root := btx.Bucket(bucketRoot)
	type put struct {
		b    *bbolt.Bucket
		k, v []byte
	}
	var puts []put
	// Values are converted first and written after: bbolt forbids writes
	// while a cursor walks the bucket.
	convert := func(b *bbolt.Bucket, k, v []byte, fn func([]byte) ([]byte, error)) error {
		out, err := fn(v)
		if err != nil {
			return fmt.Errorf("%s: %w", k, err)
		}
		puts = append(puts, put{b, append([]byte(nil), k...), out})
		return nil
	}
	nets := root.Bucket(bucketNetworks)
	err := nets.ForEachBucket(func(name []byte) error {
		nb := nets.Bucket(name)
		if v := nb.Get(keyConfig); v != nil {
			if err := convert(nb, keyConfig, v, record.NetworkFromV1); err != nil {
				return fmt.Errorf("network %s", err)
			}
		}
		pb := nb.Bucket(bucketPeers)
		if pb == nil {
			return nil
		}
		return pb.ForEachBucket(func(id []byte) error {
			cb := pb.Bucket(id)
			return cb.ForEach(func(ifname, v []byte) error {
				if err := convert(cb, ifname, v, record.PeerFromV1); err != nil {
					return fmt.Errorf("peer %s/%s/%s", name, id, err)
				}
				return nil
			})
		})
	})
	if err != nil {
		return err
	}
	svcs := root.Bucket(bucketServices)
	err = svcs.ForEach(func(k, v []byte) error {
		if err := convert(svcs, k, v, record.ServiceFromV1); err != nil {
			return fmt.Errorf("service %s", err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, p := range puts {
		if err := p.b.Put(p.k, p.v); err != nil {
			return err
		}
	}
	return nil
}
