package ipvs

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/pkg/lb/internal/lbtest"
	"github.com/circuit-cni/circuit/pkg/lb/internal/spec"
)

func TestValidate(t *testing.T) {
	b := &Backend{}
	for sched := range api.Schedulers {
		for _, proto := range []string{"tcp", "udp", "sctp"} {
			svc := spec.Service{Name: "web", Address: "10.0.0.1:80", Scheduler: sched, Protocol: proto,
				Targets: []spec.Target{
					{Address: "10.0.1.1:8080"}, {Address: "10.0.1.2:80", Forward: "dr"},
					{Address: "10.0.1.3:80", Forward: "tunnel", Weight: 5}, {Address: "[fd00::1]:80", Forward: "tunnel"},
				}}
			if err := b.Validate(svc); err != nil {
				t.Errorf("%s/%s: %v", sched, proto, err)
			}
		}
	}
	bad := spec.Service{Name: "web", Address: "10.0.0.1:80", Scheduler: "fo"}
	if err := b.Validate(bad); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("unknown scheduler: %v", err)
	}
}

func TestToSvc(t *testing.T) {
	rec := spec.Service{Name: "web", Address: "[fd00::1]:443", Protocol: "sctp", Scheduler: "mh",
		Targets: []spec.Target{{Address: "[fd00::2]:443", Forward: "dr", Weight: 7}}}
	lbtest.SetPersistence(&rec.Persistence, 1500*time.Millisecond)
	s, err := spec.Parse(rec)
	if err != nil {
		t.Fatal(err)
	}
	got := toSvc(s)
	want := &svc{addr: s.VIP, proto: 132, sched: "mh", flags: svcFlagPersistent, timeout: 2, netmask: 128}
	if !cmp.Equal(got, want, cmp.AllowUnexported(svc{}, stats{}), cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })) {
		t.Errorf("toSvc = %+v, want %+v", got, want)
	}
	if d := toDest(s.Targets[0]); d.fwd != fwdDirectRoute || d.weight != 7 {
		t.Errorf("toDest = %+v", d)
	}
	s.Persistence = 0
	s.VIP = netip.MustParseAddrPort("10.0.0.1:80")
	if k := toSvc(s); k.flags != 0 || k.timeout != 0 || k.netmask != 0xffffffff {
		t.Errorf("toSvc without persistence = %+v", k)
	}
}

// A service written as NEW_SERVICE encodes it reads back as the kernel
// reports it (same attributes, address padded to 16 bytes).
func TestServiceRoundTrip(t *testing.T) {
	for _, a := range []string{"10.1.2.3:80", "[fd00::1]:8443"} {
		in := &svc{addr: netip.MustParseAddrPort(a), proto: 6, sched: "wlc", flags: svcFlagPersistent, timeout: 300, netmask: 0xffffffff}
		ae := netlink.NewAttributeEncoder()
		encodeSvc(ae, in, true)
		b, err := ae.Encode()
		if err != nil {
			t.Fatal(err)
		}
		out, err := decodeSvcMsg(netlink.Message{Data: append([]byte{ipvsCmdNewService, 1, 0, 0}, b...)})
		if err != nil {
			t.Fatal(err)
		}
		if out.addr != in.addr || out.proto != in.proto || out.sched != in.sched || !sameSettings(out, in) {
			t.Errorf("round trip of %+v = %+v", in, out)
		}
	}
}

func TestDecodeKernelAnswer(t *testing.T) {
	// What the kernel sends for a real server: a 16-byte address, stats
	// and stats64.
	ae := netlink.NewAttributeEncoder()
	ae.Nested(ipvsCmdAttrDest, func(n *netlink.AttributeEncoder) error {
		n.Bytes(destAttrAddr, append([]byte{10, 0, 0, 2}, make([]byte, 12)...))
		n.Bytes(destAttrPort, []byte{0x1f, 0x90})
		n.Uint32(destAttrFwdMethod, fwdTunnel)
		n.Uint32(destAttrWeight, 3)
		n.Uint32(destAttrActiveConns, 4)
		n.Uint16(destAttrAddrFamily, unix.AF_INET)
		n.Nested(destAttrStats, func(s *netlink.AttributeEncoder) error {
			s.Uint32(statsConns, 1)
			return nil
		})
		n.Nested(destAttrStats64, func(s *netlink.AttributeEncoder) error {
			s.Uint64(statsConns, 5)
			s.Uint64(statsInPkts, 6)
			s.Uint64(statsOutPkts, 7)
			s.Uint64(statsInBytes, 8)
			s.Uint64(statsOutBytes, 9)
			return nil
		})
		return nil
	})
	b, _ := ae.Encode()
	d, err := decodeDestMsg(netlink.Message{Data: append([]byte{ipvsCmdNewDest, 1, 0, 0}, b...)}, netip.MustParseAddr("fd00::1"))
	if err != nil {
		t.Fatal(err)
	}
	want := dest{addr: netip.MustParseAddrPort("10.0.0.2:8080"), fwd: fwdTunnel, weight: 3, active: 4,
		stats: stats{conns: 5, inPkts: 6, outPkts: 7, inBytes: 8, outBytes: 9}}
	if *d != want {
		t.Errorf("decoded %+v, want %+v", *d, want)
	}
	if c := counters(d.stats); c != (spec.Counters{Connections: 5, Packets: 13, Bytes: 17}) {
		t.Errorf("counters %+v", c)
	}
}

// On this kind of host (no IPVS) Available says so, naming the feature.
func TestAvailableNames(t *testing.T) {
	b, err := New("")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Available(); err != nil {
		if !errors.Is(err, api.ErrUnsupported) || !strings.Contains(err.Error(), "IPVS (CONFIG_IP_VS) is not available in this kernel") {
			t.Errorf("Available: %v", err)
		}
		// Operations fail the same way, before touching anything.
		svc := spec.Service{Name: "web", Address: "10.201.100.10:80"}
		if err := b.Ensure(svc); !errors.Is(err, api.ErrUnsupported) {
			t.Errorf("Ensure without IPVS: %v", err)
		}
	}
}
