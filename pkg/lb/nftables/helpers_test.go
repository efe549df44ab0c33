package nftables

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/pkg/lb/internal/lbtest"
	"github.com/circuit-cni/circuit/pkg/lb/internal/spec"
)

func newBackend(t testing.TB, ns *lbtest.NS) *Backend {
	t.Helper()
	b, err := New(ns.Path)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Available(); err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// service is a service whose targets have weight 1 (0 would drain them).
func service(name, vip, sched string, targets ...string) spec.Service {
	s := spec.Service{Name: name, Address: vip, Scheduler: sched}
	for _, a := range targets {
		s.Targets = append(s.Targets, spec.Target{Address: a, Weight: 1})
	}
	return s
}

// with returns svc with its targets replaced (a copy).
func with(svc spec.Service, targets ...spec.Target) spec.Service {
	svc.Targets = append([]spec.Target(nil), targets...)
	return svc
}

func target(addr string, weight int) spec.Target { return spec.Target{Address: addr, Weight: weight} }

func hostPort(ip string, port string) string {
	if netip.MustParseAddr(ip).Is6() {
		return "[" + ip + "]:" + port
	}
	return ip + ":" + port
}

func url(ip string) string { return "http://" + hostPort(ip, "80") + "/" }

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// nft runs nft in ns if it is installed; ok is false when it is not.
func nft(t testing.TB, ns *lbtest.NS, args ...string) (out string, ok bool) {
	t.Helper()
	p, found := lbtest.Tool("nft")
	if !found {
		return "", false
	}
	out, err := ns.Run(append([]string{p}, args...)...)
	if err != nil {
		t.Fatalf("nft %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out, true
}

// foreign is a table someone else owns, with a chain and a rule.
var foreign = &nftables.Table{Name: "foreign", Family: nftables.TableFamilyINet}

func addForeignTable(t testing.TB, ns *lbtest.NS) {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(nsFd(t, ns)))
	must(t, err)
	c.AddTable(foreign)
	ch := c.AddChain(&nftables.Chain{Name: "input", Table: foreign, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter})
	c.AddRule(&nftables.Rule{Table: foreign, Chain: ch, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{6}},
		&expr.Counter{},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}})
	must(t, c.Flush())
}

// foreignSnapshot captures the foreign table: `nft list table` text when
// nft is installed, and always its chains and rules read over netlink.
type foreignSnapshot struct {
	text   string
	chains []*nftables.Chain
	rules  []*nftables.Rule
}

func snapshotForeign(t testing.TB, ns *lbtest.NS) foreignSnapshot {
	t.Helper()
	var s foreignSnapshot
	s.text, _ = nft(t, ns, "list", "table", "inet", "foreign")
	c, err := nftables.New(nftables.WithNetNSFd(nsFd(t, ns)))
	must(t, err)
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	must(t, err)
	for _, ch := range chains {
		if ch.Table.Name != foreign.Name {
			continue
		}
		s.chains = append(s.chains, ch)
		rules, err := c.GetRules(foreign, ch)
		must(t, err)
		s.rules = append(s.rules, rules...)
	}
	if len(s.chains) == 0 || len(s.rules) == 0 {
		t.Fatalf("foreign table is missing: %+v", s)
	}
	return s
}

func (s foreignSnapshot) diff(o foreignSnapshot) string {
	if s.text != o.text {
		return "nft list table inet foreign:\n" + cmp.Diff(s.text, o.text)
	}
	return cmp.Diff(s.chains, o.chains) + cmp.Diff(s.rules, o.rules)
}

func nsFd(t testing.TB, ns *lbtest.NS) int {
	t.Helper()
	b, err := New(ns.Path) // borrow its netns fd for the lifetime of the test
	must(t, err)
	t.Cleanup(func() { b.Close() })
	return int(b.ns.Fd())
}

// hostTopo is the standard topology, for tests the VM tier skips.
func hostTopo(t *testing.T) *lbtest.Topo {
	lbtest.HostOnly(t)
	return lbtest.NewTopo(t)
}

func stats(t testing.TB, b *Backend, svc spec.Service) *spec.Stats {
	t.Helper()
	st, err := b.Stats(svc)
	must(t, err)
	return st
}

func isNotFound(err error) bool { return errors.Is(err, api.ErrNotFound) }
