package bolt

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
)

const (
	// FileName is the db file's name inside the state dir.
	FileName = "circuit.db"
	// DefaultTimeout is how long a transaction waits for the file lock.
	DefaultTimeout = 10 * time.Second

	// The db holds every container's network state: root's eyes only.
	dirMode  fs.FileMode = 0o700
	fileMode fs.FileMode = 0o600
)

var errClosed = errors.New("datastore closed")

// Store is a ds.Datastore in one bbolt file. It holds no open handle between
// transactions, so it is cheap to keep and safe to share between goroutines.
type Store struct {
	path    string
	timeout time.Duration
	lazy    bool // WithSchemaOnFirstUse
	closed  atomic.Bool
}

var _ ds.Datastore = (*Store)(nil)

// Option configures Open.
type Option func(*Store)

// WithTimeout sets how long a transaction waits for another process's lock
// before failing with api.ErrBusy. d <= 0 keeps DefaultTimeout: bbolt
// reads 0 as "wait forever", and one hung process must not hang every hook.
func WithTimeout(d time.Duration) Option {
	return func(s *Store) {
		if d > 0 {
			s.timeout = d
		}
	}
}

// WithSchemaOnFirstUse leaves the file unread until the first transaction,
// which checks the schema (and migrates an older one) as Open would: a
// process that runs a transaction or two, as every circuit command does,
// saves one opening of the file. A newer or unreadable schema then fails
// that transaction instead of Open, with the same error.
func WithSchemaOnFirstUse() Option {
	return func(s *Store) { s.lazy = true }
}

// Open prepares stateDir (created 0700, or narrowed to 0700) and its
// circuit.db (0600), creating the file or migrating it to the current schema
// if needed. It refuses a file whose schema is newer than this code. With
// WithSchemaOnFirstUse all that is left to the transactions: the first
// write creates the file.
func Open(stateDir string, opts ...Option) (*Store, error) {
	if stateDir == "" {
		return nil, fmt.Errorf("open datastore: state dir is empty: %w", api.ErrInvalid)
	}
	s := &Store{path: filepath.Join(stateDir, FileName), timeout: DefaultTimeout}
	for _, o := range opts {
		o(s)
	}
	if err := os.MkdirAll(stateDir, dirMode); err != nil {
		return nil, fmt.Errorf("open datastore: create state dir: %w", err)
	}
	if err := checkOwner(stateDir); err != nil {
		return nil, fmt.Errorf("open datastore: %w", err)
	}
	if err := restrictMode(stateDir, dirMode); err != nil {
		return nil, fmt.Errorf("open datastore: %w", err)
	}
	if err := restrictMode(s.path, fileMode); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("open datastore: %w", err)
	}
	if s.lazy {
		return s, nil
	}
	if err := s.init(context.Background()); err != nil {
		return nil, fmt.Errorf("open datastore: %w", err)
	}
	return s, nil
}

// Path returns the db file's path.
func (s *Store) Path() string { return s.path }

// Close makes later transactions fail. There is no handle to release.
func (s *Store) Close() error {
	s.closed.Store(true)
	return nil
}

// Update runs fn in one read-write transaction, committed only if fn
// returns nil. fn's error is returned as is.
func (s *Store) Update(ctx context.Context, fn func(ds.Tx) error) (err error) {
	defer guard(s.path, &err)()
	db, err := s.openDB(ctx, false)
	if err != nil {
		return err
	}
	defer closeDB(db, &err)

	btx, err := db.Begin(true)
	if err != nil {
		return fmt.Errorf("datastore %s: begin: %w", s.path, err)
	}
	// After a commit this returns ErrTxClosed, which means nothing.
	defer func() { _ = btx.Rollback() }()

	root, err := migrate(btx)
	if err != nil {
		return err
	}
	if err := fn(&tx{btx: btx, root: root, path: s.path}); err != nil {
		return err
	}
	if err := btx.Commit(); err != nil {
		return fmt.Errorf("datastore %s: commit: %w", s.path, err)
	}
	return nil
}

// View runs fn in one read-only transaction under a shared lock. A file of
// an older schema (one Open left unread, or replaced since) is migrated by
// a read-write transaction first.
func (s *Store) View(ctx context.Context, fn func(ds.Tx) error) error {
	run := func(btx *bbolt.Tx) error {
		root, err := viewRoot(btx)
		if err != nil {
			return err
		}
		return fn(&tx{btx: btx, root: root, path: s.path})
	}
	err := s.view(ctx, run)
	if !errors.Is(err, errOlderSchema) {
		return err
	}
	if err := s.Update(ctx, func(ds.Tx) error { return nil }); err != nil {
		return err
	}
	return s.view(ctx, run)
}

// init brings the file to the current schema. The common case, a current
// file, only takes the shared lock.
func (s *Store) init(ctx context.Context) error {
	var v int
	err := s.view(ctx, func(btx *bbolt.Tx) error {
		var err error
		v, err = readSchema(btx)
		if err != nil {
			return err
		}
		return checkNotNewer(v)
	})
	if err != nil || v == schemaVersion {
		return err
	}
	// Creates the file if needed, migrates and writes the schema version.
	return s.Update(ctx, func(ds.Tx) error { return nil })
}

// view runs fn in a read-only bbolt transaction, with btx nil if the file
// is missing or empty: a read must not create it.
func (s *Store) view(ctx context.Context, fn func(btx *bbolt.Tx) error) (err error) {
	defer guard(s.path, &err)()
	if err := s.usable(ctx); err != nil {
		return err
	}
	// A size 0 file is being created by a writer that has not initialized
	// it yet; bbolt would try to initialize it through our read-only handle.
	switch fi, err := os.Stat(s.path); {
	case errors.Is(err, fs.ErrNotExist) || err == nil && fi.Size() == 0:
		return fn(nil)
	case err != nil:
		return fmt.Errorf("datastore: %w", err)
	}

	db, err := s.openDB(ctx, true)
	if err != nil {
		return err
	}
	defer closeDB(db, &err)

	btx, err := db.Begin(false)
	if err != nil {
		return fmt.Errorf("datastore %s: begin: %w", s.path, err)
	}
	defer func() { _ = btx.Rollback() }()
	return fn(btx)
}

// usable fails if the store is closed or the caller gave up.
func (s *Store) usable(ctx context.Context) error {
	if s.closed.Load() {
		return fmt.Errorf("datastore %s: %w", s.path, errClosed)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("datastore %s: %w", s.path, err)
	}
	return nil
}

// openDB opens the file and takes its lock, exclusive or shared. bbolt polls
// the flock until s.timeout; running out means another process holds it.
func (s *Store) openDB(ctx context.Context, readOnly bool) (*bbolt.DB, error) {
	if err := s.usable(ctx); err != nil {
		return nil, err
	}
	if err := checkSize(s.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	opts := *bbolt.DefaultOptions
	opts.Timeout = s.timeout
	opts.ReadOnly = readOnly
	db, err := bbolt.Open(s.path, fileMode, &opts)
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return nil, fmt.Errorf("%w: another circuit process held %s for more than %s",
			api.ErrBusy, s.path, s.timeout)
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum), errors.Is(err, berrors.ErrVersionMismatch):
		return nil, damaged(s.path, err.Error())
	case err != nil:
		return nil, fmt.Errorf("open datastore %s: %w", s.path, err)
	}
	// The wait may have been long: don't start work the caller gave up on.
	if err := s.usable(ctx); err != nil {
		_ = db.Close()
		return nil, err
	}
	return db, nil
}

// closeDB closes db, releasing its lock, and reports a failure only if
// nothing failed before.
func closeDB(db *bbolt.DB, errp *error) {
	if err := db.Close(); err != nil && *errp == nil {
		*errp = fmt.Errorf("close datastore: %w", err)
	}
}

// restrictMode clears permission bits of path beyond limit, if any are set.
func restrictMode(path string, limit fs.FileMode) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if perm := fi.Mode().Perm(); perm&^limit != 0 {
		if err := os.Chmod(path, perm&limit); err != nil {
			return fmt.Errorf("restrict permissions: %w", err)
		}
	}
	return nil
}

// checkOwner refuses a state dir another user owns: that user could swap
// the database or the pins under circuit, which runs as root.
func checkOwner(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("state dir %s is owned by uid %d, not by this user (uid %d): %w", dir, st.Uid, os.Geteuid(), api.ErrPermission)
	}
	return nil
}
