package local

import (
	"context"
	"path/filepath"
	"time"

	"github.com/circuit-cni/circuit/internal/filelock"
)

// lock takes an exclusive flock on <state>/<name>.lock, so that kernel
// changes of one kind (load-balancer tables) from several circuit
// processes, and circuit-agent's, do not interleave. It waits as long as
// the datastore would.
func (c *Controller) lock(ctx context.Context, name string) (unlock func(), err error) {
	timeout := c.cfg.LockTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	return filelock.Lock(ctx, filepath.Join(c.cfg.StateDir, name+".lock"), timeout)
}
