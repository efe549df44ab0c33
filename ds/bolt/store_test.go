package bolt

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
)

func mode(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestOpenCreatesPrivateStateDirAndFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "circuit")
	s := openStore(t, dir)
	if got := mode(t, dir); got != 0o700 {
		t.Errorf("state dir mode %v, want 0700", got)
	}
	if s.Path() != filepath.Join(dir, "circuit.db") {
		t.Errorf("Path() = %s", s.Path())
	}
	if got := mode(t, s.Path()); got != 0o600 {
		t.Errorf("db file mode %v, want 0600", got)
	}
}

func TestOpenRepairsWiderModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := openStore(t, dir)
	update(t, s, func(tx ds.Tx) error { return tx.PutNetwork(testNetwork("alpha")) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(s.Path(), 0o644); err != nil {
		t.Fatal(err)
	}
	s2 := openStore(t, dir)
	if got := mode(t, dir); got != 0o700 {
		t.Errorf("state dir mode %v after Open, want 0700", got)
	}
	if got := mode(t, s2.Path()); got != 0o600 {
		t.Errorf("db file mode %v after Open, want 0600", got)
	}
	view(t, s2, func(tx ds.Tx) error {
		_, err := tx.GetNetwork("alpha")
		return err
	})

	// Narrower modes are the admin's choice: left alone.
	if err := os.Chmod(s.Path(), 0o400); err != nil {
		t.Fatal(err)
	}
	openStore(t, dir)
	if got := mode(t, s.Path()); got != 0o400 {
		t.Errorf("db file mode %v after Open, want 0400 kept", got)
	}
}

func TestOpenFailsOnBadStateDir(t *testing.T) {
	if _, err := Open(""); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("Open(\"\") = %v, want ErrInvalid", err)
	}
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(file); err == nil {
		t.Error("Open of a regular file as state dir succeeded")
	}
}

// readRaw reads a key from the file directly, outside the Store.
func readRaw(t *testing.T, path string, buckets ...string) string {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var val string
	err = db.View(func(btx *bbolt.Tx) error {
		b := btx.Bucket([]byte(buckets[0]))
		for _, name := range buckets[1 : len(buckets)-1] {
			if b == nil {
				break
			}
			b = b.Bucket([]byte(name))
		}
		if b == nil {
			return errors.New("missing bucket")
		}
		val = string(b.Get([]byte(buckets[len(buckets)-1])))
		return nil
	})
	if err != nil {
		t.Fatalf("read %v: %v", buckets, err)
	}
	return val
}

// writeSchema sets v1/meta/schema directly, as a newer circuit would.
func writeSchema(t *testing.T, path, version string) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(btx *bbolt.Tx) error {
		root, err := btx.CreateBucketIfNotExists(bucketRoot)
		if err != nil {
			return err
		}
		meta, err := root.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		return meta.Put(keySchema, []byte(version))
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestSchemaVersionWritten(t *testing.T) {
	s := openStore(t, t.TempDir())
	update(t, s, func(tx ds.Tx) error { return tx.PutService(testService("web")) })
	if got := readRaw(t, s.Path(), "v1", "meta", "schema"); got != "2" {
		t.Errorf("v1/meta/schema = %q, want \"2\"", got)
	}
	// The layout drawn in doc.go, with records, not the CLI's JSON.
	if got := readRaw(t, s.Path(), "v1", "services", "web"); !strings.Contains(got, `"v":2`) || !strings.Contains(got, `"persistenceNanos":60000000000`) {
		t.Errorf("v1/services/web = %s", got)
	}
}

func TestOpenMigratesUnversionedFile(t *testing.T) {
	dir := t.TempDir()
	// An initialized bbolt file with no buckets: version 0.
	db, err := bbolt.Open(filepath.Join(dir, FileName), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	s := openStore(t, dir)
	if got := readRaw(t, s.Path(), "v1", "meta", "schema"); got != "2" {
		t.Errorf("v1/meta/schema after Open = %q, want \"2\"", got)
	}
	view(t, s, func(tx ds.Tx) error {
		nets, err := tx.ListNetworks()
		if err == nil && len(nets) != 0 {
			t.Errorf("ListNetworks = %v, want empty", nets)
		}
		return err
	})
}

func TestNewerSchemaRefused(t *testing.T) {
	const want = "datastore schema version 3 is newer than this circuit supports (2)"

	// A file a newer circuit wrote.
	dir := t.TempDir()
	writeSchema(t, filepath.Join(dir, FileName), "3")
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Open = %v, want %q", err, want)
	}
	if got := readRaw(t, filepath.Join(dir, FileName), "v1", "meta", "schema"); got != "3" {
		t.Errorf("Open rewrote the schema version to %q", got)
	}

	// A file a newer circuit upgraded after we opened it.
	s := openStore(t, t.TempDir())
	writeSchema(t, s.Path(), "3")
	ran := false
	err := s.Update(context.Background(), func(ds.Tx) error { ran = true; return nil })
	if err == nil || !strings.Contains(err.Error(), want) || ran {
		t.Errorf("Update = %v (fn ran: %v), want %q", err, ran, want)
	}
	err = s.View(context.Background(), func(ds.Tx) error { ran = true; return nil })
	if err == nil || !strings.Contains(err.Error(), want) || ran {
		t.Errorf("View = %v (fn ran: %v), want %q", err, ran, want)
	}
}

// Left unread by Open, a newer file fails the first transaction, with
// Open's error, and is left as it is.
func TestNewerSchemaRefusedOnFirstUse(t *testing.T) {
	const want = "datastore schema version 3 is newer than this circuit supports (2)"
	dir := t.TempDir()
	writeSchema(t, filepath.Join(dir, FileName), "3")
	s := openStore(t, dir, WithSchemaOnFirstUse())
	ran := false
	if err := s.View(context.Background(), func(ds.Tx) error { ran = true; return nil }); err == nil || !strings.Contains(err.Error(), want) || ran {
		t.Errorf("View = %v (fn ran: %v), want %q", err, ran, want)
	}
	if err := s.Update(context.Background(), func(ds.Tx) error { ran = true; return nil }); err == nil || !strings.Contains(err.Error(), want) || ran {
		t.Errorf("Update = %v (fn ran: %v), want %q", err, ran, want)
	}
	if got := readRaw(t, filepath.Join(dir, FileName), "v1", "meta", "schema"); got != "3" {
		t.Errorf("the schema version was rewritten to %q", got)
	}
}

func TestGarbageSchemaRefused(t *testing.T) {
	dir := t.TempDir()
	writeSchema(t, filepath.Join(dir, FileName), "one")
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "not a version number") {
		t.Errorf("Open = %v, want a bad version error", err)
	}
}

func TestMigrationsTable(t *testing.T) {
	for i, m := range migrations {
		if m.version != i+1 || m.apply == nil || m.name == "" {
			t.Errorf("migrations[%d] = {%d %q}: want version %d, a name and a func", i, m.version, m.name, i+1)
		}
	}
	if last := migrations[len(migrations)-1].version; last != schemaVersion {
		t.Errorf("last migration makes version %d, schemaVersion is %d", last, schemaVersion)
	}
}

func TestLockReleasedBetweenTransactions(t *testing.T) {
	s := openStore(t, t.TempDir())
	update(t, s, func(tx ds.Tx) error { return tx.PutNetwork(testNetwork("alpha")) })
	view(t, s, func(tx ds.Tx) error { _, err := tx.ListNetworks(); return err })
	short := openStore(t, filepath.Dir(s.Path()), WithTimeout(200*time.Millisecond))

	// flock locks belong to open files, so a second handle in this process
	// conflicts with any handle the Store kept.
	db, err := bbolt.Open(s.Path(), 0o600, &bbolt.Options{Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatalf("exclusive open after Update and View: %v; the Store kept the file locked", err)
	}
	// And the Store waits for a handle held elsewhere.
	err = short.View(context.Background(), func(ds.Tx) error { return nil })
	if !errors.Is(err, api.ErrBusy) {
		t.Errorf("View while another handle holds the lock: %v, want ErrBusy", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestCanceledContext(t *testing.T) {
	s := openStore(t, t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ran := false
	fn := func(ds.Tx) error { ran = true; return nil }
	if err := s.Update(ctx, fn); !errors.Is(err, context.Canceled) {
		t.Errorf("Update = %v, want context.Canceled", err)
	}
	if err := s.View(ctx, fn); !errors.Is(err, context.Canceled) {
		t.Errorf("View = %v, want context.Canceled", err)
	}
	if ran {
		t.Error("fn ran with a canceled context")
	}
}

func TestClosedStore(t *testing.T) {
	s := openStore(t, t.TempDir())
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	fn := func(ds.Tx) error { return nil }
	if err := s.Update(context.Background(), fn); !errors.Is(err, errClosed) {
		t.Errorf("Update after Close = %v, want errClosed", err)
	}
	if err := s.View(context.Background(), fn); !errors.Is(err, errClosed) {
		t.Errorf("View after Close = %v, want errClosed", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestWithTimeout(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		opt  Option
		want time.Duration
	}{
		{nil, DefaultTimeout},
		{WithTimeout(time.Second), time.Second},
		{WithTimeout(0), DefaultTimeout},
		{WithTimeout(-time.Second), DefaultTimeout},
	} {
		var opts []Option
		if tc.opt != nil {
			opts = append(opts, tc.opt)
		}
		if s := openStore(t, dir, opts...); s.timeout != tc.want {
			t.Errorf("timeout = %v, want %v", s.timeout, tc.want)
		}
	}
}
