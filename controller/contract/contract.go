// Package contract is the behaviour every controller.Controller must show,
// as a test suite: the Fake runs it in the unit tier, the local controller
// as root against the real kernel. A second controller plugs in by passing
// the same suite.
//
// The suite talks only through the Controller interface and an Env that
// gives it networks and containers to work with. It asserts what a user
// sees: records, sentinel errors, what a second call finds, never how an
// implementation stores or programs anything.
package contract

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/controller"
	"github.com/circuit-cni/circuit/internal/ruletable"
)

var parseRate = api.ParseRate

// Container is a running container an Env started.
type Container struct {
	Ref string // how a user names it to connect: a PID or a runc ID
	ID  string // the ID the controller records for it
	PID int
	// Stop ends the container (its network namespace goes with it).
	Stop func()
}

// Env is one test's world: a fresh, empty controller, and the means to
// give it networks and containers. Everything it makes is removed when the
// test ends.
type Env interface {
	Controller() controller.Controller
	// Conf returns a CNI configuration for a new network called name
	// (bridge and host-local, declaring the ips and mac capabilities, then
	// portmap with portMappings); every call is for a different network.
	Conf(name string) []byte
	// PlainConf is Conf without any capability.
	PlainConf(name string) []byte
	// Start starts a container with a network namespace of its own.
	Start() Container
	// Netem reports whether the kernel can delay, jitter and drop packets.
	Netem() bool
}

// Run runs the suite; newEnv makes a fresh Env for each test.
func Run(t *testing.T, newEnv func(t *testing.T) Env) {
	tests := []struct {
		name string
		fn   func(*testing.T, Env)
	}{
		{"Networks", testNetworks},
		{"ReplaceKeepsPeersAndQoS", testReplace},
		{"DeleteNetwork", testDeleteNetwork},
		{"Connect", testConnect},
		{"ConnectErrors", testConnectErrors},
		{"Disconnect", testDisconnect},
		{"QoSMerges", testQoSMerges},
		{"QoSOverride", testQoSOverride},
		{"QoSNetem", testQoSNetem},
		{"Services", testServices},
		{"Targets", testTargets},
		{"SetTarget", testSetTarget},
		{"DrainTargets", testDrainTargets},
		{"HookStartAndStop", testHook},
		{"HookRunningConnects", testHookRunning},
		{"HookReusedID", testHookReusedID},
		{"HookErrors", testHookErrors},
		{"GCAndRestore", testGCAndRestore},
		{"ClusterWithoutAgent", testClusterWithoutAgent},
		{"Publish", testPublish},
		{"FixedAddressAndMAC", testFixedAddress},
		{"SettingsNeedCapabilities", testSettingsNeedCapabilities},
		{"HookSettings", testHookSettings},
		{"Rules", testRules},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { guard(t, func() { tc.fn(t, newEnv(t)) }) })
	}
}

var ctx = context.Background()

// fatal is must's panic, turned into t.Fatal by guard.
type fatal struct{ err error }

// must returns v, or ends the test (through guard) when err is set; it
// keeps the suite's many two-value calls on one line each.
func must[T any](v T, err error) T {
	if err != nil {
		panic(fatal{err})
	}
	return v
}

// guard runs fn, turning must's panic into t.Fatal.
func guard(t *testing.T, fn func()) {
	t.Helper()
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(fatal)
			if !ok {
				panic(r)
			}
			t.Fatal(f.err)
		}
	}()
	fn()
}

func ok(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// isErr fails the test unless err matches kind.
func isErr(t *testing.T, what string, err, kind error) {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Errorf("%s: %v, want an error matching %q", what, err, kind)
	}
}

func create(t *testing.T, e Env, name string) *api.Network {
	t.Helper()
	return must(e.Controller().CreateNetwork(ctx, api.CreateNetworkRequest{Config: e.Conf(name)}))
}

func connect(t *testing.T, e Env, ctr Container, network string) *api.Peer {
	t.Helper()
	return must(e.Controller().Connect(ctx, api.ConnectRequest{Container: ctr.Ref, Network: network}))
}

func inspect(t *testing.T, e Env, name string) *api.Network {
	t.Helper()
	return must(e.Controller().InspectNetwork(ctx, name))
}

func testNetworks(t *testing.T, e Env) {
	c := e.Controller()
	n := create(t, e, "beta")
	if n.Name != "beta" || n.Type != "bridge" || len(n.Plugins) == 0 || n.CNIVersion == "" || len(n.Config) == 0 || n.CreatedAt.IsZero() {
		t.Errorf("created network %+v: want name, type, plugins, version, config and time", n)
	}
	create(t, e, "alpha")
	_, err := c.CreateNetwork(ctx, api.CreateNetworkRequest{Config: e.Conf("alpha")})
	isErr(t, "create an existing network", err, api.ErrExists)

	nets := must(c.ListNetworks(ctx))
	var names []string
	for _, n := range nets {
		names = append(names, n.Name)
	}
	if !slices.Equal(names, []string{"alpha", "beta"}) {
		t.Errorf("list: %v, want [alpha beta] in order", names)
	}
	if n := inspect(t, e, "alpha"); n.Name != "alpha" || len(n.Peers) != 0 {
		t.Errorf("inspect alpha: %+v", n)
	}
	_, err = c.InspectNetwork(ctx, "gamma")
	isErr(t, "inspect a missing network", err, api.ErrNotFound)
	_, err = c.CreateNetwork(ctx, api.CreateNetworkRequest{Config: []byte(`{"cniVersion": "1.0.0", "name": "broken"`)})
	isErr(t, "create from broken JSON", err, api.ErrInvalid)
	if got := must(c.ListNetworks(ctx)); len(got) != 2 {
		t.Errorf("a refused create changed the list: %d networks", len(got))
	}
}

func testReplace(t *testing.T, e Env) {
	c := e.Controller()
	create(t, e, "net")
	ctr := e.Start()
	p := connect(t, e, ctr, "net")
	ok(t, c.SetQoS(ctx, "net", "", api.QoSPolicy{Rate: 5_000_000}))
	before := inspect(t, e, "net")

	conf := e.Conf("net")
	n, err := c.CreateNetwork(ctx, api.CreateNetworkRequest{Config: conf, Force: true})
	ok(t, err)
	after := inspect(t, e, "net")
	if !after.CreatedAt.Equal(before.CreatedAt) {
		t.Errorf("replace changed the creation time: %v -> %v", before.CreatedAt, after.CreatedAt)
	}
	if after.QoS == nil || after.QoS.Rate != 5_000_000 {
		t.Errorf("replace dropped the network's QoS: %+v", after.QoS)
	}
	if len(after.Peers) != 1 || after.Peers[0].ContainerID != p.ContainerID {
		t.Errorf("replace dropped peers: %+v", after.Peers)
	}
	if n.Name != "net" {
		t.Errorf("replaced network %+v", n)
	}
}

func testDeleteNetwork(t *testing.T, e Env) {
	c := e.Controller()
	create(t, e, "net")
	ctr := e.Start()
	connect(t, e, ctr, "net")
	isErr(t, "delete a network with peers", c.DeleteNetwork(ctx, "net", false), api.ErrInUse)
	if n := inspect(t, e, "net"); len(n.Peers) != 1 {
		t.Errorf("a refused delete changed the peers: %+v", n.Peers)
	}
	ok(t, c.DeleteNetwork(ctx, "net", true))
	_, err := c.InspectNetwork(ctx, "net")
	isErr(t, "inspect a deleted network", err, api.ErrNotFound)
	isErr(t, "delete a missing network", c.DeleteNetwork(ctx, "net", false), api.ErrNotFound)
	// The container can join a network of the same name again.
	create(t, e, "net")
	connect(t, e, ctr, "net")
}

func testConnect(t *testing.T, e Env) {
	create(t, e, "net")
	ctr := e.Start()
	p := connect(t, e, ctr, "net")
	if p.Network != "net" || p.ContainerID != ctr.ID || p.PID != ctr.PID || p.IfName != "eth0" ||
		len(p.IPs) == 0 || p.State != api.PeerConnected || p.ConnectedAt.IsZero() {
		t.Errorf("connected peer %+v: want network net, ID %s, PID %d, eth0, addresses, connected", p, ctr.ID, ctr.PID)
	}
	// A second network: the next free name.
	create(t, e, "other")
	q := connect(t, e, ctr, "other")
	if q.IfName != "eth1" {
		t.Errorf("second network's interface %q, want eth1", q.IfName)
	}
	// A chosen name.
	create(t, e, "third")
	r := must(e.Controller().Connect(ctx, api.ConnectRequest{Container: ctr.Ref, Network: "third", IfName: "net9"}))
	if r.IfName != "net9" {
		t.Errorf("--ifname net9 gave %q", r.IfName)
	}
	// Two containers get different addresses.
	p2 := connect(t, e, e.Start(), "net")
	if slices.Equal(p.IPs, p2.IPs) {
		t.Errorf("two containers share addresses %v", p.IPs)
	}
	n := inspect(t, e, "net")
	if len(n.Peers) != 2 {
		t.Fatalf("inspect: %d peers, want 2", len(n.Peers))
	}
	for _, q := range n.Peers {
		if q.State != api.PeerConnected || len(q.IPs) == 0 {
			t.Errorf("inspected peer %+v", q)
		}
	}
}

func testConnectErrors(t *testing.T, e Env) {
	c := e.Controller()
	create(t, e, "net")
	ctr := e.Start()
	_, err := c.Connect(ctx, api.ConnectRequest{Container: ctr.Ref, Network: "missing"})
	isErr(t, "connect to a missing network", err, api.ErrNotFound)
	connect(t, e, ctr, "net")
	_, err = c.Connect(ctx, api.ConnectRequest{Container: ctr.Ref, Network: "net"})
	isErr(t, "connect twice", err, api.ErrExists)

	gone := e.Start()
	gone.Stop()
	_, err = c.Connect(ctx, api.ConnectRequest{Container: gone.Ref, Network: "net"})
	isErr(t, "connect a container that is gone", err, api.ErrNotFound)
	_, err = c.Connect(ctx, api.ConnectRequest{Container: "no-such-container", Network: "net"})
	isErr(t, "connect an unknown container", err, api.ErrNotFound)
	if n := inspect(t, e, "net"); len(n.Peers) != 1 {
		t.Errorf("refused connects changed the peers: %+v", n.Peers)
	}
}

func testDisconnect(t *testing.T, e Env) {
	c := e.Controller()
	create(t, e, "net")
	a, b := e.Start(), e.Start()
	connect(t, e, a, "net")
	pb := connect(t, e, b, "net")
	ok(t, c.Disconnect(ctx, api.DisconnectRequest{Container: a.Ref, Network: "net"}))
	// By the recorded ID, after the container is gone.
	b.Stop()
	ok(t, c.Disconnect(ctx, api.DisconnectRequest{Container: pb.ContainerID, Network: "net"}))
	if n := inspect(t, e, "net"); len(n.Peers) != 0 {
		t.Errorf("peers after disconnecting both: %+v", n.Peers)
	}
	isErr(t, "disconnect twice", c.Disconnect(ctx, api.DisconnectRequest{Container: a.Ref, Network: "net"}), api.ErrNotFound)
	isErr(t, "disconnect from a missing network", c.Disconnect(ctx, api.DisconnectRequest{Container: a.Ref, Network: "missing"}), api.ErrNotFound)
	// The address can be given out again.
	connect(t, e, e.Start(), "net")
}

// policyOf returns a peer's effective policy and its source, from ShowQoS.
func policyOf(t *testing.T, e Env, network, id string) (api.QoSPolicy, api.PolicySource) {
	t.Helper()
	for _, q := range must(e.Controller().ShowQoS(ctx, network)) {
		if q.ContainerID == id {
			if q.Policy == nil {
				return api.QoSPolicy{}, q.Source
			}
			return *q.Policy, q.Source
		}
	}
	t.Fatalf("qos show %s: no row for %s", network, id)
	return api.QoSPolicy{}, ""
}

func testQoSMerges(t *testing.T, e Env) {
	c := e.Controller()
	create(t, e, "net")
	p := connect(t, e, e.Start(), "net")
	ok(t, c.SetQoS(ctx, "net", "", api.QoSPolicy{Rate: 5_000_000, Ceiling: 6_000_000, Direction: api.DirIngress}))
	if pol, src := policyOf(t, e, "net", p.ContainerID); src != "network" || pol.Rate != 5_000_000 || pol.Ceiling != 6_000_000 {
		t.Errorf("after set: %+v from %q", pol, src)
	}
	// A second set replaces the rate pair as a whole and keeps the rest.
	ok(t, c.SetQoS(ctx, "net", "", api.QoSPolicy{Rate: 10_000_000}))
	want := api.QoSPolicy{Rate: 10_000_000, Direction: api.DirIngress}
	if n := inspect(t, e, "net"); n.QoS == nil || *n.QoS != want {
		t.Errorf("after a second set the network's policy is %+v, want %+v (the direction kept, the old ceiling gone)", n.QoS, want)
	}
	// A refused set changes nothing.
	isErr(t, "a ceiling below the rate", c.SetQoS(ctx, "net", "", api.QoSPolicy{Rate: 5_000_000, Ceiling: 1_000_000}), api.ErrInvalid)
	isErr(t, "an empty policy", c.SetQoS(ctx, "net", "", api.QoSPolicy{}), api.ErrInvalid)
	isErr(t, "an unknown direction", c.SetQoS(ctx, "net", "", api.QoSPolicy{Rate: 1000, Direction: "sideways"}), api.ErrInvalid)
	isErr(t, "a missing network", c.SetQoS(ctx, "missing", "", api.QoSPolicy{Rate: 1000}), api.ErrNotFound)
	if n := inspect(t, e, "net"); n.QoS == nil || *n.QoS != want {
		t.Errorf("refused sets changed the policy to %+v", n.QoS)
	}
	ok(t, c.ResetQoS(ctx, "net", ""))
	if n := inspect(t, e, "net"); n.QoS != nil {
		t.Errorf("after reset: %+v", n.QoS)
	}
	if _, src := policyOf(t, e, "net", p.ContainerID); src != "none" {
		t.Errorf("source after reset: %q, want none", src)
	}
}

func testQoSOverride(t *testing.T, e Env) {
	c := e.Controller()
	create(t, e, "net")
	a, b := e.Start(), e.Start()
	pa, pb := connect(t, e, a, "net"), connect(t, e, b, "net")
	ok(t, c.SetQoS(ctx, "net", "", api.QoSPolicy{Rate: 10_000_000}))
	ok(t, c.SetQoS(ctx, "net", a.Ref, api.QoSPolicy{Rate: 2_000_000}))
	if pol, src := policyOf(t, e, "net", pa.ContainerID); src != "container" || pol.Rate != 2_000_000 {
		t.Errorf("overridden container: %+v from %q", pol, src)
	}
	if pol, src := policyOf(t, e, "net", pb.ContainerID); src != "network" || pol.Rate != 10_000_000 {
		t.Errorf("other container: %+v from %q", pol, src)
	}
	isErr(t, "override for a container not on the network", c.SetQoS(ctx, "net", "no-such-container", api.QoSPolicy{Rate: 1000}), api.ErrNotFound)
	// The override survives a network-level change; the network reset clears both.
	ok(t, c.SetQoS(ctx, "net", "", api.QoSPolicy{Rate: 20_000_000}))
	if pol, _ := policyOf(t, e, "net", pa.ContainerID); pol.Rate != 2_000_000 {
		t.Errorf("override after a network set: %+v", pol)
	}
	ok(t, c.ResetQoS(ctx, "net", a.Ref))
	if pol, src := policyOf(t, e, "net", pa.ContainerID); src != "network" || pol.Rate != 20_000_000 {
		t.Errorf("after resetting the override: %+v from %q", pol, src)
	}
	ok(t, c.SetQoS(ctx, "net", a.Ref, api.QoSPolicy{Rate: 2_000_000}))
	ok(t, c.ResetQoS(ctx, "net", ""))
	for _, q := range must(c.ShowQoS(ctx, "net")) {
		if q.Source != "none" {
			t.Errorf("after a network reset %s still has a %s policy", q.ContainerID, q.Source)
		}
	}
}

func testQoSNetem(t *testing.T, e Env) {
	c := e.Controller()
	create(t, e, "net")
	p := connect(t, e, e.Start(), "net")
	ok(t, c.SetQoS(ctx, "net", "", api.QoSPolicy{Rate: 5_000_000}))
	err := c.SetQoS(ctx, "net", "", api.QoSPolicy{Delay: 50e6})
	if !e.Netem() {
		isErr(t, "delay on a kernel without netem", err, api.ErrUnsupported)
		if !strings.Contains(fmt.Sprint(err), "netem") {
			t.Errorf("the error %q does not name the missing kernel feature", err)
		}
		if pol, _ := policyOf(t, e, "net", p.ContainerID); pol != (api.QoSPolicy{Rate: 5_000_000}) {
			t.Errorf("a refused delay changed the policy to %+v", pol)
		}
		return
	}
	ok(t, err)
	// --delay after --rate keeps the rate.
	if pol, _ := policyOf(t, e, "net", p.ContainerID); pol.Rate != 5_000_000 || pol.Delay != 50e6 {
		t.Errorf("after --rate then --delay: %+v, want both", pol)
	}
}

func svc(name, addr string) api.Service {
	return api.Service{Name: name, Address: addr, Protocol: "tcp", Scheduler: "rr", Backend: "auto"}
}

func testServices(t *testing.T, e Env) {
	c := e.Controller()
	s := must(c.CreateService(ctx, svc("web", "10.250.0.10:80")))
	if s.Name != "web" || s.Address != "10.250.0.10:80" || s.Protocol != "tcp" || s.Scheduler != "rr" ||
		(s.Backend != "ipvs" && s.Backend != "nftables") || s.CreatedAt.IsZero() || s.Targets == nil {
		t.Errorf("created service %+v: want the backend chosen, no targets", s)
	}
	t.Cleanup(func() { c.DeleteService(ctx, "web") })
	_, err := c.CreateService(ctx, svc("web", "10.250.0.11:80"))
	isErr(t, "a second service of the same name", err, api.ErrExists)
	_, err = c.CreateService(ctx, svc("web2", "10.250.0.10:80"))
	isErr(t, "a second service on the same address", err, api.ErrExists)
	udp := svc("dns", "10.250.0.10:80")
	udp.Protocol = "udp"
	must(c.CreateService(ctx, udp))
	t.Cleanup(func() { c.DeleteService(ctx, "dns") })

	list := must(c.ListServices(ctx))
	if len(list) != 2 || list[0].Name != "dns" || list[1].Name != "web" {
		t.Errorf("list: %+v, want dns then web", list)
	}
	st := must(c.ShowService(ctx, "web"))
	if st.Name != "web" || len(st.Service.Targets) != 0 {
		t.Errorf("show: %+v", st)
	}
	_, err = c.ShowService(ctx, "missing")
	isErr(t, "show a missing service", err, api.ErrNotFound)
	ok(t, c.DeleteService(ctx, "dns"))
	isErr(t, "delete a missing service", c.DeleteService(ctx, "dns"), api.ErrNotFound)
	if list := must(c.ListServices(ctx)); len(list) != 1 {
		t.Errorf("after delete: %+v", list)
	}
}

func testTargets(t *testing.T, e Env) {
	c := e.Controller()
	must(c.CreateService(ctx, svc("web", "10.250.1.10:80")))
	t.Cleanup(func() { c.DeleteService(ctx, "web") })
	ok(t, c.AddTargets(ctx, "web", []api.Target{{Address: "10.250.1.2:8080", Weight: 1, Forward: "nat"}, {Address: "10.250.1.3:8080", Weight: 3, Forward: "nat"}}))
	isErr(t, "add a target twice", c.AddTargets(ctx, "web", []api.Target{{Address: "10.250.1.2:8080", Weight: 1, Forward: "nat"}}), api.ErrExists)
	// All or nothing: one bad target refuses the whole add.
	isErr(t, "add with one target of the wrong family", c.AddTargets(ctx, "web", []api.Target{
		{Address: "10.250.1.4:8080", Weight: 1, Forward: "nat"}, {Address: "[fd00::4]:8080", Weight: 1, Forward: "nat"}}), api.ErrInvalid)
	isErr(t, "add to a missing service", c.AddTargets(ctx, "missing", []api.Target{{Address: "10.250.1.2:8080", Weight: 1, Forward: "nat"}}), api.ErrNotFound)
	isErr(t, "add nothing", c.AddTargets(ctx, "web", nil), api.ErrInvalid)
	s := must(c.ShowService(ctx, "web"))
	var got []string
	for _, tg := range s.Service.Targets {
		got = append(got, tg.Address+"/"+strconv.Itoa(tg.Weight))
	}
	slices.Sort(got)
	if !slices.Equal(got, []string{"10.250.1.2:8080/1", "10.250.1.3:8080/3"}) {
		t.Errorf("targets %v", got)
	}
	isErr(t, "remove a target that is not there", c.RemoveTargets(ctx, "web", []string{"10.250.1.9:8080"}), api.ErrNotFound)
	ok(t, c.RemoveTargets(ctx, "web", []string{"10.250.1.2:8080"}))
	s = must(c.ShowService(ctx, "web"))
	if len(s.Service.Targets) != 1 || s.Service.Targets[0].Address != "10.250.1.3:8080" {
		t.Errorf("after remove: %+v", s.Service.Targets)
	}
}

// testSetTarget: lb set changes a target in place, and refuses what it
// cannot do without changing anything.
func testSetTarget(t *testing.T, e Env) {
	c := e.Controller()
	must(c.CreateService(ctx, svc("web", "10.250.1.20:80")))
	t.Cleanup(func() { c.DeleteService(ctx, "web") })
	ok(t, c.AddTargets(ctx, "web", []api.Target{{Address: "10.250.1.2:80", Weight: 1}, {Address: "10.250.1.3:80", Weight: 2}}))
	ok(t, c.SetTarget(ctx, "web", api.TargetChange{Address: "10.250.1.2:80", Weight: 7}))
	ok(t, c.SetTarget(ctx, "web", api.TargetChange{Address: "10.250.1.3:80", Forward: "nat"}))
	want := []api.Target{{Address: "10.250.1.2:80", Weight: 7, Forward: "nat"}, {Address: "10.250.1.3:80", Weight: 2, Forward: "nat"}}
	if got := must(c.ShowService(ctx, "web")).Service.Targets; !reflect.DeepEqual(got, want) {
		t.Errorf("after lb set: %+v, want %+v", got, want)
	}
	for _, tc := range []struct {
		what    string
		service string
		ch      api.TargetChange
		want    error
	}{
		{"a missing service", "missing", api.TargetChange{Address: "10.250.1.2:80", Weight: 2}, api.ErrNotFound},
		{"a missing target", "web", api.TargetChange{Address: "10.250.1.9:80", Weight: 2}, api.ErrNotFound},
		{"nothing to change", "web", api.TargetChange{Address: "10.250.1.2:80"}, api.ErrInvalid},
		{"a weight out of range", "web", api.TargetChange{Address: "10.250.1.2:80", Weight: 70000}, api.ErrInvalid},
		{"an unknown method", "web", api.TargetChange{Address: "10.250.1.2:80", Forward: "masq"}, api.ErrInvalid},
		{"a bad address", "web", api.TargetChange{Address: "10.250.1.2", Weight: 2}, api.ErrInvalid},
	} {
		isErr(t, "lb set on "+tc.what, c.SetTarget(ctx, tc.service, tc.ch), tc.want)
	}
	if got := must(c.ShowService(ctx, "web")).Service.Targets; !reflect.DeepEqual(got, want) {
		t.Errorf("refused lb sets changed the targets: %+v", got)
	}
}

// testDrainTargets: a drained target with no open connection goes at once;
// an interrupted drain leaves it draining, with no new connections, and
// the next lb command on the service finishes it, as gc does.
func testDrainTargets(t *testing.T, e Env) {
	c := e.Controller()
	must(c.CreateService(ctx, svc("web", "10.250.1.30:80")))
	t.Cleanup(func() { c.DeleteService(ctx, "web") })
	ok(t, c.AddTargets(ctx, "web", []api.Target{{Address: "10.250.1.2:80", Weight: 1}, {Address: "10.250.1.3:80", Weight: 1},
		{Address: "10.250.1.4:80", Weight: 1}, {Address: "10.250.1.5:80", Weight: 1}}))

	var heard []string
	r := must(c.DrainTargets(ctx, api.DrainRequest{Service: "web", Targets: []string{"10.250.1.2:80"}, Timeout: 3 * time.Second,
		Progress: func(l string) { heard = append(heard, l) }}))
	if len(r.Actions) != 1 || !strings.Contains(r.Actions[0], "10.250.1.2:80 drained") || len(heard) != 1 {
		t.Errorf("drain report %q, progress %q", r.Actions, heard)
	}
	for _, tc := range []struct {
		what string
		req  api.DrainRequest
		want error
	}{
		{"a missing target", api.DrainRequest{Service: "web", Targets: []string{"10.250.1.3:80", "10.250.1.9:80"}, Timeout: time.Second}, api.ErrNotFound},
		{"a missing service", api.DrainRequest{Service: "missing", Targets: []string{"10.250.1.3:80"}, Timeout: time.Second}, api.ErrNotFound},
		{"no time", api.DrainRequest{Service: "web", Targets: []string{"10.250.1.3:80"}}, api.ErrInvalid},
		{"no target", api.DrainRequest{Service: "web", Timeout: time.Second}, api.ErrInvalid},
	} {
		_, err := c.DrainTargets(ctx, tc.req)
		isErr(t, "drain "+tc.what, err, tc.want)
	}
	targets := func() []api.Target { return must(c.ShowService(ctx, "web")).Service.Targets }
	if got := targets(); len(got) != 3 || slices.ContainsFunc(got, api.Target.Draining) {
		t.Errorf("refused drains changed the targets: %+v", got)
	}

	// Interrupted as soon as it started: the target stays, draining.
	interrupted := func(addr string) {
		t.Helper()
		dctx, cancel := context.WithCancel(ctx)
		defer cancel()
		_, err := c.DrainTargets(dctx, api.DrainRequest{Service: "web", Targets: []string{addr}, Timeout: time.Minute,
			Progress: func(string) { cancel() }})
		if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "left draining") {
			t.Fatalf("an interrupted drain: %v", err)
		}
	}
	interrupted("10.250.1.3:80")
	svcs := must(c.ListServices(ctx))
	if i := slices.IndexFunc(svcs[0].Targets, func(t api.Target) bool { return t.Address == "10.250.1.3:80" }); i < 0 ||
		!svcs[0].Targets[i].Draining() || time.Until(svcs[0].Targets[i].DrainUntil) > time.Minute || svcs[0].Targets[i].Weight != 1 {
		t.Fatalf("after an interrupted drain: %+v", svcs[0].Targets)
	}
	// The next lb command on the service finishes it: nothing is open.
	if got := targets(); len(got) != 2 || slices.ContainsFunc(got, func(t api.Target) bool { return t.Address == "10.250.1.3:80" }) {
		t.Errorf("lb show did not finish the interrupted drain: %+v", got)
	}
	interrupted("10.250.1.4:80")
	r = must(c.GC(ctx, true))
	if !slices.ContainsFunc(r.Actions, func(l string) bool { return strings.HasPrefix(l, "would ") && strings.Contains(l, "10.250.1.4:80") }) {
		t.Errorf("gc --dry-run: %q", r.Actions)
	}
	r = must(c.GC(ctx, false))
	if !slices.ContainsFunc(r.Actions, func(l string) bool { return strings.Contains(l, "10.250.1.4:80 drained") }) {
		t.Errorf("gc: %q", r.Actions)
	}
	if got := targets(); len(got) != 1 || got[0].Address != "10.250.1.5:80" {
		t.Errorf("after gc: %+v", got)
	}
}

func hook(e Env, ctr Container, id, status string, networks ...string) (*api.HookResult, error) {
	return e.Controller().Hook(ctx, api.HookRequest{ID: id, Status: status, PID: ctr.PID, Networks: networks})
}

func testHook(t *testing.T, e Env) {
	create(t, e, "one")
	create(t, e, "two")
	ctr := e.Start()
	must(hook(e, ctr, "web-00", "creating", "one", "two"))
	for _, n := range []string{"one", "two"} {
		peers := inspect(t, e, n).Peers
		if len(peers) != 1 || peers[0].ContainerID != "web-00" || peers[0].PID != ctr.PID || peers[0].State != api.PeerConnected {
			t.Errorf("%s after the start hook: %+v", n, peers)
		}
	}
	// runc runs the start hook once; a repeat is harmless.
	must(hook(e, ctr, "web-00", "created", "one", "two"))
	if peers := inspect(t, e, "one").Peers; len(peers) != 1 {
		t.Errorf("a repeated start hook: %+v", peers)
	}
	ctr.Stop()
	must(hook(e, ctr, "web-00", "stopped"))
	for _, n := range []string{"one", "two"} {
		if peers := inspect(t, e, n).Peers; len(peers) != 0 {
			t.Errorf("%s after poststop: %+v", n, peers)
		}
	}
	// poststop never deletes a network, and has nothing to do the second time.
	must(hook(e, ctr, "web-00", "stopped"))
	if len(must(e.Controller().ListNetworks(ctx))) != 2 {
		t.Error("poststop deleted a network")
	}
}

func testHookRunning(t *testing.T, e Env) {
	create(t, e, "net")
	ctr := e.Start()
	must(hook(e, ctr, "late-00", "running", "net"))
	if peers := inspect(t, e, "net").Peers; len(peers) != 1 || peers[0].ContainerID != "late-00" {
		t.Errorf("a hook for a running container did not connect it: %+v", peers)
	}
}

// testHookReusedID starts a container under the ID of one that died
// without its poststop: the leftover record is replaced, not an error.
func testHookReusedID(t *testing.T, e Env) {
	create(t, e, "net")
	old := e.Start()
	must(hook(e, old, "re-00", "creating", "net"))
	old.Stop()
	ctr := e.Start()
	must(hook(e, ctr, "re-00", "creating", "net"))
	peers := inspect(t, e, "net").Peers
	if len(peers) != 1 || peers[0].PID != ctr.PID || peers[0].State != api.PeerConnected {
		t.Errorf("after a start hook reusing a dead container's ID: %+v, want one peer with pid %d", peers, ctr.PID)
	}
	must(hook(e, ctr, "re-00", "stopped"))
}

func testHookErrors(t *testing.T, e Env) {
	create(t, e, "net")
	ctr := e.Start()
	_, err := hook(e, ctr, "web-00", "paused", "net")
	isErr(t, "an unknown status", err, api.ErrInvalid)
	_, err = hook(e, ctr, "web-00", "creating")
	isErr(t, "no network", err, api.ErrInvalid)
	_, err = hook(e, ctr, "web-00", "creating", "missing")
	isErr(t, "a missing network", err, api.ErrNotFound)
	// All or nothing: a container that cannot join every network joins none.
	_, err = hook(e, ctr, "web-00", "creating", "net", "missing")
	isErr(t, "one missing network of two", err, api.ErrNotFound)
	if peers := inspect(t, e, "net").Peers; len(peers) != 0 {
		t.Errorf("a failed start hook left peers: %+v", peers)
	}
}

func testGCAndRestore(t *testing.T, e Env) {
	c := e.Controller()
	create(t, e, "net")
	live, dead := e.Start(), e.Start()
	pl := connect(t, e, live, "net")
	pd := connect(t, e, dead, "net")
	if r := must(c.GC(ctx, false)); len(r.Actions) != 0 {
		t.Errorf("gc with nothing dead: %v", r.Actions)
	}
	if r := must(c.Restore(ctx)); len(r.Actions) != 0 {
		t.Errorf("restore with nothing to do: %v", r.Actions)
	}
	dead.Stop()
	r := must(c.GC(ctx, true))
	if len(r.Actions) != 1 || !strings.Contains(r.Actions[0], pd.ContainerID) {
		t.Errorf("gc --dry-run after a container died: %v, want one action naming %s", r.Actions, pd.ContainerID)
	}
	if n := inspect(t, e, "net"); len(n.Peers) != 2 {
		t.Errorf("gc --dry-run changed the peers: %+v", n.Peers)
	}
	r = must(c.GC(ctx, false))
	if len(r.Actions) != 1 || !strings.Contains(r.Actions[0], pd.ContainerID) {
		t.Errorf("gc after a container died: %v, want one action naming %s", r.Actions, pd.ContainerID)
	}
	if n := inspect(t, e, "net"); len(n.Peers) != 1 || n.Peers[0].ContainerID != pl.ContainerID {
		t.Errorf("gc must remove the dead container and keep the live one: %+v", n.Peers)
	}
	// restore disconnects what died, too.
	live.Stop()
	r = must(c.Restore(ctx))
	if len(r.Actions) != 1 || !strings.Contains(r.Actions[0], pl.ContainerID) {
		t.Errorf("restore after a container died: %v, want one action naming %s", r.Actions, pl.ContainerID)
	}
	if n := inspect(t, e, "net"); len(n.Peers) != 0 {
		t.Errorf("after restore: %+v", n.Peers)
	}
}

func connectWith(e Env, ctr Container, network string, s api.Settings) (*api.Peer, error) {
	return e.Controller().Connect(ctx, api.ConnectRequest{Container: ctr.Ref, Network: network, Settings: s})
}

// testPublish: a published host port is recorded, held against every other
// container until its peer goes, and given back.
func testPublish(t *testing.T, e Env) {
	c := e.Controller()
	create(t, e, "pub")
	create(t, e, "pub2")
	a, b := e.Start(), e.Start()
	web := []api.PortMapping{{HostPort: 18080, ContainerPort: 80, Protocol: "tcp"}}
	p := must(connectWith(e, a, "pub", api.Settings{Publish: web}))
	if len(p.Publish) != 1 || p.Publish[0] != web[0] {
		t.Errorf("recorded publish %+v, want %+v", p.Publish, web)
	}
	// The same host port, on any network, any address of the host: refused.
	for _, m := range []api.PortMapping{web[0], {HostIP: "10.250.5.1", HostPort: 18080, ContainerPort: 81, Protocol: "tcp"}} {
		_, err := connectWith(e, b, "pub2", api.Settings{Publish: []api.PortMapping{m}})
		isErr(t, fmt.Sprintf("publish %s twice", m), err, api.ErrExists)
	}
	if n := inspect(t, e, "pub2"); len(n.Peers) != 0 {
		t.Errorf("a refused publish left peers: %+v", n.Peers)
	}
	// Another protocol or port is free.
	must(connectWith(e, b, "pub2", api.Settings{Publish: []api.PortMapping{{HostPort: 18080, ContainerPort: 80, Protocol: "udp"}}}))
	ok(t, c.Disconnect(ctx, api.DisconnectRequest{Container: a.Ref, Network: "pub"}))
	// Given back: a third container may have it.
	must(connectWith(e, e.Start(), "pub", api.Settings{Publish: web}))
}

// testFixedAddress: an address asked for lands exactly, is held against
// the others, and is free again after its peer goes.
func testFixedAddress(t *testing.T, e Env) {
	c := e.Controller()
	create(t, e, "fixed")
	first := connect(t, e, e.Start(), "fixed")
	pfx, err := netip.ParsePrefix(first.IPs[0])
	if err != nil {
		t.Fatal(err)
	}
	want := pfx.Masked().Addr().As4()
	want[3] = 200
	ask := netip.AddrFrom4(want).String()
	a := e.Start()
	p := must(connectWith(e, a, "fixed", api.Settings{RequestedIPs: []string{ask}, RequestedMAC: "02:42:0a:fa:00:c8"}))
	if len(p.IPs) != 1 || !strings.HasPrefix(p.IPs[0], ask+"/") || p.MAC != "02:42:0a:fa:00:c8" {
		t.Errorf("peer got %v and %s, want %s and 02:42:0a:fa:00:c8", p.IPs, p.MAC, ask)
	}
	_, err = connectWith(e, e.Start(), "fixed", api.Settings{RequestedIPs: []string{ask}})
	isErr(t, "an address another container holds", err, api.ErrExists)
	_, err = connectWith(e, e.Start(), "fixed", api.Settings{RequestedIPs: []string{"10.199.199.199"}})
	isErr(t, "an address outside the network's ranges", err, api.ErrInvalid)
	_, err = connectWith(e, e.Start(), "fixed", api.Settings{RequestedMAC: "01:00:5e:00:00:01"})
	isErr(t, "a multicast MAC", err, api.ErrInvalid)
	if n := inspect(t, e, "fixed"); len(n.Peers) != 2 {
		t.Errorf("refused connects left peers: %+v", n.Peers)
	}
	ok(t, c.Disconnect(ctx, api.DisconnectRequest{Container: a.Ref, Network: "fixed"}))
	q := must(connectWith(e, e.Start(), "fixed", api.Settings{RequestedIPs: []string{ask}}))
	if !strings.HasPrefix(q.IPs[0], ask+"/") {
		t.Errorf("the address given back went to %v", q.IPs)
	}
}

// testHookSettings: a hook's settings go with its first network (ports and
// addresses are one network's), and a refused setting connects it to none.
func testHookSettings(t *testing.T, e Env) {
	c := e.Controller()
	create(t, e, "front")
	create(t, e, "back")
	ctr := e.Start()
	web := []api.PortMapping{{HostPort: 18095, ContainerPort: 80, Protocol: "tcp"}}
	must(c.Hook(ctx, api.HookRequest{ID: "web-00", Status: "creating", PID: ctr.PID, Networks: []string{"front", "back"},
		Settings: api.Settings{Publish: web, RequestedMAC: "02:42:0a:fa:00:c9"}}))
	front, back := inspect(t, e, "front").Peers, inspect(t, e, "back").Peers
	if len(front) != 1 || !reflect.DeepEqual(front[0].Publish, web) || front[0].MAC != "02:42:0a:fa:00:c9" {
		t.Errorf("the first network's peer: %+v", front)
	}
	if len(back) != 1 || len(back[0].Publish) != 0 || back[0].RequestedMAC != "" {
		t.Errorf("the second network's peer: %+v", back)
	}
	other := e.Start()
	_, err := c.Hook(ctx, api.HookRequest{ID: "web-01", Status: "creating", PID: other.PID, Networks: []string{"back", "front"},
		Settings: api.Settings{Publish: web}})
	isErr(t, "a hook publishing a port another holds", err, api.ErrExists)
	if len(inspect(t, e, "back").Peers) != 1 || len(inspect(t, e, "front").Peers) != 1 {
		t.Error("a refused hook left a peer behind")
	}
	must(hook(e, ctr, "web-00", "stopped", "front", "back"))
}

// testSettingsNeedCapabilities: a setting no plugin of the network
// declares is refused, naming the capability, and nothing runs.
func testSettingsNeedCapabilities(t *testing.T, e Env) {
	c := e.Controller()
	must(c.CreateNetwork(ctx, api.CreateNetworkRequest{Config: e.PlainConf("plain")}))
	ctr := e.Start()
	for _, tc := range []struct {
		s   api.Settings
		cap string
	}{
		{api.Settings{Publish: []api.PortMapping{{HostPort: 18090, ContainerPort: 80, Protocol: "tcp"}}}, "portMappings"},
		{api.Settings{RequestedIPs: []string{"10.0.0.5"}}, "ips"},
		{api.Settings{RequestedMAC: "02:00:00:00:00:05"}, "mac"},
		{api.Settings{Aliases: []string{"web"}}, "aliases"},
	} {
		_, err := connectWith(e, ctr, "plain", tc.s)
		isErr(t, "a setting needing "+tc.cap, err, api.ErrInvalid)
		if err != nil && (!strings.Contains(err.Error(), tc.cap) || !strings.Contains(err.Error(), "plain")) {
			t.Errorf("%v: want the capability %s and the network named", err, tc.cap)
		}
	}
	if n := inspect(t, e, "plain"); len(n.Peers) != 0 {
		t.Errorf("refused connects left peers: %+v", n.Peers)
	}
}

// testClusterWithoutAgent: with no circuit-agent on the node, every
// cluster command fails at once with ErrUnavailable and changes nothing.
func testClusterWithoutAgent(t *testing.T, e Env) {
	c := e.Controller()
	_, err := c.CreateNetwork(ctx, api.CreateNetworkRequest{Config: e.Conf("shared"), Overlay: api.OverlayVXLAN})
	isErr(t, "network create --overlay without an agent", err, api.ErrUnavailable)
	_, err = c.InspectNetwork(ctx, "shared")
	isErr(t, "inspect the network a refused create named", err, api.ErrNotFound)
	_, err = c.ListNodes(ctx)
	isErr(t, "node list without an agent", err, api.ErrUnavailable)
	_, err = c.GCCluster(ctx, time.Hour, false)
	isErr(t, "gc --cluster without an agent", err, api.ErrUnavailable)
	s := svc("shared", "10.250.4.10:80")
	s.Cluster = true
	_, err = c.CreateService(ctx, s)
	isErr(t, "lb create --cluster without an agent", err, api.ErrUnavailable)
	if list := must(c.ListServices(ctx)); len(list) != 0 {
		t.Errorf("a refused cluster service was recorded: %+v", list)
	}
}

// testRules runs the shared rule table through the controller.
func testRules(t *testing.T, e Env) {
	c := e.Controller()
	create(t, e, "rules")
	ctr := e.Start()
	must(c.CreateService(ctx, svc("rules", "10.250.2.10:80")))
	t.Cleanup(func() { c.DeleteService(ctx, "rules") })
	for i, tc := range ruletable.Cases {
		t.Run(tc.Name(), func(t *testing.T) {
			var err error
			guard(t, func() { err = tryRule(t, e, ctr, i, tc) })
			switch {
			case tc.Valid && err != nil:
				t.Errorf("%s %q refused: %v", tc.Kind, tc.Value, err)
			case !tc.Valid && err == nil:
				t.Errorf("%s %q accepted", tc.Kind, tc.Value)
			case !tc.Valid && !errors.Is(err, api.ErrInvalid):
				t.Errorf("%s %q: %v, want an error matching %q", tc.Kind, tc.Value, err, api.ErrInvalid)
			}
		})
	}
}

// tryRule makes the one call that judges tc, undoing it when accepted.
func tryRule(t *testing.T, e Env, ctr Container, i int, tc ruletable.Case) error {
	c := e.Controller()
	addr := fmt.Sprintf("10.250.3.%d:80", i%250+1)
	switch tc.Kind {
	case ruletable.NetworkName:
		conf := e.Conf("placeholder")
		conf = []byte(strings.Replace(string(conf), `"placeholder"`, strconv.Quote(tc.Value), 1))
		_, err := c.CreateNetwork(ctx, api.CreateNetworkRequest{Config: conf})
		if err == nil {
			ok(t, c.DeleteNetwork(ctx, tc.Value, false))
		}
		return err
	case ruletable.ServiceName, ruletable.Protocol, ruletable.Scheduler, ruletable.Address:
		s := svc("r", addr)
		switch tc.Kind {
		case ruletable.ServiceName:
			s.Name = tc.Value
		case ruletable.Protocol:
			s.Protocol = tc.Value
		case ruletable.Scheduler:
			s.Scheduler = tc.Value
		case ruletable.Address:
			s.Address = tc.Value
		}
		_, err := c.CreateService(ctx, s)
		if err == nil {
			ok(t, c.DeleteService(ctx, s.Name))
		}
		return err
	case ruletable.Weight, ruletable.Forward:
		tg := api.Target{Address: "10.250.2.2:8080", Weight: 1, Forward: "nat"}
		if tc.Kind == ruletable.Weight {
			w, err := strconv.Atoi(tc.Value)
			if err != nil {
				t.Fatal(err)
			}
			tg.Weight = w
		} else {
			tg.Forward = tc.Value
		}
		err := c.AddTargets(ctx, "rules", []api.Target{tg})
		if err == nil {
			ok(t, c.RemoveTargets(ctx, "rules", []string{tg.Address}))
		}
		return err
	case ruletable.ContainerID:
		_, err := hook(e, ctr, tc.Value, "creating", "rules")
		if err == nil {
			must(hook(e, ctr, tc.Value, "stopped"))
		}
		return err
	case ruletable.IfName, ruletable.Publish, ruletable.MAC:
		req := api.ConnectRequest{Container: ctr.Ref, Network: "rules"}
		switch tc.Kind {
		case ruletable.IfName:
			req.IfName = tc.Value
		case ruletable.MAC:
			if tc.Value == "" {
				return api.Errorf(api.ErrInvalid, "--mac needs a value") // as the CLI refuses it
			}
			req.RequestedMAC = tc.Value
		case ruletable.Publish:
			m, err := api.ParsePublish(tc.Value)
			if err != nil {
				return err // refused before any controller is called
			}
			req.Publish = m
		}
		_, err := c.Connect(ctx, req)
		if err == nil {
			ok(t, c.Disconnect(ctx, api.DisconnectRequest{Container: ctr.Ref, Network: "rules"}))
		}
		return err
	case ruletable.Rate:
		rate, err := parseRate(tc.Value)
		if err != nil {
			return err // refused before any controller is called
		}
		err = c.SetQoS(ctx, "rules", "", api.QoSPolicy{Rate: rate})
		if err == nil {
			ok(t, c.ResetQoS(ctx, "rules", ""))
		}
		return err
	}
	t.Fatalf("no judge for kind %q", tc.Kind)
	return nil
}
