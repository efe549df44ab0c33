package integration

import (
	"fmt"
	"strings"
	"testing"

	"github.com/circuit-cni/circuit/pkg/testutil"
)

// The seed's walkthrough against a real runc container.
func TestRuncConnectListDisconnect(t *testing.T) {
	c := newCLI(t)
	b := testutil.NewBundle(t)
	ctr := b.MustStart(t, testutil.RandName("web-"))

	if out := c.must("network", "create", c.conf("sandbox", "10.220.1.0/24")); out != "sandbox created\n" {
		t.Fatalf("create printed %q", out)
	}
	out := c.must("--runc-root", b.Root, "network", "connect", ctr.ID, "sandbox")
	if want := fmt.Sprintf("connected container %s to network sandbox\n", ctr.ID); out != want {
		t.Fatalf("connect printed %q, want %q", out, want)
	}
	ip := containerIP(t, ctr)
	list := c.must("network", "list")
	if want := fmt.Sprintf("%s (%d)", ip, ctr.PID); !strings.Contains(list, want) || !strings.HasPrefix(list, "NAME                TYPE                VERSION             PEERS") {
		t.Fatalf("network list:\n%s\nwant a row with %q", list, want)
	}
	if err := ping(ctr, "10.220.1.1"); err != nil {
		t.Fatal(err)
	}
	// By PID, as in the seed.
	out = c.must("--runc-root", b.Root, "network", "disconnect", fmt.Sprint(ctr.PID), "sandbox")
	if want := fmt.Sprintf("disconnected container %d from network sandbox\n", ctr.PID); out != want {
		t.Fatalf("disconnect printed %q, want %q", out, want)
	}
	c.assertReleased("sandbox", ctr.ID)
	if err := ping(ctr, "10.220.1.1"); err == nil {
		t.Fatal("container still reaches the gateway after disconnect")
	}
	if out := c.must("network", "delete", "sandbox"); out != "sandbox deleted\n" {
		t.Fatalf("delete printed %q", out)
	}
}

// Bad input: one line on stderr, non-zero exit, nothing changed.
func TestCLIBadInput(t *testing.T) {
	c := newCLI(t)
	c.must("network", "create", c.conf("keep", "10.220.2.0/24"))
	before := c.must("network", "inspect", "keep")
	for _, args := range [][]string{
		{"network", "create", "/no/such/file.conf"},
		{"network", "connect", "999999999", "keep"},
		{"network", "connect", "no-such-container", "keep"},
		{"network", "connect", "1", "no-such-network"},
		{"network", "disconnect", "1", "keep"},
		{"network", "delete", "nope"},
	} {
		out, stderr, err := c.run("", args...)
		if err == nil {
			t.Errorf("circuit %v succeeded: %q", args, out)
			continue
		}
		if lines := strings.Split(strings.TrimSpace(stderr), "\n"); len(lines) != 1 || !strings.HasPrefix(lines[0], "circuit: ") {
			t.Errorf("circuit %v: stderr is not one error line:\n%s", args, stderr)
		}
	}
	// Malformed config from stdin.
	if _, stderr, err := c.run(`{"name": "x"`, "network", "create", "-"); err == nil || !strings.Contains(stderr, "JSON") {
		t.Errorf("malformed stdin config: err %v, stderr %q", err, stderr)
	}
	if after := c.must("network", "inspect", "keep"); after != before {
		t.Errorf("state changed:\n%s\n%s", before, after)
	}
	if r := c.reservations("keep"); len(r) != 0 {
		t.Errorf("reservations after refused commands: %v", r)
	}
}
