package agent

import (
	"context"
	"errors"
	"io"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/circuit-cni/circuit/agentapi"
	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
)

// etcd unreachable: the socket answers ErrUnavailable within the request
// timeout and the replica is untouched. etcd back (restarted on its data
// dir and ports, and reachable again): the agent catches up with what
// changed meanwhile. The test has its own etcd, reached through a proxy
// that can cut every connection at once, as a partition or a dead host
// does (closing etcd itself would wait out its open streams for 5s).
func TestEtcdOutage(t *testing.T) {
	needEtcd(t)
	t.Parallel()
	dir := t.TempDir()
	e, err := startEtcd(dir, "0", "0")
	if err != nil {
		t.Fatal(err)
	}
	// Registered before the agents': closed after they stopped.
	t.Cleanup(func() { e.Close() })
	direct := "http://" + e.Clients[0].Addr().String()
	_, clientPort, _ := net.SplitHostPort(e.Clients[0].Addr().String())
	_, peerPort, _ := net.SplitHostPort(e.Peers[0].Addr().String())
	px := newProxy(t, e.Clients[0].Addr().String())
	prefix := newPrefix()
	a := startAgent(t, prefix, "a", "", func(c *Config) {
		c.Endpoints, c.RequestTimeout = []string{"http://" + px.addr}, time.Second
	})
	a.mustCreate(conf("before", "10.10.0.0/16"))
	replica := func() []api.Network {
		var ns []api.Network
		err := a.local.View(context.Background(), func(tx ds.Tx) (err error) {
			ns, err = tx.ListNetworks()
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return ns
	}
	before := replica()

	px.cut()
	var wg sync.WaitGroup
	for what, call := range map[string]func() error{
		"create": func() error { _, err := a.createNetwork(conf("during", "10.11.0.0/16"), false); return err },
		"nodes":  func() error { return a.api.Do(context.Background(), "GET", agentapi.PathNodes, nil, nil) },
		"gc": func() error {
			return a.api.Do(context.Background(), "POST", agentapi.PathGC, agentapi.GC{Grace: agentapi.Duration(time.Hour)}, nil)
		},
		"delete": func() error {
			return a.api.Do(context.Background(), "DELETE", agentapi.PathNetworks+"/before", nil, nil)
		},
	} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			err := call()
			took := time.Since(start)
			if !errors.Is(err, api.ErrUnavailable) || strings.Contains(err.Error(), "\n") {
				t.Errorf("%s with etcd down: %v, want one line of ErrUnavailable", what, err)
			}
			// The agent's bound, plus slack for a loaded machine;
			// well below circuit's own 5s.
			if took > a.cfg.RequestTimeout+time.Second {
				t.Errorf("%s answered after %s, bound %s", what, took, a.cfg.RequestTimeout)
			}
		}()
	}
	wg.Wait()
	waitFor(t, "the session to end", func() bool { return !a.live.Load() })
	if after := replica(); !reflect.DeepEqual(before, after) {
		t.Errorf("replica changed while etcd was down:\n%+v\n%+v", before, after)
	}

	// etcd restarts on its data and ports; meanwhile another node
	// creates a network.
	e.Close()
	if e, err = startEtcd(dir, clientPort, peerPort); err != nil {
		t.Fatalf("restart etcd: %v", err)
	}
	b := startAgent(t, prefix, "b", "", func(c *Config) { c.Endpoints = []string{direct} })
	b.mustCreate(conf("after", "10.12.0.0/16"))
	// etcd's restart renewed a's lease; it expires a TTL later.
	waitFor(t, "a lost", func() bool { got := b.node("a"); return got != nil && got.State == api.NodeLost })

	px.resume()
	waitFor(t, "a back in the cluster", func() bool { return a.live.Load() })
	waitFor(t, "a's replica of after", func() bool { return len(a.replicaBlocks("after")) == 1 })
	if got := a.replicaBlocks("after"); got[0] != "10.12.1.0/24" {
		t.Errorf("a holds %v of after", got)
	}
	if got := b.node("a"); got == nil || got.State != api.NodeReady {
		t.Errorf("node a: %+v", got)
	}
	a.mustCreate(conf("again", "10.13.0.0/16"))
}

// proxy forwards TCP to a backend until cut: then it closes every
// connection and refuses new ones, until resumed on the same address.
type proxy struct {
	t       *testing.T
	addr    string
	backend string
	mu      sync.Mutex
	ln      net.Listener
	conns   map[net.Conn]bool
}

func newProxy(t *testing.T, backend string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, addr: ln.Addr().String(), backend: backend, conns: map[net.Conn]bool{}}
	p.serve(ln)
	t.Cleanup(p.cut)
	return p
}

func (p *proxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", p.backend)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns[c], p.conns[b] = true, true
			p.mu.Unlock()
			go func() { _, _ = io.Copy(b, c); b.Close() }()
			go func() { _, _ = io.Copy(c, b); c.Close() }()
		}
	}()
}

func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

func (p *proxy) resume() {
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		p.t.Fatalf("proxy: listen again on %s: %v", p.addr, err)
	}
	p.serve(ln)
}
