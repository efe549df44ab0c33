package cni

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
)

func TestIPAMRangesAndWithBlocks(t *testing.T) {
	conf := []byte(`{"cniVersion": "1.0.0", "name": "c", "plugins": [
	  {"type": "bridge", "bridge": "cbr0", "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/16"}], [{"subnet": "fd00:1::/64"}]],
	   "routes": [{"dst": "0.0.0.0/0"}]}},
	  {"type": "portmap"}]}`)
	r, err := IPAMRanges(conf)
	if err != nil || !slices.Equal(r, []string{"10.1.0.0/16", "fd00:1::/64"}) {
		t.Fatalf("IPAMRanges = %v, %v", r, err)
	}
	out, err := WithBlocks(conf, []string{"10.1.3.0/24", "fd00:1::300/120", "10.1.9.0/24"}, "/var/lib/circuit/cluster-ipam")
	if err != nil {
		t.Fatal(err)
	}
	if r, _ := IPAMRanges(out); !slices.Equal(r, []string{"10.1.3.0/24", "10.1.9.0/24", "fd00:1::300/120"}) {
		t.Errorf("ranges after WithBlocks: %v", r)
	}
	if !strings.Contains(string(out), `"dataDir":"/var/lib/circuit/cluster-ipam"`) || !strings.Contains(string(out), `"routes"`) || !strings.Contains(string(out), "portmap") {
		t.Errorf("WithBlocks lost or left something:\n%s", out)
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
	out, _ = WithBlocks(single, []string{"10.2.7.0/24"}, "/d")
	if strings.Contains(string(out), "gateway") || strings.Contains(string(out), `"subnet":"10.2.0.0/16"`) {
		t.Errorf("single rewritten: %s", out)
	}
	if r, _ := IPAMRanges([]byte(`{"name": "x", "type": "macvlan", "ipam": {"type": "dhcp"}}`)); r != nil {
		t.Errorf("dhcp: %v", r)
	}
}
