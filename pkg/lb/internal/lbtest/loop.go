package lbtest

import (
	"net/http"
	"sync"
	"testing"
	"time"
)

// Loop sends requests one after another through a VIP in the background
// and records who answered each, so that a test can change the service
// while it runs and then check every request.
type Loop struct {
	mu      sync.Mutex
	changed *sync.Cond
	answers []string // server name, or "error: ..."
	done    chan struct{}
}

// StartLoop sends n requests to url with c, one at a time.
func StartLoop(c *http.Client, url string, n int) *Loop {
	l := &Loop{done: make(chan struct{})}
	l.changed = sync.NewCond(&l.mu)
	go func() {
		defer close(l.done)
		for range n {
			s, _, err := Get(c, url)
			if err != nil {
				s = "error: " + err.Error()
			}
			l.mu.Lock()
			l.answers = append(l.answers, s)
			l.changed.Broadcast()
			l.mu.Unlock()
		}
	}()
	return l
}

// At blocks until i requests have been answered and returns how many
// have (i or more: the loop does not stop meanwhile).
func (l *Loop) At(i int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	for len(l.answers) < i {
		l.changed.Wait()
	}
	return len(l.answers)
}

// Wait waits for the loop to end (a backstop fails the test) and returns
// every answer in order.
func (l *Loop) Wait(t testing.TB) []string {
	t.Helper()
	select {
	case <-l.done:
	case <-time.After(5 * time.Minute):
		t.Fatal("client loop still running after 5 minutes")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.answers...)
}
