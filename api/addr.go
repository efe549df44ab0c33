package api

import (
	"net/netip"
	"strconv"
	"strings"
)

// ParseAddrPort parses "10.0.0.1:80" or "[fd00::1]:80". It refuses hostnames,
// zones, port 0 and a missing port: a load balancer programs literal
// addresses, and a zone has no meaning to IPVS or nftables.
func ParseAddrPort(s string) (netip.AddrPort, error) {
	bad := func(why string) (netip.AddrPort, error) {
		return netip.AddrPort{}, Errorf(ErrInvalid, "address %q: %s", s, why)
	}
	host, port, ok := splitHostPort(s)
	if !ok {
		return bad("want ip:port or [ipv6]:port")
	}
	if strings.Contains(host, "%") {
		return bad("zones are not allowed")
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		return bad("not an IP address (hostnames are not resolved)")
	}
	if addr.Is4In6() {
		return bad("IPv4-mapped IPv6 addresses are not allowed; write the IPv4 address")
	}
	if addr.Is6() && !strings.HasPrefix(s, "[") {
		return bad("IPv6 addresses need brackets")
	}
	if addr.Is4() && strings.HasPrefix(s, "[") {
		return bad("IPv4 addresses take no brackets")
	}
	if addr.IsUnspecified() || addr.IsMulticast() {
		return bad("unspecified or multicast address")
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || port[0] == '+' || (len(port) > 1 && port[0] == '0') {
		return bad("port must be a decimal number 1-65535")
	}
	if n == 0 {
		return bad("port 0 is not allowed")
	}
	return netip.AddrPortFrom(addr, uint16(n)), nil
}

// splitHostPort splits at the last colon, requiring brackets around a host
// that itself contains colons.
func splitHostPort(s string) (host, port string, ok bool) {
	if strings.HasPrefix(s, "[") {
		end := strings.Index(s, "]")
		if end < 0 || end+1 >= len(s) || s[end+1] != ':' {
			return "", "", false
		}
		host, port = s[1:end], s[end+2:]
	} else {
		i := strings.LastIndexByte(s, ':')
		if i < 0 {
			return "", "", false
		}
		host, port = s[:i], s[i+1:]
		if strings.Contains(host, ":") {
			return "", "", false
		}
	}
	if host == "" || port == "" || strings.ContainsAny(port, "[]:") {
		return "", "", false
	}
	return host, port, true
}
