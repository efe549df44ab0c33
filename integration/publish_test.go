package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/circuit-cni/circuit/pkg/testutil"
)

// publishConf is a network whose chain publishes ports (portmap), takes
// fixed addresses and MACs (bridge with host-local), and names its
// containers to a plugin that records what it got (circuit-test-plugin,
// declaring aliases).
func (c *cli) publishConf(name, subnet, marker string) string {
	path := filepath.Join(c.t.TempDir(), name+".conflist")
	body := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %q, "plugins": [
  {"type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": true, "capabilities": {"ips": true, "mac": true},
   "ipam": {"type": "host-local", "subnet": %q, "dataDir": %q, "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
  {"type": "circuit-test-plugin", "capabilities": {"aliases": true}, "marker": %q}]}`, name, c.bridge, subnet, c.ipam, marker)
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		c.t.Fatal(err)
	}
	return path
}

func hostGet(addr string) (string, error) {
	return testutil.HTTPGet("http://"+addr+"/", 10*time.Second)
}

// A busybox httpd published with --publish answers on the host through the
// gateway address and from a second container; the rule is gone after a
// disconnect, after the container died (a disconnect from the pin), and
// after gc. The plugins get the container's name, aliases, address and
// MAC asked for.
func TestPublishRuncHTTPD(t *testing.T) {
	if testutil.InVM() {
		t.Skip("needs no kernel the host lacks")
	}
	c := newCLI(t)
	plugins := c.cniDir + ":" + testutil.TestPlugin(t)
	run := func(args ...string) string {
		t.Helper()
		out, stderr, err := c.run("", append([]string{"--cni-path", plugins}, args...)...)
		if err != nil {
			t.Fatalf("circuit %s: %v\n%s", strings.Join(args, " "), err, stderr)
		}
		return out
	}
	marker := filepath.Join(t.TempDir(), "calls")
	run("network", "create", c.publishConf("pub", "10.220.80.0/24", marker))
	gw := "10.220.80.1"

	web := c.httpdBundle("web")
	ctr := web.b.MustStart(t, web.id)
	run("--runc-root", web.b.Root, "network", "connect", "--publish", "18081:80", "--ip", "10.220.80.77", "--mac", "02:42:0a:dc:50:4d",
		"--alias", "www", "--alias", "front", ctr.ID, "pub")
	if ip := containerIP(t, ctr); ip != "10.220.80.77" {
		t.Errorf("the container has %s, not the address asked for", ip)
	}
	if out, _ := ctr.Exec("cat", "/sys/class/net/eth0/address"); strings.TrimSpace(string(out)) != "02:42:0a:dc:50:4d" {
		t.Errorf("the container's MAC is %q", out)
	}
	if body, err := hostGet(gw + ":18081"); err != nil || body != web.page {
		t.Errorf("the host through the gateway address: %q, %v", body, err)
	}
	client := c.httpdBundle("client")
	cctr := client.b.MustStart(t, client.id)
	run("--runc-root", client.b.Root, "network", "connect", cctr.ID, "pub")
	if body, err := ncRequest(cctr, gw+":18081", "/"); err != nil || body != web.page {
		t.Errorf("a second container through the published port: %q, %v", body, err)
	}
	calls, _ := os.ReadFile(marker)
	if !strings.Contains(string(calls), "K8S_POD_NAME="+ctr.ID) || !strings.Contains(string(calls), "K8S_POD_NAMESPACE=circuit") ||
		!strings.Contains(string(calls), `"aliases":{"pub":["www","front"]}`) {
		t.Errorf("the plugin did not get the container's name and aliases:\n%s", calls)
	}
	// Asking for what another container holds: refused, nothing changed.
	other := testutil.NewSleeper(t)
	// The rules of both containers (the host's others may change meanwhile:
	// other packages' tests run beside this one).
	rules := func() string { return natRulesFor(ctr.ID) + natRulesFor(fmt.Sprintf("pid-%d-", other.PID)) }
	before := rules() + c.must("network", "inspect", "pub")
	for _, args := range [][]string{
		{"--publish", "18081:8080"},
		{"--publish", "10.220.80.1:18081:80"},
		{"--ip", "10.220.80.77"},
		{"--ip", "10.99.0.1"},
		{"--mac", "01:00:5e:00:00:01"},
		{"--publish", "[::1]:18082:80"},
		{"--publish", "0:80"},
	} {
		_, stderr, err := c.run("", append(append([]string{"--cni-path", plugins, "network", "connect"}, args...), fmt.Sprint(other.PID), "pub")...)
		secOneLine(t, "connect "+strings.Join(args, " "), err, stderr)
	}
	if after := rules() + c.must("network", "inspect", "pub"); after != before {
		t.Errorf("refused connects changed the rules or the records")
	}
	// The name reaches the plugins for a plain process with --name.
	run("network", "connect", "--name", "plain-one", fmt.Sprint(other.PID), "pub")
	if calls, _ := os.ReadFile(marker); !strings.Contains(string(calls), "K8S_POD_NAME=plain-one") {
		t.Errorf("--name did not reach the plugins:\n%s", calls)
	}

	// Disconnect: the rule goes, the address and port are free again.
	run("--runc-root", web.b.Root, "network", "disconnect", ctr.ID, "pub")
	if r := natRulesFor(ctr.ID); r != "" {
		t.Errorf("portmap rules left after disconnect:\n%s", r)
	}
	if _, err := hostGet(gw + ":18081"); err == nil {
		t.Error("the port still answers after disconnect")
	}
	// Connected again, then the container dies: disconnect from the pin.
	run("--runc-root", web.b.Root, "network", "connect", "--publish", "18081:80", "--ip", "10.220.80.77", ctr.ID, "pub")
	if body, err := hostGet(gw + ":18081"); err != nil || body != web.page {
		t.Errorf("after connecting again: %q, %v", body, err)
	}
	ctr.Stop(t)
	run("network", "disconnect", ctr.ID, "pub")
	if r := natRulesFor(ctr.ID); r != "" {
		t.Errorf("portmap rules left after a disconnect of a dead container:\n%s", r)
	}
	// And after gc.
	second := web.b.MustStart(t, web.id+"-2")
	run("--runc-root", web.b.Root, "network", "connect", "--publish", "18083:80", second.ID, "pub")
	second.Stop(t)
	run("gc")
	if r := natRulesFor(second.ID); r != "" {
		t.Errorf("portmap rules left after gc:\n%s", r)
	}
}

// The same through the hook, with the container's annotations.
func TestPublishThroughHookAnnotations(t *testing.T) {
	if testutil.InVM() {
		t.Skip("needs no kernel the host lacks")
	}
	c := newCLI(t)
	plugins := c.cniDir + ":" + testutil.TestPlugin(t)
	marker := filepath.Join(t.TempDir(), "calls")
	conf := c.publishConf("hookpub", "10.220.81.0/24", marker)
	web := c.httpdBundle("hweb")
	if out, stderr, err := c.run("", "--cni-path", plugins, "hook", "install", "--create-runtime", "--cni-conf", conf, web.b.Dir); err != nil {
		t.Fatalf("%v %s %s", err, out, stderr)
	}
	testutil.EditSpec(t, web.b.Dir, func(spec map[string]any) {
		spec["annotations"] = map[string]any{"circuit.publish": "18084:80", "circuit.ip": "10.220.81.50", "circuit.alias": "api"}
	})
	ctr := web.b.MustStart(t, web.id)
	if ip := containerIP(t, ctr); ip != "10.220.81.50" {
		t.Errorf("address %s, want the annotated 10.220.81.50", ip)
	}
	if body, err := hostGet("10.220.81.1:18084"); err != nil || body != web.page {
		t.Errorf("published by annotation: %q, %v", body, err)
	}
	if calls, _ := os.ReadFile(marker); !strings.Contains(string(calls), `"aliases":{"hookpub":["api"]}`) {
		t.Errorf("aliases:\n%s", calls)
	}
	ctr.Stop(t) // poststop
	if r := natRulesFor(ctr.ID); r != "" {
		t.Errorf("portmap rules left after poststop:\n%s", r)
	}
	if _, err := hostGet("10.220.81.1:18084"); err == nil {
		t.Error("the port still answers after poststop")
	}
	c.assertReleased("hookpub", ctr.ID)
}

// httpdBundle is a bundle serving a page naming its container.
type httpdBundle struct {
	b    *testutil.Bundle
	id   string
	page string
}

func (c *cli) httpdBundle(name string) httpdBundle {
	b := testutil.NewBundle(c.t, "httpd", "-f", "-p", "80", "-h", "/www")
	id := testutil.RandName(name + "-")
	page := "served by " + id
	if err := os.WriteFile(filepath.Join(b.Dir, "rootfs", "www", "index.html"), []byte(page+"\n"), 0o644); err != nil {
		c.t.Fatal(err)
	}
	return httpdBundle{b: b, id: id, page: page}
}

// A dual-stack network: --ip of both families lands on the container,
// --publish answers on a wildcard of both families and on an IPv6 host
// address, and everything is given back at disconnect.
func TestPublishDualStack(t *testing.T) {
	if testutil.InVM() {
		t.Skip("needs no kernel the host lacks")
	}
	c := newCLI(t)
	path := filepath.Join(t.TempDir(), "dual.conflist")
	body := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "dual", "plugins": [
  {"type": "bridge", "bridge": %q, "isGateway": true, "capabilities": {"ips": true},
   "ipam": {"type": "host-local", "dataDir": %q,
            "ranges": [[{"subnet": "10.220.82.0/24"}], [{"subnet": "fd00:dc:82::/64"}]]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}`, c.bridge, c.ipam)
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	c.must("network", "create", path)

	web := c.httpdBundle("dual")
	ctr := web.b.MustStart(t, web.id)
	c.must("--runc-root", web.b.Root, "network", "connect", "--ip", "10.220.82.20", "--ip", "fd00:dc:82::20",
		"--publish", "18090:80", "--publish", "[fd00:dc:82::1]:18091:80", ctr.ID, "dual")
	out, err := ctr.Exec("ip", "-o", "addr", "show", "eth0")
	if err != nil || !strings.Contains(string(out), "inet 10.220.82.20/24") || !strings.Contains(string(out), "inet6 fd00:dc:82::20/64") {
		t.Errorf("the container's addresses are not the ones asked for (%v):\n%s", err, out)
	}
	for _, addr := range []string{"10.220.82.1:18090", "[fd00:dc:82::1]:18090", "[fd00:dc:82::1]:18091"} {
		if body, err := hostGet(addr); err != nil || body != web.page {
			t.Errorf("published on %s: %q, %v", addr, body, err)
		}
	}
	peer := c.must("network", "inspect", "dual")
	for _, want := range []string{"10.220.82.20", "fd00:dc:82::20", "18090", "fd00:dc:82::1"} {
		if !strings.Contains(peer, want) {
			t.Errorf("network inspect does not show %s:\n%s", want, peer)
		}
	}
	// The same IPv6 address, or the IPv6 wildcard port through a
	// specific IPv6 address, is held for this peer.
	other := testutil.NewSleeper(t)
	rules := func() string { return natRulesFor(ctr.ID) + natRulesFor(fmt.Sprintf("pid-%d-", other.PID)) }
	before := rules() + peer + strings.Join(c.reservations("dual"), ",")
	for _, args := range [][]string{
		{"--ip", "fd00:dc:82::20"},
		{"--ip", "fd00:dd::1"},
		{"--publish", "[fd00:dc:82::1]:18090:80"},
		{"--publish", "[fd00:dc:82::1]:18091:8080/tcp"},
	} {
		_, stderr, err := c.run("", append(append([]string{"network", "connect"}, args...), fmt.Sprint(other.PID), "dual")...)
		secOneLine(t, "connect "+strings.Join(args, " "), err, stderr)
	}
	if after := rules() + c.must("network", "inspect", "dual") + strings.Join(c.reservations("dual"), ","); after != before {
		t.Errorf("refused connects changed the rules, records or reservations")
	}
	// A UDP port of the same number is another mapping.
	c.must("network", "connect", "--publish", "[fd00:dc:82::1]:18091:53/udp", fmt.Sprint(other.PID), "dual")

	c.must("--runc-root", web.b.Root, "network", "disconnect", ctr.ID, "dual")
	c.must("network", "disconnect", fmt.Sprint(other.PID), "dual")
	if _, err := hostGet("[fd00:dc:82::1]:18091"); err == nil {
		t.Error("the IPv6 port still answers after disconnect")
	}
	c.assertReleased("dual", ctr.ID)
	// Free again: the same address and port for another container.
	c.must("network", "connect", "--ip", "fd00:dc:82::20", "--publish", "[fd00:dc:82::1]:18091:80", fmt.Sprint(other.PID), "dual")
	c.must("network", "disconnect", fmt.Sprint(other.PID), "dual")
}

// restore gives back what dead containers held with their settings: the
// portmap rules of one that died while circuit was not running, and the
// fixed address of one lost in a reboot (its pin a plain file), which a
// new container then gets.
func TestPublishRestoreGivesBack(t *testing.T) {
	if testutil.InVM() {
		t.Skip("needs no kernel the host lacks")
	}
	c := newCLI(t)
	plugins := c.cniDir + ":" + testutil.TestPlugin(t)
	must := func(args ...string) string { return c.must(append([]string{"--cni-path", plugins}, args...)...) }
	marker := filepath.Join(t.TempDir(), "calls")
	must("network", "create", c.publishConf("rpub", "10.220.83.0/24", marker))
	died, rebooted := testutil.NewSleeper(t), testutil.NewSleeper(t)
	must("network", "connect", "--publish", "18096:80", "--ip", "10.220.83.30", fmt.Sprint(died.PID), "rpub")
	must("network", "connect", "--publish", "18097:80", "--ip", "10.220.83.31", "--mac", "02:42:0a:dc:53:1f", "--alias", "db", fmt.Sprint(rebooted.PID), "rpub")
	var diedID, rebootedID, pin string
	for _, p := range relInspect(c, "rpub").Peers {
		switch p.PID {
		case died.PID:
			diedID = p.ContainerID
		case rebooted.PID:
			rebootedID, pin = p.ContainerID, p.Netns
		}
	}
	if diedID == "" || rebootedID == "" || !strings.Contains(natRulesFor(diedID), "dnat name") || !strings.Contains(natRulesFor(rebootedID), "dnat name") {
		t.Fatalf("peers %q, %q, or no portmap rules before restore", diedID, rebootedID)
	}
	died.Kill()
	rebooted.Kill()
	testutil.Run(t, "umount", pin)
	t.Cleanup(func() { dropRebootNAT(t, rebootedID) })

	must("restore")
	if r := natRulesFor(diedID); r != "" {
		t.Errorf("rules of the dead container left after restore:\n%s", r)
	}
	// The rebooted one's namespace is gone, and the bridge plugin cannot
	// find its masquerade rule without it (a real reboot flushed it):
	// what portmap published must still go.
	if r := natRulesFor(rebootedID); strings.Contains(r, "dnat name") || strings.Contains(r, "18097") {
		t.Errorf("portmap rules of the rebooted container left after restore:\n%s", r)
	}
	if r := c.reservations("rpub"); len(r) != 0 {
		t.Errorf("reservations left after restore: %v", r)
	}
	// The plugins' DEL got the settings of the ADD.
	calls, _ := os.ReadFile(marker)
	if !slices.ContainsFunc(strings.Split(string(calls), "\n"), func(l string) bool {
		return strings.HasPrefix(l, "DEL ") && strings.Contains(l, `"aliases":{"rpub":["db"]}`)
	}) {
		t.Errorf("DEL did not carry the settings of the ADD:\n%s", calls)
	}
	next := testutil.NewSleeper(t)
	must("network", "connect", "--publish", "18096:80", "--ip", "10.220.83.30", fmt.Sprint(next.PID), "rpub")
	must("network", "disconnect", fmt.Sprint(next.PID), "rpub")
}
