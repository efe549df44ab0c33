package cni

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
)

func TestIPAMRangesAndForCluster(t *testing.T) {
	conf := []byte(`{"cniVersion": "1.0.0", "name": "c", "plugins": [
	  {"type": "bridge", "bridge": "cbr0", "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/16"}], [{"subnet": "fd00:1::/64"}]],
	   "routes": [{"dst": "0.0.0.0/0"}]}},
	  {"type": "portmap"}]}`)
	r, err := IPAMRanges(conf)
	if err != nil || !slices.Equal(r, []string{"10.1.0.0/16", "fd00:1::/64"}) {
		t.Fatalf("IPAMRanges = %v, %v", r, err)
	}
	out, err := ForCluster(conf, Cluster{Blocks: []string{"10.1.3.0/24", "fd00:1::300/120", "10.1.9.0/24"}, DataDir: "/var/lib/circuit/cluster-ipam",
		Ranges: r, MTU: 1450})
	if err != nil {
		t.Fatal(err)
	}
	if r, _ := IPAMRanges(out); !slices.Equal(r, []string{"10.1.3.0/24", "10.1.9.0/24", "fd00:1::300/120"}) {
		t.Errorf("ranges after ForCluster: %v", r)
	}
	if !strings.Contains(string(out), `"dataDir":"/var/lib/circuit/cluster-ipam"`) || !strings.Contains(string(out), "portmap") {
		t.Errorf("ForCluster lost or left something:\n%s", out)
	}
	// A route to each range beside the configuration's own; no masquerade
	// of the plugin's; the overlay's MTU.
	if !strings.Contains(string(out), `"routes":[{"dst":"0.0.0.0/0"},{"dst":"10.1.0.0/16"},{"dst":"fd00:1::/64"}]`) ||
		!strings.Contains(string(out), `"ipMasq":false`) || !strings.Contains(string(out), `"mtu":1450`) || !strings.Contains(string(out), `"hairpinMode":true`) {
		t.Errorf("ForCluster routes, ipMasq, MTU or hairpinMode:\n%s", out)
	}
	var back map[string]any
	if json.Unmarshal(out, &back) != nil {
		t.Error("not JSON")
	}
	if _, err := Parse(out); err != nil {
		t.Errorf("rewritten configuration does not parse: %v", err)
	}
	single := []byte(`{"cniVersion": "0.4.0", "name": "s", "type": "bridge", "ipam": {"type": "host-local", "subnet": "10.2.0.0/16", "gateway": "10.2.0.1"}}`)
	if r, _ := IPAMRanges(single); !slices.Equal(r, []string{"10.2.0.0/16"}) {
		t.Errorf("single: %v", r)
	}
	out, _ = ForCluster(single, Cluster{Blocks: []string{"10.2.7.0/24"}, DataDir: "/d", Ranges: []string{"10.2.0.0/16"}})
	if strings.Contains(string(out), "gateway") || strings.Contains(string(out), `"subnet":"10.2.0.0/16"`) ||
		!strings.Contains(string(out), `"routes":[{"dst":"10.2.0.0/16"}]`) || strings.Contains(string(out), "mtu") {
		t.Errorf("single rewritten: %s", out)
	}
	// A smaller MTU the configuration asks for stays; a plugin without
	// ipMasq and MTU gets neither; a route already there is not repeated.
	small := []byte(`{"cniVersion": "1.0.0", "name": "m", "type": "bridge", "mtu": 1300, "ipMasq": true, "hairpinMode": false,
	  "ipam": {"type": "host-local", "subnet": "10.3.0.0/16", "routes": [{"dst": "10.3.0.0/16"}]}}`)
	out, _ = ForCluster(small, Cluster{Blocks: []string{"10.3.1.0/24"}, Ranges: []string{"10.3.0.0/16"}, MTU: 1450})
	if !strings.Contains(string(out), `"mtu":1300`) || !strings.Contains(string(out), `"ipMasq":false`) || strings.Count(string(out), "10.3.0.0/16") != 1 ||
		!strings.Contains(string(out), `"hairpinMode":false`) {
		t.Errorf("small MTU kept: %s", out)
	}
	other := []byte(`{"cniVersion": "1.0.0", "name": "o", "type": "circuit-test-plugin", "ipam": {"type": "host-local", "subnet": "10.4.0.0/16"}}`)
	out, _ = ForCluster(other, Cluster{Blocks: []string{"10.4.1.0/24"}, MTU: 1450})
	if strings.Contains(string(out), "mtu") || strings.Contains(string(out), "ipMasq") {
		t.Errorf("a plugin that takes neither: %s", out)
	}
	if r, _ := IPAMRanges([]byte(`{"name": "x", "type": "macvlan", "ipam": {"type": "dhcp"}}`)); r != nil {
		t.Errorf("dhcp: %v", r)
	}
}
