package local

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/pkg/cni"
	"github.com/circuit-cni/circuit/pkg/netns"
	"github.com/circuit-cni/circuit/pkg/testutil"
)

func TestGCRemovesDeadKeepsLive(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.create(e.bridgeConf("gcnet", "10.210.20.0/24"))
	live, dead := testutil.NewSleeper(t), testutil.NewSleeper(t)
	pl, pd := e.connect(live, "gcnet"), e.connect(dead, "gcnet")
	dead.Kill()

	// A connect killed between ADD and its record: an attachment libcni
	// cached and host-local reserved, which no record explains.
	orphan := testutil.NewSleeper(t)
	n, _ := e.c.InspectNetwork(ctx, "gcnet")
	cfg, _ := loadConfig(n)
	pin := filepath.Join(e.state, "netns", "orphan")
	if err := netns.Pin(netns.ProcPath(orphan.PID), pin); err != nil {
		t.Fatal(err)
	}
	res, err := e.c.k.cni.Add(ctx, cfg, cni.RuntimeConf{ContainerID: "orphan-1", Netns: pin, IfName: "eth0"})
	if err != nil {
		t.Fatal(err)
	}
	// And a reservation file nothing made through circuit: not circuit's
	// to release (the data dir is shared).
	stray := filepath.Join(e.ipam, "gcnet", "10.210.20.200")
	os.WriteFile(stray, []byte("stray-1\r\neth0"), 0o600)

	before := strings.Join(e.reservations("gcnet"), " ")
	rep, err := e.c.GC(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Actions) != 3 || after(e) != before {
		t.Fatalf("dry run: actions %q; reservations %s -> %s", rep.Actions, before, after(e))
	}

	rep, err = e.c.GC(ctx, false)
	if err != nil {
		t.Fatalf("gc: %v (actions %q)", err, rep.Actions)
	}
	if got := e.reservations("gcnet"); len(got) != 2 || !slices.Contains(got, ip(pl.IPs[0])) || !slices.Contains(got, "10.210.20.200") {
		t.Fatalf("reservations after gc = %v, want the live peer's %s and the stray one (dead %v, orphan %v)", got, pl.IPs, pd.IPs, res.IPs)
	}
	if natRules(t, pd.ContainerID) != "" || natRules(t, "orphan-1") != "" {
		t.Error("masquerade rules of the dead container or the orphan are left")
	}
	if natRules(t, pl.ContainerID) == "" {
		t.Error("gc removed the live peer's masquerade rule")
	}
	if pins := e.pins(); len(pins) != 1 {
		t.Errorf("pins after gc = %v, want the live peer's only", pins)
	}
	if out, err := live.Exec("ping", "-c", "1", "-W", "2", "10.210.20.1"); err != nil {
		t.Fatalf("live peer lost its network: %v\n%s", err, out)
	}
	n, _ = e.c.InspectNetwork(ctx, "gcnet")
	if len(n.Peers) != 1 || n.Peers[0].ContainerID != pl.ContainerID {
		t.Fatalf("peers after gc = %+v", n.Peers)
	}
	// A second gc finds nothing.
	if rep, err := e.c.GC(ctx, false); err != nil || len(rep.Actions) != 0 {
		t.Fatalf("second gc: %q, %v", rep.Actions, err)
	}
}

func after(e *env) string { return strings.Join(e.reservations("gcnet"), " ") }

func TestGCFinishesInterruptedConnect(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.create(e.bridgeConf("half", "10.210.21.0/24"))
	s := testutil.NewSleeper(t)
	p := e.connect(s, "half")
	// Make the record look like a connect that died after recording intent.
	// Owned by a process that is gone (pid 0 never has our start time).
	p.State, p.Owner = api.PeerConnecting, &api.Process{PID: 1, Start: 1}
	if err := e.c.store.Update(ctx, func(tx ds.Tx) error { return tx.PutPeer(p) }); err != nil {
		t.Fatal(err)
	}
	rep, err := e.c.GC(ctx, false)
	if err != nil || len(rep.Actions) != 1 || !strings.Contains(rep.Actions[0], "interrupted connect") {
		t.Fatalf("gc: %q, %v", rep.Actions, err)
	}
	e.assertGone(p)
}

// Another runtime sharing a network name (and so host-local's reservation
// directory) keeps its addresses through circuit's gc, on every CNI
// version, including 1.1's GC, which circuit must not tell that only its
// own attachments are valid.
func TestGCLeavesOtherRuntimesAddresses(t *testing.T) {
	for _, version := range []string{"0.4.0", "1.1.0"} {
		t.Run(version, func(t *testing.T) {
			e := newEnv(t)
			ctx := context.Background()
			conf := fmt.Appendf(nil, `{"cniVersion": %q, "name": "shared", "type": "bridge", "bridge": %q, "isGateway": true,
			  "ipam": {"type": "host-local", "subnet": "10.210.22.0/24", "dataDir": %q}}`, version, e.bridge, e.ipam)
			e.create(conf)
			mine := testutil.NewSleeper(t)
			p := e.connect(mine, "shared")
			// The other runtime: its own libcni cache, its own container.
			other := testutil.NewSleeper(t)
			cfg, err := cni.Parse(conf)
			if err != nil {
				t.Fatal(err)
			}
			rt := cni.NewRuntime([]string{testutil.CNIPath(t)}, t.TempDir())
			rc := cni.RuntimeConf{ContainerID: "other-runtime-1", Netns: netns.ProcPath(other.PID), IfName: "eth0"}
			res, err := rt.Add(ctx, cfg, rc)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { rt.Del(context.Background(), cfg, rc) })
			before := strings.Join(e.reservations("shared"), " ")

			rep, err := e.c.GC(ctx, false)
			if err != nil || len(rep.Actions) != 0 {
				t.Errorf("gc: %q, %v; want nothing to do", rep.Actions, err)
			}
			if got := strings.Join(e.reservations("shared"), " "); got != before {
				t.Errorf("gc changed the reservations %s -> %s: the other runtime's %v is not circuit's to release", before, got, res.IPs)
			}
			if out, err := other.Exec("ip", "addr", "show", "eth0"); err != nil || !strings.Contains(string(out), ip(res.IPs[0])) {
				t.Errorf("the other runtime's container lost its address: %v\n%s", err, out)
			}
			if n, _ := e.c.InspectNetwork(ctx, "shared"); len(n.Peers) != 1 || n.Peers[0].ContainerID != p.ContainerID {
				t.Errorf("circuit's own peer: %+v", n.Peers)
			}
		})
	}
}

// gc runs plugins (a DEL of what no record explains) without holding the
// datastore's write lock: a connect beside it, bounded as a hook's is,
// does not fail with "datastore busy" however slow the plugin.
func TestGCDoesNotHoldTheLockDuringPlugins(t *testing.T) {
	if testutil.InVM() {
		t.Skip("needs no kernel the host lacks")
	}
	e := newEnv(t)
	ctx := context.Background()
	marker := filepath.Join(t.TempDir(), "calls")
	slow := fmt.Appendf(nil, `{"cniVersion": "1.0.0", "name": "slow", "plugins": [
	  {"type": "circuit-test-plugin", "delMillis": 1500, "marker": %q}]}`, marker)
	paths := []string{testutil.CNIPath(t), testutil.TestPlugin(t)}
	gcCtl, err := New(Config{StateDir: e.state, CNIPath: paths, Log: e.c.log})
	if err != nil {
		t.Fatal(err)
	}
	defer gcCtl.Close()
	if _, err := gcCtl.CreateNetwork(ctx, api.CreateNetworkRequest{Config: slow}); err != nil {
		t.Fatal(err)
	}
	e.create(e.bridgeConf("fast", "10.210.23.0/24"))
	// What a connect killed between its ADD and its record leaves: an
	// attachment in circuit's cache that no record explains.
	n, _ := gcCtl.InspectNetwork(ctx, "slow")
	cfg, _ := loadConfig(n)
	orphan := testutil.NewSleeper(t)
	if _, err := gcCtl.k.cni.Add(ctx, cfg, cni.RuntimeConf{ContainerID: "orphan-2", Netns: netns.ProcPath(orphan.PID), IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	gcDone := make(chan error, 1)
	go func() { _, err := gcCtl.GC(ctx, false); gcDone <- err }()
	// Wait for the event: the plugin's DEL has started.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(5 * time.Millisecond) {
		if b, _ := os.ReadFile(marker); strings.Contains(string(b), "DEL orphan-2") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("gc never ran the plugin's DEL")
		}
	}
	short, err := New(Config{StateDir: e.state, CNIPath: paths, Log: e.c.log, LockTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer short.Close()
	s := testutil.NewSleeper(t)
	if _, err := short.Connect(ctx, api.ConnectRequest{Container: fmt.Sprint(s.PID), Network: "fast"}); err != nil {
		t.Errorf("a connect while gc's plugin DEL runs: %v", err)
	}
	if err := <-gcDone; err != nil {
		t.Errorf("gc: %v", err)
	}
}

// The state dir reached through a symlink is the same state dir: pins are
// named by its real path, so gc and disconnect through either path agree.
func TestStateDirThroughSymlink(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	link := filepath.Join(t.TempDir(), "state-link")
	if err := os.Symlink(e.state, link); err != nil {
		t.Fatal(err)
	}
	viaLink, err := New(Config{StateDir: link, CNIPath: []string{testutil.CNIPath(t)}, Log: e.c.log})
	if err != nil {
		t.Fatal(err)
	}
	defer viaLink.Close()
	if _, err := viaLink.CreateNetwork(ctx, api.CreateNetworkRequest{Config: e.bridgeConf("linked", "10.210.24.0/24")}); err != nil {
		t.Fatal(err)
	}
	s := testutil.NewSleeper(t)
	if _, err := viaLink.Connect(ctx, api.ConnectRequest{Container: fmt.Sprint(s.PID), Network: "linked"}); err != nil {
		t.Fatal(err)
	}
	rep, err := e.c.GC(ctx, false)
	if err != nil || len(rep.Actions) != 0 {
		t.Errorf("gc through the real path: %q, %v; want nothing to do", rep.Actions, err)
	}
	if err := e.c.Disconnect(ctx, api.DisconnectRequest{Container: fmt.Sprint(s.PID), Network: "linked"}); err != nil {
		t.Errorf("disconnect through the real path: %v", err)
	}
	if pins := e.pins(); len(pins) != 0 {
		t.Errorf("pins left: %v", pins)
	}
}

// poststop failing on several networks says so on one line.
func TestPoststopFailuresOneLine(t *testing.T) {
	if testutil.InVM() {
		t.Skip("needs no kernel the host lacks")
	}
	e := newEnv(t)
	ctx := context.Background()
	c, err := New(Config{StateDir: e.state, CNIPath: []string{testutil.CNIPath(t), testutil.TestPlugin(t)}, Log: e.c.log})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, n := range []string{"faila", "failb"} {
		conf := fmt.Appendf(nil, `{"cniVersion": "1.0.0", "name": %q, "plugins": [{"type": "circuit-test-plugin", "failDel": true}]}`, n)
		if _, err := c.CreateNetwork(ctx, api.CreateNetworkRequest{Config: conf}); err != nil {
			t.Fatal(err)
		}
	}
	s := testutil.NewSleeper(t)
	if _, err := c.Hook(ctx, api.HookRequest{ID: "two-nets", Status: "creating", PID: s.PID, Networks: []string{"faila", "failb"}}); err != nil {
		t.Fatal(err)
	}
	_, err = c.Hook(ctx, api.HookRequest{ID: "two-nets", Status: "stopped"})
	if err == nil || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "faila") || !strings.Contains(err.Error(), "failb") {
		t.Errorf("poststop failing on two networks: %q, want one line naming both", err)
	}
}
