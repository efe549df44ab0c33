package api

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParseAddrPort(t *testing.T) {
	good := map[string]string{
		"10.0.0.1:80":         "10.0.0.1:80",
		"[::1]:80":            "[::1]:80",
		"[fd00::10]:65535":    "[fd00::10]:65535",
		"[FD00:0::0:10]:8080": "[fd00::10]:8080",
		"192.168.255.254:1":   "192.168.255.254:1",
		"[2001:db8::1]:443":   "[2001:db8::1]:443",
		"127.0.0.1:53":        "127.0.0.1:53",
		"[fe80::1]:22":        "[fe80::1]:22",
	}
	for in, want := range good {
		got, err := ParseAddrPort(in)
		if err != nil || got.String() != want {
			t.Errorf("ParseAddrPort(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	bad := []string{
		"", "10.0.0.1", "10.0.0.1:", "10.0.0.1:0", "10.0.0.1:65536", "10.0.0.1:-1", "10.0.0.1:+80",
		"10.0.0.1:080", "10.0.0.1:http", "localhost:80", "example.com:443", "[::1]", "::1:80",
		"[::1]:0", "[fe80::1%eth0]:80", "fe80::1%eth0:80", "[10.0.0.1]:80", "[::ffff:10.0.0.1]:80",
		"0.0.0.0:80", "[::]:80", "224.0.0.1:80", "10.0.0.1:80:80", "[::1]80", "[::1]:80]", "10.0.0.1 :80",
		" 10.0.0.1:80", "10.0.0.256:80", "1.2.3:80", ":80", "[]:80",
	}
	for _, in := range bad {
		if got, err := ParseAddrPort(in); err == nil || !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseAddrPort(%q) = %v, %v; want error wrapping ErrInvalid", in, got, err)
		}
	}
}

func FuzzParseAddrPort(f *testing.F) {
	for _, s := range []string{"10.0.0.1:80", "[::1]:80", "[fe80::1%eth0]:80", "host:80", "1.2.3.4:0", "[::ffff:1.2.3.4]:9"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ap, err := ParseAddrPort(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if ap.Port() == 0 || ap.Addr().Zone() != "" || ap.Addr().Is4In6() || !ap.IsValid() {
			t.Fatalf("ParseAddrPort(%q) accepted %v", s, ap)
		}
		// What it accepts, the standard library reads the same way.
		std, err := netip.ParseAddrPort(s)
		if err != nil || std != ap {
			t.Fatalf("ParseAddrPort(%q) = %v, netip says %v, %v", s, ap, std, err)
		}
		// And the canonical form parses back to the same value.
		if again, err := ParseAddrPort(ap.String()); err != nil || again != ap {
			t.Fatalf("round trip of %v: %v, %v", ap, again, err)
		}
	})
}

func TestValidNames(t *testing.T) {
	for _, s := range []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh"} {
		if err := ValidScheduler(s); err != nil {
			t.Errorf("ValidScheduler(%q): %v", s, err)
		}
	}
	for _, s := range []string{"", "RR", "fo", "ovf", "random", "rr "} {
		if err := ValidScheduler(s); !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidScheduler(%q) = %v, want ErrInvalid", s, err)
		}
	}
	for _, s := range []string{"tcp", "udp", "sctp"} {
		if err := ValidProtocol(s); err != nil {
			t.Errorf("ValidProtocol(%q): %v", s, err)
		}
	}
	if err := ValidProtocol("icmp"); !errors.Is(err, ErrInvalid) {
		t.Errorf("ValidProtocol(icmp) = %v", err)
	}
	for _, s := range []string{"nat", "dr", "tunnel"} {
		if err := ValidForward(s); err != nil {
			t.Errorf("ValidForward(%q): %v", s, err)
		}
	}
	if err := ValidForward("masq"); !errors.Is(err, ErrInvalid) {
		t.Errorf("ValidForward(masq) = %v", err)
	}
	for _, s := range []string{"web", "a", "A.b-c_d", strings.Repeat("x", 63)} {
		if err := ValidServiceName(s); err != nil {
			t.Errorf("ValidServiceName(%q): %v", s, err)
		}
	}
	for _, s := range []string{"", "a/b", "a b", "ü", strings.Repeat("x", 64), "a:b"} {
		if err := ValidServiceName(s); !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidServiceName(%q) = %v", s, err)
		}
	}
}
