package api

import (
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// PortMapping publishes a container port on the host, as CNI's portmap
// plugin takes it (the portMappings capability).
type PortMapping struct {
	HostIP        string `json:"hostIP,omitempty"` // "" is every address of the family
	HostPort      uint16 `json:"hostPort"`
	ContainerPort uint16 `json:"containerPort"`
	Protocol      string `json:"protocol"` // tcp, udp or sctp
}

// String is podman's form: [HOSTIP:]HOSTPORT:CONTAINERPORT/PROTOCOL.
func (m PortMapping) String() string {
	s := strconv.Itoa(int(m.HostPort)) + ":" + strconv.Itoa(int(m.ContainerPort)) + "/" + m.Protocol
	if m.HostIP == "" {
		return s
	}
	if a, err := netip.ParseAddr(m.HostIP); err == nil && a.Is6() {
		return "[" + m.HostIP + "]:" + s
	}
	return m.HostIP + ":" + s
}

// ParsePublish reads a --publish as podman does:
// [HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|udp|sctp], where both ports may be
// equal-length ranges (8000-8010:80-90); an IPv6 host address is bracketed.
// IPv6 loopback is refused: the kernel cannot DNAT it.
func ParsePublish(s string) ([]PortMapping, error) {
	bad := func(why string) ([]PortMapping, error) {
		return nil, Errorf(ErrInvalid, "publish %s: %s", quote(s), why)
	}
	spec, proto, _ := strings.Cut(s, "/")
	if proto == "" {
		proto = DefaultProtocol
	}
	if err := ValidProtocol(proto); err != nil {
		return bad("protocol " + quote(proto) + ": want tcp, udp or sctp")
	}
	var hostIP string
	if strings.HasPrefix(spec, "[") {
		end := strings.Index(spec, "]:")
		if end < 0 {
			return bad("want [IPV6]:HOSTPORT:CONTAINERPORT")
		}
		hostIP, spec = spec[1:end], spec[end+2:]
	} else if parts := strings.Split(spec, ":"); len(parts) == 3 {
		hostIP, spec = parts[0], parts[1]+":"+parts[2]
	} else if len(parts) > 3 {
		return bad("want [HOSTIP:]HOSTPORT:CONTAINERPORT[/PROTOCOL], an IPv6 HOSTIP in brackets")
	}
	if hostIP != "" {
		a, err := netip.ParseAddr(hostIP)
		switch {
		case err != nil || a.Zone() != "":
			return bad("host address " + quote(hostIP) + " is not an IP address")
		case a.Is6() && a.IsLoopback():
			return bad("the kernel cannot DNAT IPv6 loopback (::1): publish on another address of the host")
		case a.IsUnspecified():
			hostIP = "" // 0.0.0.0 means every address, as no address
		case a.IsMulticast():
			return bad("host address " + hostIP + " is multicast")
		default:
			hostIP = a.Unmap().String()
		}
	}
	hostPorts, ctrPorts, ok := strings.Cut(spec, ":")
	if !ok {
		return bad("want [HOSTIP:]HOSTPORT:CONTAINERPORT[/PROTOCOL]")
	}
	h0, h1, err := portRange(hostPorts)
	if err != nil {
		return bad("host port: " + err.Error())
	}
	c0, c1, err := portRange(ctrPorts)
	if err != nil {
		return bad("container port: " + err.Error())
	}
	if h1-h0 != c1-c0 {
		return bad("the host and container port ranges differ in length")
	}
	var out []PortMapping
	for i := 0; i <= h1-h0; i++ {
		out = append(out, PortMapping{HostIP: hostIP, HostPort: uint16(h0 + i), ContainerPort: uint16(c0 + i), Protocol: proto})
	}
	return out, nil
}

// portRange reads "80" or "8000-8010" (1-65535, first <= last).
func portRange(s string) (int, int, error) {
	first, last, isRange := strings.Cut(s, "-")
	if !isRange {
		last = first
	}
	a, err1 := strconv.Atoi(first)
	b, err2 := strconv.Atoi(last)
	switch {
	case err1 != nil || err2 != nil || strings.HasPrefix(first, "+") || strings.HasPrefix(last, "+"):
		return 0, 0, Errorf(ErrInvalid, "%s is not a port or a range of ports", quote(s))
	case a < 1 || a > 65535 || b < 1 || b > 65535:
		return 0, 0, Errorf(ErrInvalid, "%s is out of 1-65535", quote(s))
	case a > b:
		return 0, 0, Errorf(ErrInvalid, "range %s runs backwards", quote(s))
	}
	return a, b, nil
}

// Conflicts reports whether two mappings want the same host port: the
// same protocol and port, and the same host address or either unspecified
// on the same family.
func (m PortMapping) Conflicts(o PortMapping) bool {
	if m.Protocol != o.Protocol || m.HostPort != o.HostPort {
		return false
	}
	if m.HostIP == o.HostIP {
		return true
	}
	// No address is every address (portmap publishes it on both
	// families), so it meets any other.
	return m.HostIP == "" || o.HostIP == ""
}

// ValidMAC checks a MAC a user asks for: 6 bytes, unicast, not all zero.
func ValidMAC(s string) (string, error) {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return "", Errorf(ErrInvalid, "MAC %s: want six hex bytes, e.g. 02:42:ac:11:00:02", quote(s))
	}
	if hw[0]&1 != 0 {
		return "", Errorf(ErrInvalid, "MAC %s is a multicast address", quote(s))
	}
	if hw.String() == "00:00:00:00:00:00" {
		return "", Errorf(ErrInvalid, "MAC %s is all zeros", quote(s))
	}
	return hw.String(), nil
}

// ValidAlias checks a name a container is also known by (DNS plugins
// answer for it): a DNS label or name.
func ValidAlias(s string) error {
	if ValidNodeName(s) != nil {
		return Errorf(ErrInvalid, "alias %s: use letters, digits, '-' and '.' (a DNS name)", quote(s))
	}
	return nil
}

// ValidRequestedIP checks an --ip: an address, unicast, not loopback.
func ValidRequestedIP(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, Errorf(ErrInvalid, "address %s is not an IP address", quote(s))
	}
	if a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() {
		return netip.Addr{}, Errorf(ErrInvalid, "address %s cannot be a container's", quote(s))
	}
	return a.Unmap(), nil
}

// ValidPodName checks a container name passed to plugins in CNI_ARGS
// (K8S_POD_NAME): what runc accepts as an ID, which CNI_ARGS can carry.
func ValidPodName(s string) error {
	if err := ValidContainerID(s); err != nil {
		return Errorf(ErrInvalid, "name %s: use letters, digits, '_', '+', '.' or '-'", quote(s))
	}
	return nil
}
