package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

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
