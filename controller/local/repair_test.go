package local

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
	// And a reservation file nothing made through circuit.
	stray := filepath.Join(e.ipam, "gcnet", "10.210.20.200")
	os.WriteFile(stray, []byte("stray-1\r\neth0"), 0o600)

	before := strings.Join(e.reservations("gcnet"), " ")
	rep, err := e.c.GC(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Actions) != 4 || after(e) != before {
		t.Fatalf("dry run: actions %q; reservations %s -> %s", rep.Actions, before, after(e))
	}

	rep, err = e.c.GC(ctx, false)
	if err != nil {
		t.Fatalf("gc: %v (actions %q)", err, rep.Actions)
	}
	if got := e.reservations("gcnet"); len(got) != 1 || got[0] != ip(pl.IPs[0]) {
		t.Fatalf("reservations after gc = %v, want only the live peer's %s (dead %v, orphan %v)", got, pl.IPs, pd.IPs, res.IPs)
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
