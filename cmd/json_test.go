package cmd

import (
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/circuit-cni/circuit/api"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/json")

// TestJSONSchema pins the `--format json` output of every listing, field
// by field: scripts parse it, so it changes only on purpose (and then
// docs/cli-json.md changes with it). The datastore's records are separate
// (ds/record), so no migration is ever needed for it.
func TestJSONSchema(t *testing.T) {
	h := newHarness(t)
	h.must("network", "create", h.conf("sandbox", "bridge", "10.100.10.0/24"))
	h.must("network", "connect", "4668", "sandbox")
	h.must("network", "connect", "4669", "sandbox")
	h.must("network", "qos", "set", "--rate", "5000", "--ceiling", "6000", "--delay", "50ms", "--direction", "both", "sandbox")
	h.must("network", "qos", "set", "--rate", "1000", "--container", "4669", "sandbox")
	if err := h.fake.AddPeer(api.Peer{Network: "sandbox", ContainerID: "half", PID: 77, IfName: "eth0", State: api.PeerConnecting,
		Owner: &api.Process{PID: 99, Start: 1234}}); err != nil {
		t.Fatal(err)
	}
	h.must("network", "create", h.capsConf("web", "10.100.20.0/24"))
	h.must("network", "connect", "--publish", "8080:80", "-p", "[fd00:20::1]:53:53/udp", "--ip", "10.100.20.9", "--mac", "02:42:0a:64:14:09",
		"--alias", "www", "--name", "web-00", "4670", "web")
	h.must("lb", "create", "demo", "192.168.100.235:80", "--persistence", "30s")
	h.must("lb", "add", "demo", "10.254.1.196:80", "--weight", "3")
	h.fake.SetServiceStats("demo", api.Counters{Connections: 12, Packets: 340, Bytes: 45000},
		map[string]api.Counters{"10.254.1.196:80": {Connections: 12, Packets: 340, Bytes: 45000}})

	for name, args := range map[string][]string{
		"network-list":    {"network", "list", "--format", "json"},
		"network-inspect": {"network", "inspect", "sandbox"},
		"qos-show":        {"network", "qos", "show", "sandbox", "--format", "json"},
		"lb-list":         {"lb", "list", "--format", "json"},
		"lb-show":         {"lb", "show", "demo", "--format", "json"},
		"gc":              {"gc", "--dry-run", "--format", "json"},
	} {
		got := h.must(args...)
		path := filepath.Join("testdata", "json", name+".json")
		if *update {
			if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test ./cmd -run TestJSONSchema -update to write it)", err)
		}
		if got != string(want) {
			t.Errorf("circuit %v changed its JSON (see docs/cli-json.md):\n got: %s\nwant: %s", args, got, want)
		}
	}
}
