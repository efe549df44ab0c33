package agent

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
)

// errHeld: a test holds the watch.
var errHeld = errors.New("watch held")

// watchHold lets a test stop the agent's watch as if it had fallen behind
// etcd: while held, the agent reads nothing; released, it watches again
// from the revision it had reached, and etcd may have compacted past it.
type watchHold struct {
	mu  sync.Mutex
	on  chan struct{} // closed while held
	off chan struct{} // closed while not held
	ack chan struct{} // closed once the watch stopped for the hold
}

func (h *watchHold) init() {
	if h.on == nil {
		h.on, h.off, h.ack = make(chan struct{}), make(chan struct{}), make(chan struct{})
		close(h.off)
	}
}

// held is closed when a hold begins.
func (h *watchHold) held() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.init()
	return h.on
}

// wait blocks the watch until the hold ends.
func (h *watchHold) wait(ctx context.Context) {
	h.mu.Lock()
	h.init()
	off := h.off
	select {
	case <-h.ack:
	default:
		close(h.ack)
	}
	h.mu.Unlock()
	select {
	case <-off:
	case <-ctx.Done():
	}
}

// set begins (true) or ends a hold. Beginning one returns a channel
// closed once the watch has stopped.
func (h *watchHold) set(on bool) <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.init()
	select {
	case <-h.on:
		if !on {
			h.on, h.ack = make(chan struct{}), make(chan struct{})
			close(h.off)
		}
	default:
		if on {
			h.off = make(chan struct{})
			close(h.on)
		}
	}
	return h.ack
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
