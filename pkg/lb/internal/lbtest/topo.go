package lbtest

import (
	"os/exec"
	"testing"
	"time"

	"github.com/circuit-cni/circuit/pkg/testutil"
)

// Addresses of the standard topology. All inside test namespaces.
const (
	VIP4 = "10.201.100.10"
	VIP6 = "fd00:201:100::10"

	Client4 = "10.201.1.2"
	Client6 = "fd00:201:1::2"
	// Client4b is a second client address, to see a second source.
	Client4b = "10.201.1.3"

	A4 = "10.201.2.2"
	A6 = "fd00:201:2::2"
	B4 = "10.201.3.2"
	B6 = "fd00:201:3::2"

	// EchoPort is where every server also answers lines on long-lived
	// connections (ServeEcho).
	EchoPort = "7007"

	// Hairpin: client C and server H share bridge br0 in the LB namespace.
	C4 = "10.201.4.2"
	H4 = "10.201.4.3"
)

// Topo is a router namespace LB with a client and two HTTP servers, each
// on its own veth, routed through LB:
//
//	client 10.201.1.2 ── LB ── a 10.201.2.2:80 ("a")
//	                        └─ b 10.201.3.2:80 ("b")
//
// plus IPv6 fd00:201:N::2 on each link. Servers answer "NAME CLIENT-IP".
type Topo struct {
	LB, Client, A, B *NS
	// Set by AddHairpin.
	C, H *NS
}

// NewTopo builds the topology; everything is removed when the test ends.
func NewTopo(t testing.TB) *Topo {
	t.Helper()
	Root(t)
	tp := &Topo{LB: NewNS(t, "lb"), Client: NewNS(t, "cl"), A: NewNS(t, "a"), B: NewNS(t, "b")}
	tp.LB.Forward(t)
	Veth(t, tp.LB, "to-cl", []string{"10.201.1.1/24", "fd00:201:1::1/64"},
		tp.Client, "eth0", []string{Client4 + "/24", Client4b + "/24", Client6 + "/64"})
	Veth(t, tp.LB, "to-a", []string{"10.201.2.1/24", "fd00:201:2::1/64"},
		tp.A, "eth0", []string{A4 + "/24", A6 + "/64"})
	Veth(t, tp.LB, "to-b", []string{"10.201.3.1/24", "fd00:201:3::1/64"},
		tp.B, "eth0", []string{B4 + "/24", B6 + "/64"})
	tp.Client.DefaultVia(t, "10.201.1.1", "fd00:201:1::1")
	tp.A.DefaultVia(t, "10.201.2.1", "fd00:201:2::1")
	tp.B.DefaultVia(t, "10.201.3.1", "fd00:201:3::1")
	for _, s := range []struct {
		ns   *NS
		name string
		addr []string
	}{{tp.A, "a", []string{A4, "[" + A6 + "]"}}, {tp.B, "b", []string{B4, "[" + B6 + "]"}}} {
		for _, a := range s.addr {
			s.ns.Serve(t, a+":80", s.name)
			s.ns.ServeEcho(t, a+":"+EchoPort, s.name)
		}
	}
	return tp
}

// AddHairpin adds bridge br0 (10.201.4.1/24) in LB with a client C and a
// server H ("h") on it: C reaching a service whose target is H must be
// masqueraded, or H would answer C directly.
func (tp *Topo) AddHairpin(t testing.TB) {
	t.Helper()
	tp.C, tp.H = NewNS(t, "c"), NewNS(t, "h")
	tp.LB.Bridge(t, "br0", "10.201.4.1/24")
	Veth(t, tp.LB, "to-c", nil, tp.C, "eth0", []string{C4 + "/24"})
	Veth(t, tp.LB, "to-h", nil, tp.H, "eth0", []string{H4 + "/24"})
	tp.LB.Enslave(t, "to-c", "br0")
	tp.LB.Enslave(t, "to-h", "br0")
	tp.C.DefaultVia(t, "10.201.4.1")
	tp.H.DefaultVia(t, "10.201.4.1")
	tp.H.Serve(t, H4+":80", "h")
}

// Tool returns the path of a command, or skips the calling check when it
// is missing (inspection only: the tests never need it to pass).
func Tool(name string) (string, bool) {
	p, err := exec.LookPath(name)
	return p, err == nil
}

// SetPersistence sets a service's persistence whether the field is a
// time.Duration or a api.Duration.
func SetPersistence[T ~int64](field *T, d time.Duration) { *field = T(d) }

// HostOnly skips a test in the VM tier: it needs only what the host
// kernel has, and the VM tier is for what it lacks.
func HostOnly(t testing.TB) {
	t.Helper()
	if testutil.InVM() {
		t.Skip("host-kernel test: skipped in the VM tier")
	}
}
