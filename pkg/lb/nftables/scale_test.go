package nftables

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/circuit-cni/circuit/pkg/lb/internal/lbtest"
	"github.com/circuit-cni/circuit/pkg/lb/internal/spec"
)

// populate programs n services of two targets each, in one Load.
func populate(t testing.TB, b *Backend, n int) []spec.Service {
	t.Helper()
	svcs := make([]spec.Service, n)
	for i := range n {
		svcs[i] = service(fmt.Sprintf("s%d", i), fmt.Sprintf("10.201.%d.%d:80", 100+i/250, 1+i%250), "rr",
			"10.201.2.2:80", "10.201.3.2:80")
	}
	must(t, b.Load(svcs))
	return svcs
}

// addThird returns svc with a third target, and that target.
func addThird(svc spec.Service) (spec.Service, spec.Target) {
	t := target("10.201.4.2:80", 1)
	return with(svc, append(slices.Clone(svc.Targets), t)...), t
}

// A target change is one transaction of element changes only (nothing
// the kernel re-validates), of a size that does not depend on how many
// services exist, and it touches no other service.
func TestOneTransaction(t *testing.T) {
	t.Parallel()
	msgs := map[int][4]int64{}
	for _, n := range []int{1, 200} {
		ns := lbtest.NewNS(t, fmt.Sprintf("tx%d", n))
		b := newBackend(t, ns)
		svc := populate(t, b, n)[n/2]
		third, tt := addThird(svc)
		drained := with(third, third.Targets[0], third.Targets[1], target(tt.Address, 0))
		heavy := with(third, third.Targets[0], third.Targets[1], target(tt.Address, 2))

		var mon *monitor
		if n > 1 {
			mon = startMonitor(t, ns)
		}
		var got [4]int64
		for i, step := range []struct {
			what string
			do   func() error
		}{
			{"AddTarget", func() error { return b.AddTarget(third, tt) }},
			{"SetTarget weight 2", func() error { return b.SetTarget(heavy, heavy.Targets[2]) }},
			{"SetTarget weight 0 (drain)", func() error { return b.SetTarget(drained, drained.Targets[2]) }},
			{"RemoveTarget", func() error { return b.RemoveTarget(svc, tt) }},
		} {
			txs := b.txs.Load()
			must(t, step.do())
			if d := b.txs.Load() - txs; d != 1 {
				t.Errorf("%d services: %s took %d transactions, want 1", n, step.what, d)
			}
			elementsOnly(t, b, fmt.Sprintf("%d services: %s", n, step.what))
			got[i] = b.lastMsgs.Load()
		}
		msgs[n] = got
		if mon != nil {
			mon.check(t, svc, 4)
		}
		st := stats(t, b, svc)
		if _, ok := st.Targets[tt.Address]; ok || len(st.Programmed.Targets) != 2 {
			t.Errorf("the removed target is still programmed: %+v", st)
		}
	}
	if msgs[1] != msgs[200] {
		t.Errorf("messages per add/set/drain/remove: %v with 1 service, %v with 200", msgs[1], msgs[200])
	}
	t.Logf("netlink messages per transaction (add, set, drain, remove): %v", msgs[200])
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

func (m *monitor) String() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.buf.String()
}

func startMonitor(t *testing.T, ns *lbtest.NS) *monitor {
	p, ok := lbtest.Tool("nft")
	if !ok {
		return nil
	}
	m := &monitor{}
	cmd := ns.Start(t, m, p, "monitor")
	// nft subscribes a while after it starts: repeat a probe change until
	// it is reported, then forget the probe. (Polling: nothing tells when
	// nft has subscribed.)
	probe := &nftables.Table{Name: "monitor-probe", Family: nftables.TableFamilyINet}
	c, err := nftables.New(nftables.WithNetNSFd(nsFd(t, ns)))
	must(t, err)
	for i := 0; ; i++ {
		c.AddTable(probe)
		must(t, c.Flush())
		c.DelTable(probe)
		must(t, c.Flush())
		time.Sleep(100 * time.Millisecond)
		out := m.String()
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
func (m *monitor) wait(t *testing.T, prefix string, n int) {
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		got := 0
		for _, line := range strings.Split(m.String(), "\n") {
			if strings.HasPrefix(line, prefix) {
				got++
			}
		}
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nft monitor: %d of %d %q lines after 20s:\n%s", got, n, prefix, m.String())
		}
	}
}

// check asserts the kernel reported gens transactions ("new generation")
// holding only element changes keyed by svc's VIP.
func (m *monitor) check(t *testing.T, svc spec.Service, gens int) {
	m.wait(t, "# new generation", gens)
	time.Sleep(200 * time.Millisecond) // anything more would show now
	vip, _, _ := strings.Cut(svc.Address, ":")
	n := 0
	for _, line := range strings.Split(m.String(), "\n") {
		switch {
		case strings.HasPrefix(line, "# new generation"):
			n++
		case line == "":
		case !strings.HasPrefix(line, "add element ") && !strings.HasPrefix(line, "delete element "):
			t.Errorf("nft monitor: not an element change: %q", line)
		case !strings.Contains(line, "{ "+vip+" . "):
			t.Errorf("nft monitor: change outside service %s: %q", svc.Name, line)
		}
	}
	if n != gens {
		t.Errorf("nft monitor saw %d transactions, want %d", n, gens)
	}
	t.Logf("nft monitor during add, set, drain and remove of one target:\n%s", m.String())
}

// BenchmarkAddTarget times adding and then removing one target of one
// service while many others exist (one op = one add or one remove).
func BenchmarkAddTarget(b *testing.B) {
	for _, n := range []int{10, 10000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			ns := lbtest.NewNS(b, fmt.Sprintf("bench%d", n))
			be := newBackend(b, ns)
			svc := populate(b, be, n)[n/2]
			third, tt := addThird(svc)
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				if i%2 == 0 {
					must(b, be.AddTarget(third, tt))
				} else {
					must(b, be.RemoveTarget(svc, tt))
				}
			}
		})
	}
}
