package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/circuit-cni/circuit/pkg/testutil"
)

// hookBundle makes a bundle whose config.json runs circuit as a runc hook,
// the seed's way: CNI_CONF, CNI_PATH and PATH in the hook's env.
func (c *cli) hookBundle(start, conf string) *testutil.Bundle {
	b := testutil.NewBundle(c.t)
	env := []any{
		"CNI_CONF=" + conf,
		"CNI_PATH=" + c.cniDir,
		"CIRCUIT_STATE=" + c.state,
		"PATH=/bin:/usr/bin:/usr/sbin:/sbin",
	}
	hook := map[string]any{"path": c.bin, "env": env}
	testutil.EditSpec(c.t, b.Dir, func(spec map[string]any) {
		spec["hooks"] = map[string]any{start: []any{hook}, "poststop": []any{hook}}
	})
	return b
}

func (c *cli) hookLifecycle(start string, subnet string) {
	t := c.t
	prefix := strings.TrimSuffix(subnet, "0/24")
	b := c.hookBundle(start, c.conf("hooked", subnet))
	ctr := b.MustStart(t, testutil.RandName("hk-"))
	ip := containerIP(t, ctr)
	if !strings.HasPrefix(ip, prefix) {
		t.Fatalf("container address %s is not in %s", ip, subnet)
	}
	if err := ping(ctr, prefix+"1"); err != nil {
		t.Fatal(err)
	}
	if list := c.must("network", "list"); !strings.Contains(list, fmt.Sprintf("%s (%d)", ip, ctr.PID)) {
		t.Fatalf("network list does not show the container:\n%s", list)
	}
	if r := c.reservations("hooked"); len(r) != 1 {
		t.Fatalf("reservations = %v", r)
	}
	ctr.Stop(t) // runc kill + runc delete: poststop runs
	c.assertReleased("hooked", ctr.ID)
	if out := c.must("network", "inspect", "hooked"); !strings.Contains(out, `"peers": []`) {
		t.Errorf("peer still recorded after poststop:\n%s", out)
	}
	if log, err := os.ReadFile(filepath.Join(c.state, "hook.log")); err != nil || !strings.Contains(string(log), ctr.ID) {
		t.Errorf("hook.log does not mention %s: %v\n%s", ctr.ID, err, log)
	}
}

func TestHookPrestartPoststop(t *testing.T) {
	newCLI(t).hookLifecycle("prestart", "10.220.10.0/24")
}

func TestHookCreateRuntime(t *testing.T) {
	newCLI(t).hookLifecycle("createRuntime", "10.220.11.0/24")
}

func TestHookTwoContainersStopOne(t *testing.T) {
	c := newCLI(t)
	b := c.hookBundle("prestart", c.conf("pair", "10.220.12.0/24"))
	b2 := &testutil.Bundle{Dir: b.Dir, Root: b.Root}
	one := b.MustStart(t, testutil.RandName("one-"))
	two := b2.MustStart(t, testutil.RandName("two-"))
	ipTwo := containerIP(t, two)
	one.Stop(t)
	if r := c.reservations("pair"); len(r) != 1 || r[0] != ipTwo {
		t.Fatalf("reservations after stopping one = %v, want [%s]", r, ipTwo)
	}
	if err := ping(two, "10.220.12.1"); err != nil {
		t.Fatalf("the other container lost its network: %v", err)
	}
	if natRulesFor(two.ID) == "" {
		t.Errorf("the other container's masquerade rule is gone")
	}
	two.Stop(t)
	c.assertReleased("pair", two.ID)
	// The network itself stays: poststop never deletes it.
	c.must("network", "inspect", "pair")
}

func TestHookMissingConfFailsStart(t *testing.T) {
	c := newCLI(t)
	b := c.hookBundle("prestart", filepath.Join(t.TempDir(), "missing.conf"))
	id := testutil.RandName("bad-")
	if _, err := b.Start(t, id); err == nil {
		t.Fatal("runc run succeeded with a hook pointing at a missing CNI_CONF")
	}
	if out, err := exec.Command("ip", "-o", "link", "show", "master", c.bridge).CombinedOutput(); err == nil && strings.TrimSpace(string(out)) != "" {
		t.Errorf("veth left: %s", out)
	}
	if p := c.pins(); len(p) != 0 {
		t.Errorf("pins left: %v", p)
	}
	if out := c.must("network", "list", "-q"); strings.TrimSpace(out) != "" {
		t.Errorf("networks recorded: %q", out)
	}
	if log, _ := os.ReadFile(filepath.Join(c.state, "hook.log")); !strings.Contains(string(log), "missing.conf") {
		t.Errorf("hook.log does not record the error:\n%s", log)
	}
}

func TestHookTwentyAtOnce(t *testing.T) {
	skipStressInVM(t)
	c := newCLI(t)
	b := c.hookBundle("prestart", c.conf("storm", "10.220.13.0/24"))
	const n = 20
	ctrs := make([]*testutil.Container, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctrs[i], errs[i] = b.Start(t, fmt.Sprintf("%s-%02d", testutil.RandName("st"), i))
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("container %d: %v", i, errs[i])
		}
		seen[containerIP(t, ctrs[i])] = true
	}
	if len(seen) != n || len(c.reservations("storm")) != n {
		t.Fatalf("%d distinct addresses, %d reservations; want %d", len(seen), len(c.reservations("storm")), n)
	}
	for i := range n {
		wg.Add(1)
		go func() { defer wg.Done(); ctrs[i].Stop(t) }()
	}
	wg.Wait()
	if r := c.reservations("storm"); len(r) != 0 {
		t.Fatalf("%d reservations left after deleting every container", len(r))
	}
	if p := c.pins(); len(p) != 0 {
		t.Fatalf("%d pins left", len(p))
	}
}

// `circuit hook install` writes the hooks; runc then networks the container
// with no other command.
func TestHookInstall(t *testing.T) {
	c := newCLI(t)
	b := testutil.NewBundle(t)
	conf := c.conf("installed", "10.220.14.0/24")
	if out := c.must("hook", "install", "--cni-conf", conf, b.Dir); !strings.Contains(out, b.Dir) {
		t.Fatalf("hook install printed %q", out)
	}
	ctr := b.MustStart(t, testutil.RandName("inst-"))
	if ip := containerIP(t, ctr); !strings.HasPrefix(ip, "10.220.14.") {
		t.Fatalf("container address %s", ip)
	}
	if err := ping(ctr, "10.220.14.1"); err != nil {
		t.Fatal(err)
	}
	ctr.Stop(t)
	c.assertReleased("installed", ctr.ID)
}

// A container ID used again after its container died without a poststop
// (a reboot before restore, runc's state lost) starts: the leftover record,
// whose process is gone, is replaced and its leftovers released, instead
// of refusing the new container as "already connected".
func TestHookReusedIDAfterLostPoststop(t *testing.T) {
	c := newCLI(t)
	b := c.hookBundle("createRuntime", c.conf("reuse", "10.220.15.0/24"))
	id := testutil.RandName("re-")
	first := b.MustStart(t, id)
	ip1 := containerIP(t, first)
	// The container dies and nothing runs its poststop.
	syscall.Kill(first.PID, syscall.SIGKILL)
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", first.PID)); err != nil {
			break
		}
	}
	if err := os.RemoveAll(filepath.Join(b.Root, id)); err != nil {
		t.Fatal(err)
	}
	second, err := b.Start(t, id)
	if err != nil {
		t.Fatalf("a new container with the ID of a dead one did not start: %v", err)
	}
	ip2 := containerIP(t, second)
	if r := c.reservations("reuse"); len(r) != 1 || r[0] != ip2 {
		t.Errorf("reservations %v, want only the new container's %s (the dead one had %s)", r, ip2, ip1)
	}
	if p := c.pins(); len(p) != 1 {
		t.Errorf("pins %v, want the new container's only", p)
	}
	if peers := c.must("network", "inspect", "reuse", "--format", "{{range .Peers}}{{.PID}} {{end}}"); strings.TrimSpace(peers) != fmt.Sprint(second.PID) {
		t.Errorf("peers (by pid): %q, want only %d", peers, second.PID)
	}
	if err := ping(second, "10.220.15.1"); err != nil {
		t.Error(err)
	}
	second.Stop(t)
	c.assertReleased("reuse", id)
}

// A hung plugin cannot block runc: hook install --timeout writes the OCI
// timeout into the entries, and the hook gives up a little before it,
// undoes what it did (the bridge plugin's ADD) and says so in one line.
func TestHookTimeoutUndoesAndSaysSo(t *testing.T) {
	if testutil.InVM() {
		t.Skip("needs no kernel the host lacks")
	}
	c := newCLI(t)
	plugins := c.cniDir + ":" + testutil.TestPlugin(t)
	conf := filepath.Join(t.TempDir(), "hung.conflist")
	os.WriteFile(conf, fmt.Appendf(nil, `{"cniVersion": "1.0.0", "name": "hung", "plugins": [
	  {"type": "bridge", "bridge": %q, "isGateway": true, "ipam": {"type": "host-local", "subnet": "10.220.16.0/24", "dataDir": %q}},
	  {"type": "circuit-test-plugin", "addMillis": 60000}]}`, c.bridge, c.ipam), 0o644)
	b := testutil.NewBundle(t)
	if out, _, err := c.run("", "--cni-path", plugins, "hook", "install", "--timeout", "3", "--create-runtime", "--cni-conf", conf, b.Dir); err != nil {
		t.Fatalf("hook install --timeout 3: %v %s", err, out)
	}
	spec, _ := os.ReadFile(filepath.Join(b.Dir, "config.json"))
	if !strings.Contains(string(spec), `"timeout": 3`) {
		t.Errorf("config.json has no OCI timeout of 3:\n%s", spec)
	}
	id := testutil.RandName("hung-")
	if _, err := b.Start(t, id); err == nil {
		t.Fatal("the container started with a plugin that hangs")
	}
	log, _ := os.ReadFile(filepath.Join(c.state, "hook.log"))
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(log)), "\n") {
		if strings.Contains(l, id+" creating") {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 || !strings.Contains(lines[0], "gave up after 2s, before runc's hook timeout of 3s") {
		t.Errorf("hook.log, want one line saying the hook gave up:\n%s", log)
	}
	c.assertReleased("hung", id)
	if peers := c.must("network", "inspect", "hung", "--format", "{{len .Peers}}"); strings.TrimSpace(peers) != "0" {
		t.Errorf("peers left: %s", peers)
	}
}
