package nftables

import (
	"bytes"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/circuit-cni/circuit/pkg/lb/internal/lbtest"
	"github.com/circuit-cni/circuit/pkg/lb/internal/spec"
)

// populate programs n services of two targets each.
func populate(t testing.TB, b *Backend, n int) []spec.Service {
	t.Helper()
	svcs := make([]spec.Service, n)
	for i := range n {
		svcs[i] = service(fmt.Sprintf("s%d", i), fmt.Sprintf("10.201.%d.%d:80", 100+i/250, 1+i%250), "rr",
			"10.201.2.2:80", "10.201.3.2:80")
		must(t, b.Ensure(svcs[i]))
	}
	return svcs
}

// addThird returns svc with a third target, and that target.
func addThird(svc spec.Service) (spec.Service, spec.Target) {
	t := spec.Target{Address: "10.201.4.2:80"}
	svc.Targets = append(append([]spec.Target(nil), svc.Targets...), t)
	return svc, t
}

// Adding or removing a target is one transaction whose size does not
// depend on how many services exist, and it touches no other service.
func TestOneTransaction(t *testing.T) {
	t.Parallel()
	msgs := map[int][2]int64{}
	for _, n := range []int{1, 200} {
		ns := lbtest.NewNS(t, fmt.Sprintf("tx%d", n))
		b := newBackend(t, ns)
		svcs := populate(t, b, n)
		svc := svcs[n/2]
		with, third := addThird(svc)

		var mon *monitor
		if n > 1 {
			mon = startMonitor(t, ns)
		}
		txs := b.txs.Load()
		must(t, b.AddTarget(with, third))
		if d := b.txs.Load() - txs; d != 1 {
			t.Errorf("%d services: AddTarget took %d transactions, want 1", n, d)
		}
		added := b.lastMsgs.Load()
		must(t, b.RemoveTarget(svc, third))
		if d := b.txs.Load() - txs; d != 2 {
			t.Errorf("%d services: RemoveTarget took %d transactions, want 1", n, d-1)
		}
		msgs[n] = [2]int64{added, b.lastMsgs.Load()}
		if mon != nil {
			mon.check(t, svc.Name, 2)
		}
	}
	if msgs[1] != msgs[200] {
		t.Errorf("messages per add/remove: %v with 1 service, %v with 200", msgs[1], msgs[200])
	}
	t.Logf("netlink messages per transaction (add, remove): %v", msgs[200])
}

// monitor records `nft monitor` in a namespace, if nft is installed.
type monitor struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (m *monitor) Write(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.buf.Write(p)
}

func startMonitor(t *testing.T, ns *lbtest.NS) *monitor {
	p, ok := lbtest.Tool("nft")
	if !ok {
		return nil
	}
	m := &monitor{}
	cmd := ns.Start(t, m, p, "monitor")
	// nft subscribes a while after it starts: repeat a probe change until
	// it is reported, then forget the probe.
	probe := &nftables.Table{Name: "monitor-probe", Family: nftables.TableFamilyINet}
	c, err := nftables.New(nftables.WithNetNSFd(nsFd(t, ns)))
	must(t, err)
	for i := 0; ; i++ {
		c.AddTable(probe)
		must(t, c.Flush())
		c.DelTable(probe)
		must(t, c.Flush())
		time.Sleep(100 * time.Millisecond)
		m.mu.Lock()
		out := m.buf.String()
		m.mu.Unlock()
		// Seen, up to the end of its transaction.
		if i := strings.LastIndex(out, "delete table inet monitor-probe"); i >= 0 &&
			strings.Contains(out[i:], "# new generation") {
			break
		}
		if i == 100 {
			// An inspection only: go on without it.
			t.Logf("nft monitor reports nothing (output %q, exited: %v); not cross-checking with it", out, cmd.ProcessState)
			return nil
		}
	}
	m.mu.Lock()
	m.buf.Reset()
	m.mu.Unlock()
	return m
}

// wait waits up to 20s (the VM tier emulates its CPUs) for n lines
// starting with prefix.
func (m *monitor) wait(t *testing.T, prefix string, n int) string {
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		m.mu.Lock()
		out := m.buf.String()
		m.mu.Unlock()
		got := 0
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, prefix) {
				got++
			}
		}
		if got >= n {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("nft monitor: %d of %d %q lines after 20s:\n%s", got, n, prefix, out)
		}
	}
}

// check asserts the kernel reported gens transactions ("new generation")
// and no change to any object but those of service name (its anonymous
// vmap, __mapN, included).
func (m *monitor) check(t *testing.T, name string, gens int) {
	out := m.wait(t, "# new generation", gens)
	time.Sleep(200 * time.Millisecond) // anything more would show now
	m.mu.Lock()
	out = m.buf.String()
	m.mu.Unlock()
	own := regexp.MustCompile(`-` + regexp.QuoteMeta(name) + `([ /"]|$)| __map\d+$`)
	n := 0
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(line, "# new generation"):
			n++
		case line != "" && !own.MatchString(line):
			t.Errorf("nft monitor: change outside service %s: %q", name, line)
		}
	}
	if n != gens {
		t.Errorf("nft monitor saw %d transactions, want %d", n, gens)
	}
	t.Logf("nft monitor during add+remove of one target:\n%s", out)
}

// BenchmarkAddTarget times adding and then removing one target of one
// service while many others exist (one op = one add or one remove).
func BenchmarkAddTarget(b *testing.B) {
	for _, n := range []int{10, 1000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			ns := lbtest.NewNS(b, fmt.Sprintf("bench%d", n))
			be := newBackend(b, ns)
			svcs := populate(b, be, n)
			svc := svcs[n/2]
			with, third := addThird(svc)
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				if i%2 == 0 {
					must(b, be.AddTarget(with, third))
				} else {
					must(b, be.RemoveTarget(svc, third))
				}
			}
		})
	}
}
