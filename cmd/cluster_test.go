package cmd

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/controller/fake"
)

// The cluster commands as a user types them, against a Fake with an agent.
func TestClusterCommands(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	lost := time.Date(2016, 10, 12, 16, 0, 0, 0, time.UTC) // 2h45m before the Fake's clock
	h.fake = fake.New(fake.WithCluster("node-a",
		api.Node{Name: "node-b", Address: "10.255.0.2", State: api.NodeLost, LastSeen: lost, Blocks: []string{"10.70.1.0/24"}}))
	conf := filepath.Join(t.TempDir(), "shared.conflist")
	os.WriteFile(conf, []byte(`{"cniVersion": "1.0.0", "name": "shared", "plugins": [{"type": "bridge",
	  "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.70.0.0/16"}], [{"subnet": "fd00:70::/112"}]]}}]}`), 0o644)

	h.expect("shared created\n", "network", "create", "--overlay", "vxlan", "--block-size", "24", conf)
	var n api.Network
	if err := json.Unmarshal([]byte(h.must("network", "inspect", "shared")), &n); err != nil {
		t.Fatal(err)
	}
	if n.Cluster == nil || n.Cluster.Overlay != "vxlan" || n.Cluster.BlockSize != 24 || n.Cluster.BlockSize6 != 120 ||
		strings.Join(n.Cluster.Blocks, " ") != "10.70.0.0/24 fd00:70::/120" || n.Cluster.Node != "node-a" {
		t.Errorf("cluster network: %+v", n.Cluster)
	}
	// The seed's table stays as it is.
	h.must("network", "connect", "4668", "shared")
	h.expect("NAME                TYPE                VERSION             PEERS\nshared              bridge              1.0.0               10.70.0.2 (4668)\n", "network", "list")
	if out := h.must("network", "inspect", "shared", "--format", "{{range .Peers}}{{.Node}}{{end}}"); out != "node-a\n" {
		t.Errorf("peer's node: %q", out)
	}

	h.expect(`NAME                ADDRESS             BLOCKS                                  STATE
node-a              10.255.0.1          10.70.0.0/24,fd00:70::/120              ready
node-b              10.255.0.2          10.70.1.0/24                            lost
`, "node", "list")
	h.expect("node-a\nnode-b\n", "node", "ls", "-q")
	h.expect("would release block 10.70.1.0/24 (node node-b, lost since 2016-10-12T16:00:00Z)\ngc: dry run, 1 action(s), nothing changed\n", "gc", "--cluster", "--grace", "1h", "--dry-run")
	h.expect("gc: nothing to do\n", "gc", "--cluster", "--grace", "3h")
	h.expect("release block 10.70.1.0/24 (node node-b, lost since 2016-10-12T16:00:00Z)\ngc: 1 action(s)\n", "gc", "--cluster")
	h.expect("service web created\n", "lb", "create", "--cluster", "web", "10.80.0.1:80")
	if out := h.must("lb", "list", "--format", "{{.Name}} {{.Cluster}}"); out != "web true\n" {
		t.Errorf("lb list: %q", out)
	}

	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"network", "create", "--block-size", "24", conf}, 2, "--block-size and --block-size6 need --overlay"},
		{[]string{"network", "create", "--overlay", "gre", conf}, 2, `overlay "gre": want vxlan`},
		{[]string{"network", "create", "--overlay", "vxlan", "--block-size", "31", conf}, 2, "use 8 to 30"},
		{[]string{"gc", "--grace", "1h"}, 2, "--grace needs --cluster"},
	} {
		r := h.run(tc.args...)
		if ExitCode(r.err) != tc.code || !strings.Contains(r.line(), tc.want) {
			t.Errorf("circuit %q: exit %d %q, want %d %q", tc.args, ExitCode(r.err), r.line(), tc.code, tc.want)
		}
	}
}

// With no agent, every cluster command is one line saying so, exit 1.
func TestClusterCommandsWithoutAgent(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	conf := filepath.Join(t.TempDir(), "shared.conf")
	os.WriteFile(conf, []byte(`{"cniVersion": "1.0.0", "name": "shared", "type": "bridge", "ipam": {"type": "host-local", "subnet": "10.70.0.0/16"}}`), 0o644)
	for _, args := range [][]string{
		{"network", "create", "--overlay", "vxlan", conf},
		{"node", "list"},
		{"gc", "--cluster"},
		{"lb", "create", "--cluster", "web", "10.80.0.1:80"},
	} {
		r := h.run(args...)
		if ExitCode(r.err) != 1 || !strings.Contains(r.line(), "circuit-agent") || strings.Contains(r.line(), "\n") {
			t.Errorf("circuit %q without an agent: exit %d %q", args, ExitCode(r.err), r.line())
		}
	}
	if out := h.must("network", "list", "-q"); out != "" {
		t.Errorf("a refused create left %q", out)
	}
}
