package api

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParsePublish(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []PortMapping
	}{
		{"8080:80", []PortMapping{{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}}},
		{"0.0.0.0:8080:80/udp", []PortMapping{{HostPort: 8080, ContainerPort: 80, Protocol: "udp"}}},
		{"[::]:8080:80", []PortMapping{{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}}},
		{"[fd00:1::1]:53:53/sctp", []PortMapping{{HostIP: "fd00:1::1", HostPort: 53, ContainerPort: 53, Protocol: "sctp"}}},
		{"[::ffff:10.0.0.1]:8080:80", []PortMapping{{HostIP: "10.0.0.1", HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}}},
		{"127.0.0.1:8000-8002:80-82", []PortMapping{
			{HostIP: "127.0.0.1", HostPort: 8000, ContainerPort: 80, Protocol: "tcp"},
			{HostIP: "127.0.0.1", HostPort: 8001, ContainerPort: 81, Protocol: "tcp"},
			{HostIP: "127.0.0.1", HostPort: 8002, ContainerPort: 82, Protocol: "tcp"}}},
	} {
		got, err := ParsePublish(tc.in)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParsePublish(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
	for in, why := range map[string]string{
		"[::1]:8080:80":      "cannot DNAT IPv6 loopback",
		"[fe80::1%eth0]:1:1": "not an IP address",
		"8000-8001:80":       "differ in length",
		"80-70:80-70":        "runs backwards",
		"+80:80":             "not a port",
		"8080:80/":           "", // an empty protocol is tcp: accepted below
		"a:b:c:d":            "want",
	} {
		_, err := ParsePublish(in)
		if why == "" {
			if err != nil {
				t.Errorf("ParsePublish(%q): %v", in, err)
			}
			continue
		}
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), why) || strings.Contains(err.Error(), "\n") {
			t.Errorf("ParsePublish(%q) = %v, want one line with %q", in, err, why)
		}
	}
}

// A wildcard host address is every address of both families: it meets any
// mapping of the same port and protocol.
func TestPublishConflicts(t *testing.T) {
	m := func(ip string, port uint16, proto string) PortMapping {
		return PortMapping{HostIP: ip, HostPort: port, ContainerPort: 80, Protocol: proto}
	}
	for _, tc := range []struct {
		a, b PortMapping
		want bool
	}{
		{m("", 8080, "tcp"), m("", 8080, "tcp"), true},
		{m("", 8080, "tcp"), m("10.0.0.1", 8080, "tcp"), true},
		{m("fd00::1", 8080, "tcp"), m("", 8080, "tcp"), true},
		{m("10.0.0.1", 8080, "tcp"), m("10.0.0.1", 8080, "tcp"), true},
		{m("10.0.0.1", 8080, "tcp"), m("10.0.0.2", 8080, "tcp"), false},
		{m("10.0.0.1", 8080, "tcp"), m("fd00::1", 8080, "tcp"), false},
		{m("", 8080, "tcp"), m("", 8080, "udp"), false},
		{m("", 8080, "tcp"), m("", 8081, "tcp"), false},
	} {
		if got := tc.a.Conflicts(tc.b); got != tc.want || tc.b.Conflicts(tc.a) != tc.want {
			t.Errorf("%s against %s: %v, want %v both ways", tc.a, tc.b, got, tc.want)
		}
	}
}

func TestSettingsValues(t *testing.T) {
	if mac, err := ValidMAC("02-42-AC-11-00-02"); err != nil || mac != "02:42:ac:11:00:02" {
		t.Errorf("ValidMAC normalizes to %q, %v", mac, err)
	}
	for _, ip := range []string{"0.0.0.0", "::", "127.0.0.1", "::1", "224.0.0.1", "ff02::1", "fe80::1%eth0", "10.0.0.1/24"} {
		if _, err := ValidRequestedIP(ip); !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidRequestedIP(%q) = %v", ip, err)
		}
	}
	if a, err := ValidRequestedIP("::ffff:10.0.0.9"); err != nil || a.String() != "10.0.0.9" {
		t.Errorf("a v4-mapped address: %v, %v", a, err)
	}
	for alias, ok := range map[string]bool{"web": true, "api.internal": true, "no spaces": false, "": false, "under_score": false} {
		if err := ValidAlias(alias); (err == nil) != ok {
			t.Errorf("ValidAlias(%q) = %v", alias, err)
		}
	}
}

// Whatever --publish is given, ParsePublish returns mappings that name real
// ports and protocols and read back the same, or one line of error.
func FuzzParsePublish(f *testing.F) {
	for _, s := range []string{"8080:80", "[fd00::1]:53:53/udp", "127.0.0.1:8000-8010:80-90/sctp", "[::1]:1:1", "0:0", "a:b:c:d", "[", "65535-65535:1-1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParsePublish(s)
		if err != nil {
			if strings.Contains(err.Error(), "\n") || !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParsePublish(%q): %v", s, err)
			}
			return
		}
		if len(got) == 0 || len(got) > 65535 {
			t.Fatalf("ParsePublish(%q) gave %d mappings", s, len(got))
		}
		for _, m := range got {
			if m.HostPort == 0 || m.ContainerPort == 0 || ValidProtocol(m.Protocol) != nil {
				t.Fatalf("ParsePublish(%q) gave %+v", s, m)
			}
			again, err := ParsePublish(m.String())
			if err != nil || len(again) != 1 || again[0] != m {
				t.Fatalf("%+v reads back from %q as %+v, %v", m, m.String(), again, err)
			}
		}
	})
}
