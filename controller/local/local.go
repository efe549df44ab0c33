// Package local is circuit's default Controller: libcni, netlink and netns
// on this host, with state in a ds.Datastore.
//
// The kernel side sits behind small interfaces (kernel.go): CNI runtime,
// network namespaces, the shaper, load-balancer backends and the process
// table. New wires the real ones; unit tests give gc and restore fakes, so
// their decisions are tested without root.
package local

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/ds/bolt"
	"github.com/circuit-cni/circuit/pkg/runc"
)

// DefaultStateDir holds the datastore, netns pins and libcni's cache.
const DefaultStateDir = "/var/lib/circuit"

// Config is what the local controller needs from the command line.
type Config struct {
	StateDir string   // default /var/lib/circuit
	CNIPath  []string // plugin search path, in order
	RuncRoot string   // default /run/runc
	Log      *logrus.Logger
	// LockTimeout bounds the wait for another circuit process (default 10s).
	LockTimeout time.Duration
	// UndoTimeout bounds undoing half-done work after a failure or a
	// cancelled context (default 10s).
	UndoTimeout time.Duration
}

// Controller implements controller.Controller on this host.
type Controller struct {
	cfg   Config
	store ds.Datastore
	k     kernel
	log   *logrus.Logger
}

// New opens the state dir. circuit changes the kernel's network state, so
// it refuses to start without root.
func New(cfg Config) (*Controller, error) {
	if os.Geteuid() != 0 {
		return nil, api.Errorf(api.ErrPermission, "circuit must run as root (it needs CAP_NET_ADMIN and CAP_SYS_ADMIN to change network namespaces)")
	}
	cfg = withDefaults(cfg)
	// A command runs a transaction or two: the first checks the schema,
	// instead of one more opening of the file before it.
	opts := []bolt.Option{bolt.WithSchemaOnFirstUse()}
	if cfg.LockTimeout > 0 {
		opts = append(opts, bolt.WithTimeout(cfg.LockTimeout))
	}
	store, err := bolt.Open(cfg.StateDir, opts...)
	if err != nil {
		return nil, err
	}
	// Pins are named by path: one state dir reached through a symlink or
	// not must name them alike.
	if real, err := filepath.EvalSymlinks(cfg.StateDir); err == nil {
		cfg.StateDir = real
	}
	return newController(cfg, store, hostKernel(cfg)), nil
}

// newController assembles a controller from its parts; tests pass fakes.
func newController(cfg Config, store ds.Datastore, k kernel) *Controller {
	cfg = withDefaults(cfg)
	return &Controller{cfg: cfg, store: store, k: k, log: cfg.Log}
}

func withDefaults(cfg Config) Config {
	if cfg.StateDir == "" {
		cfg.StateDir = DefaultStateDir
	}
	if cfg.RuncRoot == "" {
		cfg.RuncRoot = runc.DefaultRoot
	}
	if cfg.Log == nil {
		cfg.Log = logrus.StandardLogger()
	}
	if cfg.UndoTimeout <= 0 {
		cfg.UndoTimeout = 10 * time.Second
	}
	return cfg
}

// undoContext is for undoing half-done work: it outlives the caller's
// cancellation (a signal, a hook's deadline) but not UndoTimeout.
func (c *Controller) undoContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), c.cfg.UndoTimeout)
}

// Close releases the datastore.
func (c *Controller) Close() error { return c.store.Close() }

// pinPath is where a peer's netns is pinned: one pin per peer, named by a
// hash so no user-supplied string becomes a path.
func (c *Controller) pinPath(network, containerID, ifname string) string {
	sum := sha256.Sum256([]byte(network + "\x00" + containerID + "\x00" + ifname))
	return filepath.Join(c.cfg.StateDir, "netns", hex.EncodeToString(sum[:12]))
}
