package local

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/pkg/netns"
	"github.com/circuit-cni/circuit/pkg/runc"
	"github.com/circuit-cni/circuit/pkg/testutil"
)

// env is one test's controller, with its own state dir, bridge and
// host-local data dir, all removed at the end.
type env struct {
	t      *testing.T
	c      *Controller
	state  string
	ipam   string // host-local dataDir
	bridge string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	testutil.RequireRoot(t)
	e := &env{t: t, state: t.TempDir(), ipam: t.TempDir(), bridge: testutil.RandName("cbr")}
	log := logrus.New()
	log.SetOutput(os.Stderr)
	c, err := New(Config{StateDir: e.state, CNIPath: []string{testutil.CNIPath(t)}, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	e.c = c
	t.Cleanup(func() {
		// A failed test may leave peers: tear them down the proper way.
		nets, _ := c.ListNetworks(context.Background())
		for _, n := range nets {
			c.DeleteNetwork(context.Background(), n.Name, true)
		}
		c.Close()
		exec.Command("ip", "link", "del", e.bridge).Run()
		for _, pin := range e.pins() { // a failed test may leave peers
			netns.Unpin(filepath.Join(e.state, "netns", pin))
		}
	})
	return e
}

// bridgeConf is the seed's example network on a test bridge and subnet.
func (e *env) bridgeConf(name, subnet string) []byte {
	return fmt.Appendf(nil, `{
  "cniVersion": "0.2.0", "name": %q, "type": "bridge", "bridge": %q,
  "ipMasq": true, "isGateway": true,
  "ipam": {"type": "host-local", "subnet": %q, "dataDir": %q, "routes": [{"dst": "0.0.0.0/0"}]}
}`, name, e.bridge, subnet, e.ipam)
}

func (e *env) create(conf []byte) *api.Network {
	e.t.Helper()
	n, err := e.c.CreateNetwork(context.Background(), api.CreateNetworkRequest{Config: conf})
	if err != nil {
		e.t.Fatalf("create network: %v", err)
	}
	return n
}

func (e *env) connect(s *testutil.Sleeper, network string) *api.Peer {
	e.t.Helper()
	p, err := e.c.Connect(context.Background(), api.ConnectRequest{Container: fmt.Sprint(s.PID), Network: network})
	if err != nil {
		e.t.Fatalf("connect: %v", err)
	}
	return p
}

// reservations lists host-local's reserved addresses on a network.
func (e *env) reservations(network string) []string {
	return testutil.Reservations(e.ipam, network)
}

// natRules returns the NAT rules that mention a container ID.
func natRules(t *testing.T, containerID string) string {
	out, _ := exec.Command("iptables-save", "-t", "nat").CombinedOutput()
	nft, _ := exec.Command("nft", "list", "ruleset").CombinedOutput()
	var hits []string
	for _, l := range strings.Split(string(out)+string(nft), "\n") {
		if strings.Contains(l, containerID) {
			hits = append(hits, l)
		}
	}
	return strings.Join(hits, "\n")
}

func (e *env) pins() []string {
	entries, _ := os.ReadDir(filepath.Join(e.state, "netns"))
	var out []string
	for _, en := range entries {
		out = append(out, en.Name())
	}
	return out
}

func ip(cidr string) string { return strings.SplitN(cidr, "/", 2)[0] }

func TestConnectBridgeAndDisconnect(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.create(e.bridgeConf("sandbox", "10.210.1.0/24"))
	s := testutil.NewSleeper(t)
	p := e.connect(s, "sandbox")

	if len(p.IPs) != 1 || !strings.HasPrefix(p.IPs[0], "10.210.1.") {
		t.Fatalf("peer IPs = %v, want one address in 10.210.1.0/24", p.IPs)
	}
	if p.IfName != "eth0" || p.MAC == "" || p.HostIf == "" {
		t.Errorf("peer = %+v, want eth0 with a MAC and a host veth", p)
	}
	if out, err := s.Exec("ping", "-c", "1", "-W", "2", "10.210.1.1"); err != nil {
		t.Fatalf("ping gateway from the container: %v\n%s", err, out)
	}
	if got := e.reservations("sandbox"); len(got) != 1 || got[0] != ip(p.IPs[0]) {
		t.Fatalf("host-local reservations = %v, want [%s]", got, ip(p.IPs[0]))
	}
	if natRules(t, p.ContainerID) == "" {
		t.Fatalf("no masquerade rule for %s after connect", p.ContainerID)
	}
	n, err := e.c.InspectNetwork(ctx, "sandbox")
	if err != nil || len(n.Peers) != 1 || n.Peers[0].State != api.PeerConnected {
		t.Fatalf("inspect = %+v, %v; want one connected peer", n, err)
	}

	// A second connect of the same container is refused and changes nothing.
	_, err = e.c.Connect(ctx, api.ConnectRequest{Container: fmt.Sprint(s.PID), Network: "sandbox"})
	if !errors.Is(err, api.ErrExists) {
		t.Fatalf("second connect: err = %v, want ErrExists", err)
	}
	if got := e.reservations("sandbox"); len(got) != 1 {
		t.Fatalf("after refused connect: reservations = %v", got)
	}

	if err := e.c.Disconnect(ctx, api.DisconnectRequest{Container: fmt.Sprint(s.PID), Network: "sandbox"}); err != nil {
		t.Fatal(err)
	}
	e.assertGone(p)
	if out, err := s.Exec("ip", "link", "show", "eth0"); err == nil {
		t.Errorf("eth0 still in the container after disconnect:\n%s", out)
	}
}

// assertGone checks that nothing of an attachment is left.
func (e *env) assertGone(p *api.Peer) {
	e.t.Helper()
	if got := e.reservations(p.Network); len(got) != 0 {
		e.t.Errorf("host-local reservations left: %v", got)
	}
	if r := natRules(e.t, p.ContainerID); r != "" {
		e.t.Errorf("NAT rules left for %s:\n%s", p.ContainerID, r)
	}
	if pins := e.pins(); len(pins) != 0 {
		e.t.Errorf("netns pins left: %v", pins)
	}
	if p.HostIf != "" {
		if err := exec.Command("ip", "link", "show", p.HostIf).Run(); err == nil {
			e.t.Errorf("host veth %s left", p.HostIf)
		}
	}
	n, err := e.c.InspectNetwork(context.Background(), p.Network)
	if err != nil || len(n.Peers) != 0 {
		e.t.Errorf("peers left: %+v (%v)", n, err)
	}
}

func TestDisconnectAfterContainerDied(t *testing.T) {
	e := newEnv(t)
	e.create(e.bridgeConf("deadnet", "10.210.2.0/24"))
	s := testutil.NewSleeper(t)
	p := e.connect(s, "deadnet")
	s.Kill()
	// By PID, as the seed does, although the process is gone.
	if err := e.c.Disconnect(context.Background(), api.DisconnectRequest{Container: fmt.Sprint(p.PID), Network: "deadnet"}); err != nil {
		t.Fatal(err)
	}
	e.assertGone(p)
}

func TestFailedConnectLeavesNothing(t *testing.T) {
	e := newEnv(t)
	// bridge succeeds, then a plugin that does not exist fails the chain.
	conf := fmt.Appendf(nil, `{"cniVersion": "1.0.0", "name": "broken", "plugins": [
	  {"type": "bridge", "bridge": %q, "ipMasq": true, "isGateway": true,
	   "ipam": {"type": "host-local", "subnet": "10.210.3.0/24", "dataDir": %q}},
	  {"type": "no-such-plugin"}]}`, e.bridge, e.ipam)
	e.create(conf)
	s := testutil.NewSleeper(t)
	_, err := e.c.Connect(context.Background(), api.ConnectRequest{Container: fmt.Sprint(s.PID), Network: "broken"})
	if err == nil || !strings.Contains(err.Error(), "no-such-plugin") {
		t.Fatalf("connect through a missing plugin: err = %v, want one naming no-such-plugin", err)
	}
	ctr, _ := runc.Resolve("", fmt.Sprint(s.PID))
	e.assertGone(&api.Peer{Network: "broken", ContainerID: ctr.ID})
	out, _ := exec.Command("ip", "-o", "link", "show", "master", e.bridge).CombinedOutput()
	if strings.TrimSpace(string(out)) != "" {
		t.Errorf("veth left on the bridge:\n%s", out)
	}
	if out, _ := s.Exec("ip", "-o", "link"); strings.Contains(string(out), "eth0") {
		t.Errorf("eth0 left in the container:\n%s", out)
	}
}

func TestConnectPTP(t *testing.T) {
	e := newEnv(t)
	conf := fmt.Appendf(nil, `{"cniVersion": "1.0.0", "name": "p2p", "type": "ptp", "ipMasq": true,
	  "ipam": {"type": "host-local", "subnet": "10.210.4.0/24", "dataDir": %q, "routes": [{"dst": "0.0.0.0/0"}]}}`, e.ipam)
	e.create(conf)
	s := testutil.NewSleeper(t)
	p := e.connect(s, "p2p")
	// ptp routes the container through the host side of its veth.
	gw := strings.TrimSpace(routeVia(t, s))
	if gw == "" {
		t.Fatal("no default route in the container")
	}
	if out, err := s.Exec("ping", "-c", "1", "-W", "2", gw); err != nil {
		t.Fatalf("ping %s: %v\n%s", gw, err, out)
	}
	if err := e.c.Disconnect(context.Background(), api.DisconnectRequest{Container: p.ContainerID, Network: "p2p"}); err != nil {
		t.Fatal(err)
	}
	e.assertGone(p)
}

func routeVia(t *testing.T, s *testutil.Sleeper) string {
	out, _ := s.Exec("ip", "route", "show", "default")
	f := strings.Fields(string(out))
	for i := range f {
		if f[i] == "via" && i+1 < len(f) {
			return f[i+1]
		}
	}
	return ""
}

func TestConnectMacvlan(t *testing.T) {
	e := newEnv(t)
	// macvlan needs a parent link: one end of a veth pair circuit did not make.
	master := testutil.RandName("cmv")
	testutil.Run(t, "ip", "link", "add", master, "type", "veth", "peer", "name", master+"p")
	t.Cleanup(func() { exec.Command("ip", "link", "del", master).Run() })
	testutil.Run(t, "ip", "link", "set", master, "up")
	testutil.Run(t, "ip", "link", "set", master+"p", "up")
	conf := fmt.Appendf(nil, `{"cniVersion": "0.4.0", "name": "mvl", "type": "macvlan", "master": %q, "mode": "bridge",
	  "ipam": {"type": "host-local", "subnet": "10.210.5.0/24", "dataDir": %q}}`, master, e.ipam)
	e.create(conf)
	a, b := testutil.NewSleeper(t), testutil.NewSleeper(t)
	pa, pb := e.connect(a, "mvl"), e.connect(b, "mvl")
	if out, err := a.Exec("ping", "-c", "1", "-W", "2", ip(pb.IPs[0])); err != nil {
		t.Fatalf("ping between macvlan peers: %v\n%s", err, out)
	}
	ctx := context.Background()
	for _, p := range []*api.Peer{pa, pb} {
		if err := e.c.Disconnect(ctx, api.DisconnectRequest{Container: p.ContainerID, Network: "mvl"}); err != nil {
			t.Fatal(err)
		}
	}
	e.assertGone(pa)
}

func TestConnectChain(t *testing.T) {
	e := newEnv(t)
	conf := fmt.Appendf(nil, `{"cniVersion": "1.0.0", "name": "chain", "plugins": [
	  {"type": "bridge", "bridge": %q, "ipMasq": true, "isGateway": true,
	   "ipam": {"type": "host-local", "subnet": "10.210.6.0/24", "dataDir": %q, "routes": [{"dst": "0.0.0.0/0"}]}},
	  {"type": "portmap", "capabilities": {"portMappings": true}},
	  {"type": "firewall"},
	  {"type": "tuning", "sysctl": {"net.core.somaxconn": "512"}}]}`, e.bridge, e.ipam)
	n := e.create(conf)
	if n.Type != "bridge" || len(n.Plugins) != 4 || !n.IsList {
		t.Fatalf("network = %+v", n)
	}
	s := testutil.NewSleeper(t)
	p := e.connect(s, "chain")
	if out, err := s.Exec("ping", "-c", "1", "-W", "2", "10.210.6.1"); err != nil {
		t.Fatalf("ping gateway: %v\n%s", err, out)
	}
	if out, _ := s.Exec("cat", "/proc/sys/net/core/somaxconn"); strings.TrimSpace(string(out)) != "512" {
		t.Errorf("tuning plugin did not run: somaxconn = %q", out)
	}
	if err := e.c.Disconnect(context.Background(), api.DisconnectRequest{Container: p.ContainerID, Network: "chain"}); err != nil {
		t.Fatal(err)
	}
	e.assertGone(p)
}

func TestBadInputChangesNothing(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.create(e.bridgeConf("keep", "10.210.7.0/24"))
	before := dump(t, e)
	s := testutil.NewSleeper(t)
	cases := []struct {
		name string
		err  error
		do   func() error
	}{
		{"unknown network", api.ErrNotFound, func() error {
			_, err := e.c.Connect(ctx, api.ConnectRequest{Container: fmt.Sprint(s.PID), Network: "nope"})
			return err
		}},
		{"no such pid", api.ErrNotFound, func() error {
			_, err := e.c.Connect(ctx, api.ConnectRequest{Container: "999999999", Network: "keep"})
			return err
		}},
		{"no such runc id", api.ErrNotFound, func() error {
			_, err := e.c.Connect(ctx, api.ConnectRequest{Container: "web-00", Network: "keep"})
			return err
		}},
		{"path as name", api.ErrInvalid, func() error {
			_, err := e.c.CreateNetwork(ctx, api.CreateNetworkRequest{Config: []byte(`{"cniVersion":"0.4.0","name":"../etc","type":"bridge"}`)})
			return err
		}},
		{"path as type", api.ErrInvalid, func() error {
			_, err := e.c.CreateNetwork(ctx, api.CreateNetworkRequest{Config: []byte(`{"cniVersion":"0.4.0","name":"x","type":"../../bin/sh"}`)})
			return err
		}},
		{"duplicate name", api.ErrExists, func() error {
			_, err := e.c.CreateNetwork(ctx, api.CreateNetworkRequest{Config: e.bridgeConf("keep", "10.210.8.0/24")})
			return err
		}},
		{"bad ifname", api.ErrInvalid, func() error {
			_, err := e.c.Connect(ctx, api.ConnectRequest{Container: fmt.Sprint(s.PID), Network: "keep", IfName: "../x"})
			return err
		}},
		{"disconnect unknown", api.ErrNotFound, func() error {
			return e.c.Disconnect(ctx, api.DisconnectRequest{Container: fmt.Sprint(s.PID), Network: "keep"})
		}},
		{"delete unknown", api.ErrNotFound, func() error { return e.c.DeleteNetwork(ctx, "nope", false) }},
	}
	for _, tc := range cases {
		if err := tc.do(); !errors.Is(err, tc.err) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.err)
		}
	}
	if after := dump(t, e); after != before {
		t.Errorf("state changed by refused commands:\nbefore %s\nafter  %s", before, after)
	}
	if got := e.reservations("keep"); len(got) != 0 || len(e.pins()) != 0 {
		t.Errorf("reservations %v, pins %v after refused commands", got, e.pins())
	}
}

func dump(t *testing.T, e *env) string {
	nets, err := e.c.ListNetworks(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(nets)
	return string(b)
}

func TestDeleteNetwork(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.create(e.bridgeConf("gone", "10.210.9.0/24"))
	s := testutil.NewSleeper(t)
	p := e.connect(s, "gone")
	if err := e.c.DeleteNetwork(ctx, "gone", false); !errors.Is(err, api.ErrInUse) {
		t.Fatalf("delete with a peer: err = %v, want ErrInUse", err)
	}
	if err := e.c.DeleteNetwork(ctx, "gone", true); err != nil {
		t.Fatal(err)
	}
	if got := e.reservations("gone"); len(got) != 0 {
		t.Errorf("reservations left: %v", got)
	}
	if r := natRules(t, p.ContainerID); r != "" {
		t.Errorf("NAT rules left: %s", r)
	}
	if _, err := e.c.InspectNetwork(ctx, "gone"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("inspect after delete: %v", err)
	}
}

// A connect that names an interface the container already has is refused
// before any plugin runs, and the existing interface stays: a rollback must
// never DEL what its ADD did not make.
func TestConnectTakenIfNameLeavesIt(t *testing.T) {
	e := newEnv(t)
	e.create(e.bridgeConf("taken", "10.210.30.0/24"))
	s := testutil.NewSleeper(t)
	if out, err := s.Exec("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "mine0"); err != nil {
		t.Fatalf("make eth0 in the container: %v\n%s", err, out)
	}
	_, err := e.c.Connect(context.Background(), api.ConnectRequest{Container: fmt.Sprint(s.PID), Network: "taken", IfName: "eth0"})
	if !errors.Is(err, api.ErrExists) || !strings.Contains(err.Error(), "eth0") {
		t.Errorf("connect --ifname eth0 into a container that has eth0: %v, want ErrExists naming eth0", err)
	}
	if out, err := s.Exec("ip", "link", "show", "eth0"); err != nil {
		t.Fatalf("the container's own eth0 is gone after the refused connect: %v\n%s", err, out)
	}
	if r := e.reservations("taken"); len(r) != 0 {
		t.Errorf("reservations left: %v", r)
	}
	if pins := e.pins(); len(pins) != 0 {
		t.Errorf("pins left: %v", pins)
	}
}

// network create --force under connected containers keeps, for each of
// them, the configuration it was added with: their DEL must run with it
// (here, host-local's data directory moved), or addresses leak.
func TestReplaceKeepsPeersConfiguration(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.create(e.bridgeConf("moved", "10.210.31.0/24"))
	s := testutil.NewSleeper(t)
	p := e.connect(s, "moved")
	if r := e.reservations("moved"); len(r) != 1 {
		t.Fatalf("reservations %v", r)
	}
	newData := t.TempDir()
	conf := fmt.Appendf(nil, `{
  "cniVersion": "0.2.0", "name": "moved", "type": "bridge", "bridge": %q,
  "ipMasq": true, "isGateway": true,
  "ipam": {"type": "host-local", "subnet": "10.210.31.0/24", "dataDir": %q, "routes": [{"dst": "0.0.0.0/0"}]}
}`, e.bridge, newData)
	if _, err := e.c.CreateNetwork(ctx, api.CreateNetworkRequest{Config: conf, Force: true}); err != nil {
		t.Fatal(err)
	}
	if err := e.c.Disconnect(ctx, api.DisconnectRequest{Container: p.ContainerID, Network: "moved"}); err != nil {
		t.Fatal(err)
	}
	if r := e.reservations("moved"); len(r) != 0 {
		t.Errorf("the address the container got under the old configuration leaked: %v", r)
	}
	// A container connected after the replace uses the new one.
	p2 := e.connect(testutil.NewSleeper(t), "moved")
	if r := testutil.Reservations(newData, "moved"); len(r) != 1 || r[0] != ip(p2.IPs[0]) {
		t.Errorf("new reservations %v", r)
	}
}

// network delete removes the bridge the plugin made for the network, and
// host-local's now empty directory, as podman does, but never a bridge
// that was there before circuit's first connect, or one still in use.
func TestDeleteNetworkRemovesWhatItMade(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.create(e.bridgeConf("made", "10.210.32.0/24"))
	s := testutil.NewSleeper(t)
	e.connect(s, "made")
	if err := exec.Command("ip", "link", "show", e.bridge).Run(); err != nil {
		t.Fatalf("the plugin made no bridge %s", e.bridge)
	}
	if err := e.c.DeleteNetwork(ctx, "made", true); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ip", "link", "show", e.bridge).CombinedOutput(); err == nil {
		t.Errorf("the bridge circuit's first connect made is left after network delete:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(e.ipam, "made")); err == nil {
		t.Errorf("host-local's directory of the network is left")
	}

	// A bridge that was there first stays.
	theirs := testutil.RandName("cth")
	if out, err := exec.Command("ip", "link", "add", theirs, "type", "bridge").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "link", "del", theirs).Run() })
	e.bridge = theirs
	e.create(e.bridgeConf("theirs", "10.210.33.0/24"))
	e.connect(testutil.NewSleeper(t), "theirs")
	if err := e.c.DeleteNetwork(ctx, "theirs", true); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command("ip", "link", "show", theirs).Run(); err != nil {
		t.Errorf("network delete removed bridge %s, which was there before circuit", theirs)
	}
}
