package agent

import (
	"context"
	"fmt"
	"net"
	"net/url"

	"github.com/vishvananda/netlink"
)

// AdvertiseAddr is the address this host reaches endpoint from: the source
// of the kernel's route to it (netlink, as `ip route get` asks), so the
// other nodes reach this one the way it reaches etcd.
func AdvertiseAddr(ctx context.Context, endpoint string) (string, error) {
	u, err := url.Parse(endpoint)
	if err != nil || u.Hostname() == "" {
		return "", fmt.Errorf("advertise address: endpoint %s has no host", endpoint)
	}
	host := u.Hostname()
	ip := net.ParseIP(host)
	if ip == nil {
		ips, err := net.DefaultResolver.LookupIP(ctx, "ip", host)
		if err != nil || len(ips) == 0 {
			return "", fmt.Errorf("advertise address: resolve %s: %v", host, err)
		}
		ip = ips[0]
	}
	routes, err := netlink.RouteGet(ip)
	if err != nil {
		return "", fmt.Errorf("advertise address: route to %s: %w", ip, err)
	}
	for _, r := range routes {
		if r.Src != nil {
			return r.Src.String(), nil
		}
	}
	return "", fmt.Errorf("advertise address: the route to %s has no source address: give --advertise-addr", ip)
}
