package integration

import (
	"os"
	"strings"
	"testing"

	"github.com/circuit-cni/circuit/pkg/testutil"
)

// A target reaches its own service: its connections balanced to itself
// are answered as the service's, as every other one. The bridge lets
// frames out the port they came in by ("hairpinMode": true); where
// br_netfilter runs bridged packets through netfilter (as on this host),
// circuit's hairpin rule must then masquerade a connection whose client
// is its target. Before it, those connections hung: the target got a SYN
// from its own address.
//
// Network 10.220.63.0/24, service address 10.220.64.1.
func TestLBTargetReachesItself(t *testing.T) {
	if testutil.InVM() {
		// IPVS has no rule of circuit's to masquerade with on one host;
		// cluster services get it from circuit-agent (TestClusterLB).
		t.Skip("a target balanced to itself by a local IPVS service is not masqueraded: nftables only")
	}
	c := lbStart(t)
	conf := c.conf("lbself", "10.220.63.0/24")
	body, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, []byte(strings.Replace(string(body), `"isGateway": true,`, `"isGateway": true, "hairpinMode": true,`, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	c.must("network", "create", conf)
	a := c.httpdContainer("lbself", "lsa")
	b := c.httpdContainer("lbself", "lsb")
	for _, backend := range lbBackends(t) {
		const vip = "10.220.64.1:80"
		c.lbService("self", "--backend", backend, vip)
		c.lbMust("service self updated\n", "lb", "add", "self", a.ip+":80", b.ip+":80")
		seen := map[string]int{}
		for i := range 6 {
			page, err := ncRequest(a.ctr, vip, "/")
			if err != nil {
				t.Fatalf("%s: request %d from target %s to its own service: %v", backend, i+1, a.ctr.ID, err)
			}
			seen[page]++
		}
		if seen[a.page] != 3 || seen[b.page] != 3 {
			t.Errorf("%s: rr from a target gave %v, want 3 each for %q (itself) and %q", backend, seen, a.page, b.page)
		}
		c.must("lb", "delete", "self")
	}
}
