package bolt

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
)

// A circuit.db that circuit 7a0487f wrote (schema 1: the CLI's JSON) is
// migrated in place on the first open, and every record reads back.
func TestMigrateSchema1File(t *testing.T) {
	dir := schema1File(t)
	s := openStore(t, dir)
	if got := readRaw(t, s.Path(), "v1", "meta", "schema"); got != "2" {
		t.Errorf("schema after Open = %q, want 2", got)
	}
	checkSchema1Records(t, s)
}

// Left unread by Open (WithSchemaOnFirstUse), the same file is migrated
// by the first transaction, a read.
func TestMigrateSchema1FileOnFirstUse(t *testing.T) {
	dir := schema1File(t)
	s := openStore(t, dir, WithSchemaOnFirstUse())
	if got := readRaw(t, s.Path(), "v1", "meta", "schema"); got != "1" {
		t.Fatalf("schema after Open = %q: Open read the file", got)
	}
	checkSchema1Records(t, s)
	if got := readRaw(t, s.Path(), "v1", "meta", "schema"); got != "2" {
		t.Errorf("schema after the first View = %q, want 2", got)
	}
}

// schema1File puts the schema-1 fixture in a state dir.
func schema1File(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	b, err := os.ReadFile("testdata/schema1-circuit.db")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, FileName), b, 0o600); err != nil {
		t.Fatal(err)
	}
	if got := readRaw(t, filepath.Join(dir, FileName), "v1", "meta", "schema"); got != "1" {
		t.Fatalf("fixture schema %q, want 1", got)
	}
	return dir
}

// checkSchema1Records reads back every record of the schema-1 fixture.
func checkSchema1Records(t *testing.T, s *Store) {
	t.Helper()
	var nets []api.Network
	var peers []api.Peer
	var svcs []api.Service
	view(t, s, func(tx ds.Tx) error {
		var err error
		if nets, err = tx.ListNetworks(); err != nil {
			return err
		}
		if peers, err = tx.ListPeers(""); err != nil {
			return err
		}
		svcs, err = tx.ListServices()
		return err
	})
	if len(nets) != 2 || nets[0].Name != "chain" || nets[1].Name != "sandbox" {
		t.Fatalf("networks %+v", nets)
	}
	chain, sandbox := nets[0], nets[1]
	if !chain.IsList || chain.CNIVersion != "1.0.0" || len(chain.Plugins) != 2 || chain.Plugins[1] != "portmap" || chain.CreatedAt.IsZero() {
		t.Errorf("chain: %+v", chain)
	}
	if sandbox.IsList || sandbox.Type != "bridge" || sandbox.CNIVersion != "0.4.0" ||
		sandbox.QoS == nil || *sandbox.QoS != (api.QoSPolicy{Rate: 5_000_000, Ceiling: 6_000_000}) {
		t.Errorf("sandbox: %+v (qos %+v)", sandbox, sandbox.QoS)
	}
	if len(sandbox.Config) == 0 {
		t.Errorf("sandbox config lost: %s", sandbox.Config)
	}
	if len(peers) != 3 {
		t.Fatalf("peers %+v", peers)
	}
	overrides := 0
	for _, p := range peers {
		if p.State != api.PeerConnected || len(p.IPs) != 1 || p.MAC == "" || p.HostIf == "" || p.Netns == "" || p.ConnectedAt.IsZero() || p.PID == 0 {
			t.Errorf("peer %+v", p)
		}
		if p.Network == "chain" && p.IfName != "net1" {
			t.Errorf("chain peer's interface %q, want net1", p.IfName)
		}
		if p.QoS != nil {
			overrides++
			if *p.QoS != (api.QoSPolicy{Rate: 2_000_000}) {
				t.Errorf("override %+v", p.QoS)
			}
		}
	}
	if overrides != 1 {
		t.Errorf("%d overrides, want 1", overrides)
	}
	if len(svcs) != 2 {
		t.Fatalf("services %+v", svcs)
	}
	dns, web := svcs[0], svcs[1]
	if dns.Name != "dns" || dns.Protocol != "udp" || dns.Persistence != 30*time.Second || dns.Backend != "nftables" || len(dns.Targets) != 0 {
		t.Errorf("dns: %+v", dns)
	}
	want := []api.Target{{Address: "10.231.0.2:8080", Weight: 3, Forward: "nat"}, {Address: "10.231.0.3:8080", Weight: 1, Forward: "nat"}}
	if web.Name != "web" || web.Scheduler != "wrr" || web.Address != "10.233.0.10:80" {
		t.Errorf("web: %+v", web)
	}
	equal(t, "web's targets", web.Targets, want)

	// A second open finds nothing to migrate and changes nothing.
	before, _ := os.ReadFile(s.Path())
	openStore(t, filepath.Dir(s.Path()))
	if after, _ := os.ReadFile(s.Path()); string(after) != string(before) {
		t.Error("a second Open rewrote the migrated file")
	}
}
