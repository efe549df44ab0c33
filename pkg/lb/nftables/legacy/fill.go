package legacy

import (
	"fmt"
	"syscall"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/circuit-cni/circuit/pkg/lb/internal/nsfd"
	"github.com/circuit-cni/circuit/pkg/lb/internal/spec"
)

// fillBuffer is the socket buffer a Fill batch gets: google/nftables sends
// the batch in one sendmsg and asks an ack of every message.
const fillBuffer = 64 << 20

// Fill programs services that are not programmed yet, all in one
// transaction (and the table with them if it is missing). A benchmark
// fills a large table this way: one Ensure per service would re-validate
// the whole table once per service.
func (b *Backend) Fill(svcs []spec.Service) error {
	specs := make([]*spec.Spec, 0, len(svcs))
	for _, svc := range svcs {
		s, err := validate(svc)
		if err != nil {
			return err
		}
		specs = append(specs, s)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	exists, err := b.tableExists()
	if err != nil {
		return err
	}
	c, err := nftables.New(nftables.WithNetNSFd(nsfd.Fd(b.ns)), nftables.WithSockOptions(bigBuffers))
	bt := &batch{c: c, err: err}
	if !exists {
		bt.createTable()
	}
	for _, s := range specs {
		bt.createService(s)
	}
	if err := b.commit(bt); err != nil {
		return fmt.Errorf("lb: nftables-v1: fill %d services: %w", len(specs), err)
	}
	return nil
}

// bigBuffers raises both socket buffers past the sysctl limits (root).
func bigBuffers(c *netlink.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		for _, opt := range []int{unix.SO_SNDBUFFORCE, unix.SO_RCVBUFFORCE} {
			if e := syscall.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, fillBuffer); e != nil {
				serr = e
			}
		}
	})
	if err != nil {
		return err
	}
	return serr
}
