package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/pkg/netns"
	"github.com/circuit-cni/circuit/pkg/testutil"
)

// Reliability: many circuit processes at once, circuit processes killed in
// the middle of a connect, and the kernel losing what circuit made (a
// reboot), each followed by gc or restore. Containers are sleepers (a
// process alone in a network namespace), connected by PID.

// relInspect reads a network as `network inspect --format json` prints it.
func relInspect(c *cli, name string) api.Network {
	c.t.Helper()
	var n api.Network
	out := c.must("network", "inspect", "--format", "json", name)
	if err := json.Unmarshal([]byte(out), &n); err != nil {
		c.t.Fatalf("network inspect %s: %v\n%s", name, err, out)
	}
	return n
}

// relPeerByPID finds the peer recorded for a process.
func relPeerByPID(n api.Network, pid int) *api.Peer {
	for i := range n.Peers {
		if n.Peers[i].PID == pid {
			return &n.Peers[i]
		}
	}
	return nil
}

// relAddr strips the prefix length of a CIDR address.
func relAddr(cidr string) string {
	a, _, _ := strings.Cut(cidr, "/")
	return a
}

// relPeerAddrs lists the recorded peers' addresses, sorted.
func relPeerAddrs(n api.Network) []string {
	var out []string
	for _, p := range n.Peers {
		for _, ip := range p.IPs {
			out = append(out, relAddr(ip))
		}
	}
	slices.Sort(out)
	return out
}

func relSorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// relBridgePorts lists the interfaces enslaved to a bridge (the host ends
// of the containers' veths); none when the bridge does not exist.
func relBridgePorts(bridge string) []string {
	out, err := exec.Command("ip", "-o", "link", "show", "master", bridge).CombinedOutput()
	if err != nil {
		return nil
	}
	var ports []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		ports = append(ports, name)
	}
	slices.Sort(ports)
	return ports
}

// relNetnsAddrs lists the IPv4 addresses of a process's namespace by
// interface (lo left out).
func relNetnsAddrs(t *testing.T, pid int) map[string]string {
	t.Helper()
	out, err := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-n", "ip", "-o", "-4", "addr", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("ip addr in pid %d: %v\n%s", pid, err, out)
	}
	addrs := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) >= 4 && f[1] != "lo" && f[2] == "inet" {
			addrs[f[1]] = relAddr(f[3])
		}
	}
	return addrs
}

// relLinks lists a process's network interfaces other than lo.
func relLinks(t *testing.T, pid int) []string {
	t.Helper()
	out, err := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-n", "ip", "-o", "link", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("ip link in pid %d: %v\n%s", pid, err, out)
	}
	var links []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		if name != "lo" {
			links = append(links, name)
		}
	}
	return links
}

// relPluginsWorking counts CNI plugin processes still working on one of
// this test's pins: plugins a killed circuit left behind run to their end.
func relPluginsWorking(state string) int {
	procs, _ := filepath.Glob("/proc/[0-9]*/environ")
	n := 0
	for _, p := range procs {
		env, err := os.ReadFile(p)
		if err == nil && bytes.Contains(env, []byte("CNI_NETNS="+state+"/")) {
			n++
		}
	}
	return n
}

// relQdiscs shows the qdiscs of eth0 in a process's namespace.
func relQdiscs(t *testing.T, pid int) string {
	t.Helper()
	out, err := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-n", "tc", "qdisc", "show", "dev", "eth0").CombinedOutput()
	if err != nil {
		t.Fatalf("tc qdisc show in pid %d: %v\n%s", pid, err, out)
	}
	return string(out)
}

// relConfNoMasq is c.conf without ipMasq: for tests whose namespaces die
// before DEL, which leaves masquerade rules behind (the bridge plugin only
// removes them when it finds the interface; a real reboot flushes them).
func relConfNoMasq(c *cli, name, subnet string) string {
	path := filepath.Join(c.t.TempDir(), name+".conf")
	body := fmt.Sprintf(`{"cniVersion": "0.4.0", "name": %q, "type": "bridge", "bridge": %q, "isGateway": true,
  "ipam": {"type": "host-local", "subnet": %q, "dataDir": %q}}`, name, c.bridge, subnet, c.ipam)
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		c.t.Fatal(err)
	}
	return path
}

// relLines splits output into sorted lines.
func relLines(out string) []string {
	return relSorted(strings.Split(strings.TrimSpace(out), "\n"))
}

func TestReliabilityConcurrentConnectDisconnect30(t *testing.T) {
	skipStressInVM(t)
	c := newCLI(t)
	const n = 30
	c.must("network", "create", c.conf("thirty", "10.220.40.0/24"))
	sl := make([]*testutil.Sleeper, n)
	for i := range sl {
		sl[i] = testutil.NewSleeper(t)
	}

	errs := make([]error, n)
	took := make([]time.Duration, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			out, stderr, err := c.run("", "network", "connect", strconv.Itoa(sl[i].PID), "thirty")
			took[i] = time.Since(t0)
			if err != nil {
				errs[i] = fmt.Errorf("%v: %s", err, stderr)
			} else if want := fmt.Sprintf("connected container %d to network thirty\n", sl[i].PID); out != want {
				errs[i] = fmt.Errorf("printed %q, want %q", out, want)
			}
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	t.Logf("%d concurrent connects: %v wall, slowest %v", n, wall.Round(time.Millisecond), slices.Max(took).Round(time.Millisecond))
	for i, err := range errs {
		if err != nil {
			t.Errorf("connect %d (pid %d): %v", i, sl[i].PID, err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	net := relInspect(c, "thirty")
	if len(net.Peers) != n {
		t.Fatalf("%d peers recorded, want %d", len(net.Peers), n)
	}
	addrs := relPeerAddrs(net)
	if len(slices.Compact(slices.Clone(addrs))) != n {
		t.Errorf("recorded addresses are not %d distinct ones: %v", n, addrs)
	}
	if got := relSorted(c.reservations("thirty")); !slices.Equal(got, addrs) {
		t.Errorf("host-local reservations %v\ndo not match the recorded addresses %v", got, addrs)
	}
	var hostIfs []string
	for _, s := range sl {
		p := relPeerByPID(net, s.PID)
		if p == nil {
			t.Errorf("no peer recorded for pid %d", s.PID)
			continue
		}
		if p.State != api.PeerConnected || len(p.IPs) != 1 {
			t.Errorf("peer of pid %d: state %q, IPs %v", s.PID, p.State, p.IPs)
			continue
		}
		hostIfs = append(hostIfs, p.HostIf)
		if got := relNetnsAddrs(t, s.PID)[p.IfName]; got != relAddr(p.IPs[0]) {
			t.Errorf("pid %d has %q on %s, recorded %s", s.PID, got, p.IfName, p.IPs[0])
		}
	}
	if got := relBridgePorts(c.bridge); !slices.Equal(got, relSorted(hostIfs)) {
		t.Errorf("bridge ports %v\ndo not match the recorded host interfaces %v", got, relSorted(hostIfs))
	}
	if p := c.pins(); len(p) != n {
		t.Errorf("%d pins, want %d", len(p), n)
	}

	start = time.Now()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			if _, stderr, err := c.run("", "network", "disconnect", strconv.Itoa(sl[i].PID), "thirty"); err != nil {
				errs[i] = fmt.Errorf("%v: %s", err, stderr)
			}
			took[i] = time.Since(t0)
		}()
	}
	wg.Wait()
	wall = time.Since(start)
	t.Logf("%d concurrent disconnects: %v wall, slowest %v", n, wall.Round(time.Millisecond), slices.Max(took).Round(time.Millisecond))
	for i, err := range errs {
		if err != nil {
			t.Errorf("disconnect %d (pid %d): %v", i, sl[i].PID, err)
		}
	}
	if r := c.reservations("thirty"); len(r) != 0 {
		t.Errorf("reservations left: %v", r)
	}
	if p := c.pins(); len(p) != 0 {
		t.Errorf("pins left: %v", p)
	}
	if net := relInspect(c, "thirty"); len(net.Peers) != 0 {
		t.Errorf("%d peers still recorded", len(net.Peers))
	}
	if p := relBridgePorts(c.bridge); len(p) != 0 {
		t.Errorf("veths left on %s: %v", c.bridge, p)
	}
	for _, s := range sl {
		if l := relLinks(t, s.PID); len(l) != 0 {
			t.Errorf("pid %d still has %v", s.PID, l)
		}
		if r := natRulesFor(fmt.Sprintf("pid-%d-", s.PID)); r != "" {
			t.Errorf("masquerade rules left for pid %d:\n%s", s.PID, r)
		}
	}
}

func TestReliabilityKilledConnectsGC(t *testing.T) {
	skipStressInVM(t)
	c := newCLI(t)
	const n = 20
	c.must("network", "create", c.conf("killed", "10.220.41.0/24"))
	sl := make([]*testutil.Sleeper, n)
	for i := range sl {
		sl[i] = testutil.NewSleeper(t)
	}

	// Four waves of five: twenty at once take longer than 150 ms to record
	// anything, and the kills would all land before circuit did any work.
	var mu sync.Mutex
	finished, killed := 0, 0
	const wave = 5
	for w := 0; w < n; w += wave {
		var wg sync.WaitGroup
		for i := w; i < w+wave; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cmd := exec.Command(c.bin, "--state", c.state, "--cni-path", c.cniDir, "network", "connect", strconv.Itoa(sl[i].PID), "killed")
				if err := cmd.Start(); err != nil {
					t.Errorf("start connect: %v", err)
					return
				}
				time.Sleep(time.Duration(rand.IntN(150)) * time.Millisecond)
				cmd.Process.Kill()
				cmd.Wait()
				mu.Lock()
				defer mu.Unlock()
				if cmd.ProcessState.Exited() {
					finished++
				} else {
					killed++
				}
			}()
		}
		wg.Wait()
	}
	t.Logf("%d connects ran to their end, %d were killed", finished, killed)

	// Plugins a killed circuit started run on, orphaned, to the end of their
	// ADD. A gc right away must leave what they work on alone (else they
	// would make an interface after its DEL); a gc after they are done
	// finishes everything.
	orphans := relPluginsWorking(c.state)
	out := c.must("gc")
	t.Logf("%d CNI plugins orphaned; gc while they run:\n%s", orphans, out)
	deadline := time.Now().Add(time.Minute) // a backstop: they end on their own
	for relPluginsWorking(c.state) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if w := relPluginsWorking(c.state); w > 0 {
		t.Fatalf("%d CNI plugins still running a minute after their circuit was killed", w)
	}
	// The datastore survived: it opens and lists.
	c.must("network", "list")
	out = c.must("gc")
	t.Logf("gc:\n%s", out)

	net := relInspect(c, "killed")
	for _, p := range net.Peers {
		if p.State != api.PeerConnected {
			t.Errorf("gc left peer %s in state %q", p.ContainerID, p.State)
		}
	}
	addrs := relPeerAddrs(net)
	if got := relSorted(c.reservations("killed")); !slices.Equal(got, addrs) {
		t.Errorf("host-local reservations %v\ndo not match the recorded peers' addresses %v", got, addrs)
	}
	var hostIfs, nsPaths []string
	for _, p := range net.Peers {
		hostIfs = append(hostIfs, p.HostIf)
		nsPaths = append(nsPaths, p.Netns)
	}
	if got := relBridgePorts(c.bridge); !slices.Equal(got, relSorted(hostIfs)) {
		t.Errorf("veths on %s %v\ndo not match the recorded host interfaces %v", c.bridge, got, relSorted(hostIfs))
	}
	if got := relSorted(c.pins()); !slices.Equal(got, relSorted(nsPaths)) {
		t.Errorf("pins %v\ndo not match the recorded peers' %v", got, relSorted(nsPaths))
	}
	// Each container has an interface exactly when circuit records one,
	// and masquerade rules exactly then too.
	for _, s := range sl {
		p := relPeerByPID(net, s.PID)
		links := relLinks(t, s.PID)
		rules := natRulesFor(fmt.Sprintf("pid-%d-", s.PID))
		switch {
		case p == nil && len(links) != 0:
			t.Errorf("pid %d is not recorded but has %v", s.PID, links)
		case p == nil && rules != "":
			t.Errorf("pid %d is not recorded but has masquerade rules:\n%s", s.PID, rules)
		case p != nil && (len(p.IPs) == 0 || relNetnsAddrs(t, s.PID)[p.IfName] != relAddr(p.IPs[0])):
			t.Errorf("pid %d is recorded with %v but has %v", s.PID, p.IPs, relNetnsAddrs(t, s.PID))
		case p != nil && rules == "":
			t.Errorf("pid %d is recorded but its masquerade rule is gone", s.PID)
		}
	}

	// A second gc finds nothing and changes nothing.
	before := c.must("network", "inspect", "killed")
	if out := c.must("gc"); out != "gc: nothing to do\n" {
		t.Errorf("second gc printed:\n%s", out)
	}
	if after := c.must("network", "inspect", "killed"); after != before {
		t.Errorf("second gc changed the records:\n%s\n%s", before, after)
	}
	if got := relSorted(c.reservations("killed")); !slices.Equal(got, addrs) {
		t.Errorf("second gc changed the reservations: %v -> %v", addrs, got)
	}

	// What survived disconnects cleanly.
	for _, p := range net.Peers {
		c.must("network", "disconnect", p.ContainerID, "killed")
	}
	if r := c.reservations("killed"); len(r) != 0 {
		t.Errorf("reservations left after disconnecting every peer: %v", r)
	}
	if p := relBridgePorts(c.bridge); len(p) != 0 {
		t.Errorf("veths left on %s: %v", c.bridge, p)
	}
	if p := c.pins(); len(p) != 0 {
		t.Errorf("pins left: %v", p)
	}
}

// A reboot, simulated: the kernel forgets circuit's qdiscs and a container
// dies while circuit is not running. restore puts QoS back on the live one
// and disconnects the dead one.
func TestReliabilityRestoreAfterSimulatedReboot(t *testing.T) {
	skipStressInVM(t)
	c := newCLI(t)
	c.must("network", "create", c.conf("reboot", "10.220.42.0/24"))
	live, dead := testutil.NewSleeper(t), testutil.NewSleeper(t)
	c.must("network", "connect", strconv.Itoa(live.PID), "reboot")
	c.must("network", "connect", strconv.Itoa(dead.PID), "reboot")
	if out := c.must("network", "qos", "set", "--rate", "5000", "reboot"); out != "qos configured for reboot\n" {
		t.Fatalf("qos set printed %q", out)
	}
	net := relInspect(c, "reboot")
	pl, pd := relPeerByPID(net, live.PID), relPeerByPID(net, dead.PID)
	if pl == nil || pd == nil {
		t.Fatalf("peers not recorded: %+v", net.Peers)
	}
	for _, s := range []*testutil.Sleeper{live, dead} {
		if q := relQdiscs(t, s.PID); !strings.Contains(q, "qdisc htb c1c0: root") {
			t.Fatalf("qos set did not shape pid %d:\n%s", s.PID, q)
		}
		testutil.Run(t, "nsenter", "-t", strconv.Itoa(s.PID), "-n", "tc", "qdisc", "del", "dev", "eth0", "root")
		if q := relQdiscs(t, s.PID); strings.Contains(q, "c1c0:") {
			t.Fatalf("circuit's qdisc is still on pid %d:\n%s", s.PID, q)
		}
	}
	if natRulesFor(pd.ContainerID) == "" {
		t.Fatalf("no masquerade rule for %s before restore", pd.ContainerID)
	}
	dead.Kill()

	out := c.must("restore")
	want := relSorted([]string{
		fmt.Sprintf("re-applied qos to %s on reboot", pl.ContainerID),
		fmt.Sprintf("disconnected %s from reboot (its container is gone), released %s", pd.ContainerID, pd.IPs[0]),
		"restore: 2 action(s)",
	})
	if got := relLines(out); !slices.Equal(got, want) {
		t.Errorf("restore printed:\n%s\nwant the lines:\n%s", out, strings.Join(want, "\n"))
	}
	if q := relQdiscs(t, live.PID); !strings.Contains(q, "qdisc htb c1c0: root") {
		t.Errorf("restore did not shape the live container again:\n%s", q)
	}
	cls, _ := exec.Command("nsenter", "-t", strconv.Itoa(live.PID), "-n", "tc", "class", "show", "dev", "eth0").CombinedOutput()
	if !strings.Contains(string(cls), "rate 5Mbit") {
		t.Errorf("the live container's class is not 5Mbit:\n%s", cls)
	}
	if got := c.reservations("reboot"); !slices.Equal(got, []string{relAddr(pl.IPs[0])}) {
		t.Errorf("reservations after restore = %v, want only the live %s", got, pl.IPs[0])
	}
	if r := natRulesFor(pd.ContainerID); r != "" {
		t.Errorf("the dead container's masquerade rule is left:\n%s", r)
	}
	if natRulesFor(pl.ContainerID) == "" {
		t.Errorf("the live container's masquerade rule is gone")
	}
	if got := c.pins(); !slices.Equal(got, []string{pl.Netns}) {
		t.Errorf("pins after restore = %v, want only %s", got, pl.Netns)
	}
	if got := relBridgePorts(c.bridge); !slices.Equal(got, []string{pl.HostIf}) {
		t.Errorf("bridge ports after restore = %v, want only %s", got, pl.HostIf)
	}
	after := relInspect(c, "reboot")
	if len(after.Peers) != 1 || after.Peers[0].ContainerID != pl.ContainerID {
		t.Errorf("peers after restore: %+v", after.Peers)
	}

	if out := c.must("restore"); out != "restore: nothing to do\n" {
		t.Errorf("second restore printed:\n%s", out)
	}
	if out := c.must("gc"); out != "gc: nothing to do\n" {
		t.Errorf("gc after restore printed:\n%s", out)
	}
}

// After a real reboot, pins are plain files: the bind mounts are gone and
// the namespaces with them. restore and gc still release the addresses,
// through a CNI DEL without a namespace.
func TestReliabilityRestoreGCUnmountedPins(t *testing.T) {
	c := newCLI(t)
	c.must("network", "create", relConfNoMasq(c, "plain", "10.220.43.0/24"))
	live, forRestore, forGC := testutil.NewSleeper(t), testutil.NewSleeper(t), testutil.NewSleeper(t)
	for _, s := range []*testutil.Sleeper{live, forRestore, forGC} {
		c.must("network", "connect", strconv.Itoa(s.PID), "plain")
	}
	net := relInspect(c, "plain")
	pl, pr, pg := relPeerByPID(net, live.PID), relPeerByPID(net, forRestore.PID), relPeerByPID(net, forGC.PID)
	if pl == nil || pr == nil || pg == nil {
		t.Fatalf("peers not recorded: %+v", net.Peers)
	}

	reboot := func(s *testutil.Sleeper, p *api.Peer) {
		t.Helper()
		s.Kill()
		testutil.Run(t, "umount", p.Netns)
		if _, err := os.Stat(p.Netns); err != nil || netns.IsNetns(p.Netns) {
			t.Fatalf("pin %s is not a plain file after umount: %v", p.Netns, err)
		}
	}

	reboot(forRestore, pr)
	out := c.must("restore")
	want := []string{
		fmt.Sprintf("disconnected %s from plain (its container is gone), released %s", pr.ContainerID, pr.IPs[0]),
		"restore: 1 action(s)",
	}
	if got := strings.Split(strings.TrimSpace(out), "\n"); !slices.Equal(got, want) {
		t.Errorf("restore printed:\n%s\nwant:\n%s", out, strings.Join(want, "\n"))
	}
	if got, want := relSorted(c.reservations("plain")), relSorted([]string{relAddr(pl.IPs[0]), relAddr(pg.IPs[0])}); !slices.Equal(got, want) {
		t.Errorf("reservations after restore = %v, want %v", got, want)
	}
	if _, err := os.Stat(pr.Netns); err == nil {
		t.Errorf("restore left the unmounted pin %s", pr.Netns)
	}

	reboot(forGC, pg)
	out = c.must("gc")
	want = []string{
		fmt.Sprintf("disconnect %s from plain (its container is gone): %s", pg.ContainerID, pg.IPs[0]),
		"gc: 1 action(s)",
	}
	if got := strings.Split(strings.TrimSpace(out), "\n"); !slices.Equal(got, want) {
		t.Errorf("gc printed:\n%s\nwant:\n%s", out, strings.Join(want, "\n"))
	}
	if got := c.reservations("plain"); !slices.Equal(got, []string{relAddr(pl.IPs[0])}) {
		t.Errorf("reservations after gc = %v, want only the live %s", got, pl.IPs[0])
	}
	if got := c.pins(); !slices.Equal(got, []string{pl.Netns}) {
		t.Errorf("pins after gc = %v, want only %s", got, pl.Netns)
	}
	after := relInspect(c, "plain")
	if len(after.Peers) != 1 || after.Peers[0].ContainerID != pl.ContainerID {
		t.Errorf("peers after gc: %+v", after.Peers)
	}
	if got := relNetnsAddrs(t, live.PID)[pl.IfName]; got != relAddr(pl.IPs[0]) {
		t.Errorf("the live container lost its address: %q", got)
	}
	if out := c.must("gc"); out != "gc: nothing to do\n" {
		t.Errorf("second gc printed:\n%s", out)
	}
	if out := c.must("restore"); out != "restore: nothing to do\n" {
		t.Errorf("restore after gc printed:\n%s", out)
	}
}

// gc running while containers connect must not take anything from them:
// nothing is stale, so it has nothing to do. The network speaks CNI 1.1, so
// gc also asks libcni and the plugins to GC, with the attachments it knows.
func TestReliabilityGCDuringConcurrentConnects(t *testing.T) {
	skipStressInVM(t)
	c := newCLI(t)
	const n = 20
	conf := filepath.Join(t.TempDir(), "busy.conflist")
	body := fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "busy", "plugins": [{"type": "bridge", "bridge": %q,
  "isGateway": true, "ipMasq": true, "ipam": {"type": "host-local", "subnet": "10.220.49.0/24", "dataDir": %q}}]}`, c.bridge, c.ipam)
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	c.must("network", "create", conf)
	sl := make([]*testutil.Sleeper, n)
	for i := range sl {
		sl[i] = testutil.NewSleeper(t)
	}

	stop := make(chan struct{})
	gcDone := make(chan []string)
	go func() {
		var outs []string
		for {
			select {
			case <-stop:
				gcDone <- outs
				return
			default:
			}
			out, stderr, err := c.run("", "gc")
			if err != nil {
				out += fmt.Sprintf("(failed: %v: %s)", err, stderr)
			}
			outs = append(outs, out)
		}
	}()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Spread the connects over the gc runs.
			time.Sleep(time.Duration(i*25) * time.Millisecond)
			if _, stderr, err := c.run("", "network", "connect", strconv.Itoa(sl[i].PID), "busy"); err != nil {
				errs[i] = fmt.Errorf("%v: %s", err, stderr)
			}
		}()
	}
	wg.Wait()
	close(stop)
	outs := <-gcDone
	t.Logf("%d gc runs during the connects", len(outs))
	for _, out := range outs {
		if out != "gc: nothing to do\n" {
			t.Errorf("gc during the connects printed:\n%s", out)
		}
	}
	for i, err := range errs {
		if err != nil {
			t.Errorf("connect %d (pid %d): %v", i, sl[i].PID, err)
		}
	}

	net := relInspect(c, "busy")
	var hostIfs []string
	for _, s := range sl {
		p := relPeerByPID(net, s.PID)
		if p == nil || p.State != api.PeerConnected || len(p.IPs) != 1 {
			t.Errorf("pid %d: peer %+v", s.PID, p)
			continue
		}
		hostIfs = append(hostIfs, p.HostIf)
		if got := relNetnsAddrs(t, s.PID)[p.IfName]; got != relAddr(p.IPs[0]) {
			t.Errorf("pid %d is recorded with %s but has %q on %s: gc took its interface", s.PID, p.IPs[0], got, p.IfName)
		}
	}
	addrs := relPeerAddrs(net)
	if got := relSorted(c.reservations("busy")); !slices.Equal(got, addrs) {
		t.Errorf("host-local reservations %v\ndo not match the recorded addresses %v", got, addrs)
	}
	if got := relBridgePorts(c.bridge); !slices.Equal(got, relSorted(hostIfs)) {
		t.Errorf("bridge ports %v\ndo not match the recorded host interfaces %v", got, relSorted(hostIfs))
	}
	if p := c.pins(); len(p) != n {
		t.Errorf("%d pins, want %d", len(p), n)
	}
	if out := c.must("gc"); out != "gc: nothing to do\n" {
		t.Errorf("gc after the connects printed:\n%s", out)
	}
	if got := relSorted(c.reservations("busy")); !slices.Equal(got, addrs) {
		t.Errorf("gc after the connects changed the reservations: %v -> %v", addrs, got)
	}
}

// The plugins' GC (CNI 1.1) of a network circuit's state alone holds
// lists the attachments circuit knows, then tells the plugins to drop every
// other one: a connect that recorded and ADDed in between would lose its
// address. So connects wait while the GC runs. The race is made by
// construction: the first plugin of the chain holds its GC until the test
// has started the connects (a barrier, not a sleep).
func TestReliabilitySlowGCKeepsNewConnects(t *testing.T) {
	skipStressInVM(t)
	c := newCLI(t)
	const fresh = 5
	plugins := c.cniDir + ":" + testutil.TestPlugin(t)
	marker := filepath.Join(t.TempDir(), "calls")
	busyBridge := testutil.RandName("cbr")
	t.Cleanup(func() { exec.Command("ip", "link", "del", busyBridge).Run() })
	// host-local's data under circuit's state dir: circuit's alone, so gc
	// runs the plugins' GC on it.
	data := filepath.Join(c.state, "cni-data")
	conf := filepath.Join(t.TempDir(), "busy.conflist")
	body := fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "busy", "plugins": [
  {"type": "circuit-test-plugin", "gcMillis": 1500, "marker": %q},
  {"type": "bridge", "bridge": %q, "isGateway": true, "ipam": {"type": "host-local", "subnet": "10.220.49.0/24", "dataDir": %q}}]}`,
		marker, busyBridge, data)
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, string, error) {
		return c.run("", append([]string{"--cni-path", plugins}, args...)...)
	}
	if _, stderr, err := run("network", "create", conf); err != nil {
		t.Fatal(stderr)
	}
	sl := make([]*testutil.Sleeper, fresh)
	for i := range sl {
		sl[i] = testutil.NewSleeper(t)
	}
	gc := exec.Command(c.bin, "--state", c.state, "--cni-path", plugins, "gc")
	var gcOut bytes.Buffer
	gc.Stdout, gc.Stderr = &gcOut, &gcOut
	if err := gc.Start(); err != nil {
		t.Fatal(err)
	}
	// The barrier: the plugins' GC has begun, with its list of attachments.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(5 * time.Millisecond) {
		if b, _ := os.ReadFile(marker); strings.Contains(string(b), "GC") {
			break
		}
		if time.Now().After(deadline) {
			gc.Process.Kill()
			t.Fatalf("gc never ran the plugins' GC:\n%s", gcOut.String())
		}
	}
	errs := make([]error, fresh)
	var wg sync.WaitGroup
	for i := range sl {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, stderr, err := run("network", "connect", strconv.Itoa(sl[i].PID), "busy"); err != nil {
				errs[i] = fmt.Errorf("%v: %s", err, stderr)
			}
		}()
	}
	wg.Wait()
	if err := gc.Wait(); err != nil {
		t.Errorf("gc: %v\n%s", err, gcOut.String())
	}
	for i, err := range errs {
		if err != nil {
			t.Errorf("connect %d: %v", i, err)
		}
	}
	net := relInspect(c, "busy")
	for _, s := range sl {
		p := relPeerByPID(net, s.PID)
		if p == nil || p.State != api.PeerConnected || len(p.IPs) != 1 {
			t.Errorf("pid %d: peer %+v", s.PID, p)
			continue
		}
		if got := relNetnsAddrs(t, s.PID)[p.IfName]; got != relAddr(p.IPs[0]) {
			t.Errorf("pid %d is recorded with %s but has %q on %s", s.PID, p.IPs[0], got, p.IfName)
		}
	}
	if got, want := relSorted(testutil.Reservations(data, "busy")), relPeerAddrs(net); !slices.Equal(got, want) {
		t.Errorf("host-local reservations on busy %v\ndo not match the recorded addresses %v: gc released addresses of connects made during it", got, want)
	}
	for _, s := range sl {
		run("network", "disconnect", strconv.Itoa(s.PID), "busy")
	}
}

func TestReliabilityConcurrentGCAndRestore(t *testing.T) {
	skipStressInVM(t)
	c := newCLI(t)
	const dead = 10
	c.must("network", "create", relConfNoMasq(c, "racing", "10.220.47.0/24"))
	live := testutil.NewSleeper(t)
	c.must("network", "connect", strconv.Itoa(live.PID), "racing")
	for range dead {
		s := testutil.NewSleeper(t)
		c.must("network", "connect", strconv.Itoa(s.PID), "racing")
		s.Kill()
	}
	pl := relPeerByPID(relInspect(c, "racing"), live.PID)

	cmds := []string{"gc", "restore", "gc", "restore", "gc"}
	outs := make([]string, len(cmds))
	errs := make([]error, len(cmds))
	var wg sync.WaitGroup
	for i, cmd := range cmds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var stderr string
			outs[i], stderr, errs[i] = c.run("", cmd)
			if errs[i] != nil {
				errs[i] = fmt.Errorf("%v: %s", errs[i], stderr)
			}
		}()
	}
	wg.Wait()
	for i := range cmds {
		if errs[i] != nil {
			t.Errorf("%s: %v\n%s", cmds[i], errs[i], outs[i])
		}
	}
	t.Logf("outputs:\n%s", strings.Join(outs, "---\n"))
	released := map[string]int{}
	for _, out := range outs {
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) > 1 && (f[0] == "disconnect" || f[0] == "disconnected") {
				released[f[1]]++
			}
		}
	}
	if len(released) != dead {
		t.Errorf("%d containers disconnected, want the %d dead ones", len(released), dead)
	}
	for id, k := range released {
		if k != 1 {
			t.Errorf("%s was disconnected %d times", id, k)
		}
	}
	if got := c.reservations("racing"); !slices.Equal(got, []string{relAddr(pl.IPs[0])}) {
		t.Errorf("reservations = %v, want only the live %s", got, pl.IPs[0])
	}
	if got := c.pins(); !slices.Equal(got, []string{pl.Netns}) {
		t.Errorf("pins = %v, want only %s", got, pl.Netns)
	}
	if n := relInspect(c, "racing"); len(n.Peers) != 1 || n.Peers[0].ContainerID != pl.ContainerID || n.Peers[0].State != api.PeerConnected {
		t.Errorf("peers: %+v", n.Peers)
	}
	if got := relBridgePorts(c.bridge); !slices.Equal(got, []string{pl.HostIf}) {
		t.Errorf("bridge ports = %v, want only %s", got, pl.HostIf)
	}
	if out := c.must("gc"); out != "gc: nothing to do\n" {
		t.Errorf("gc afterwards printed:\n%s", out)
	}
}
