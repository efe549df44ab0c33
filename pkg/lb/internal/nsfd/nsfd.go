// Package nsfd opens the network namespace a backend binds its netlink
// sockets to, so callers never have to switch a thread's namespace.
package nsfd

import (
	"fmt"
	"os"
)

// Open opens nsPath for use as a netns fd. "" means the current namespace
// and returns a nil file.
func Open(nsPath string) (*os.File, error) {
	if nsPath == "" {
		return nil, nil
	}
	f, err := os.Open(nsPath)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", nsPath, err)
	}
	return f, nil
}

// Fd returns the fd of f, or 0 (meaning "current namespace" to
// mdlayher/netlink and google/nftables) when f is nil.
func Fd(f *os.File) int {
	if f == nil {
		return 0
	}
	return int(f.Fd())
}
