package testutil

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// RequireRunc skips a test when runc cannot run containers here.
func RequireRunc(t testing.TB) {
	t.Helper()
	RequireRoot(t)
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("runc is not installed")
	}
}

// Bundle is an OCI bundle with a busybox-static rootfs.
type Bundle struct {
	Dir  string
	Root string // runc --root for this test
}

var applets = []string{"sh", "sleep", "ping", "ping6", "ip", "httpd", "wget", "ifconfig", "cat", "echo", "nc", "netstat", "route", "true"}

// NewBundle makes a bundle whose process runs args (default: sleep 3600),
// in its own network namespace, using a runc state root private to the test.
func NewBundle(t testing.TB, args ...string) *Bundle {
	t.Helper()
	RequireRunc(t)
	dir := t.TempDir()
	root := filepath.Join(dir, "rootfs")
	for _, d := range []string{"bin", "proc", "sys", "dev", "tmp", "etc", "www"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	bb, err := os.ReadFile(Busybox())
	if err != nil {
		t.Fatalf("read busybox: %v", err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin", "busybox"), bb, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range applets {
		os.Symlink("busybox", filepath.Join(root, "bin", a))
	}
	os.WriteFile(filepath.Join(root, "etc", "passwd"), []byte("root:x:0:0:root:/:/bin/sh\n"), 0o644)
	Run(t, "runc", "spec", "--bundle", dir)
	if len(args) == 0 {
		args = []string{"sleep", "3600"}
	}
	EditSpec(t, dir, func(spec map[string]any) {
		proc := spec["process"].(map[string]any)
		proc["terminal"] = false
		proc["args"] = args
		spec["root"].(map[string]any)["readonly"] = false
		// Let ping open raw sockets as it does on a host.
		caps := proc["capabilities"].(map[string]any)
		for _, set := range []string{"bounding", "effective", "permitted"} {
			if l, ok := caps[set].([]any); ok {
				caps[set] = append(l, "CAP_NET_RAW")
			}
		}
	})
	runcRoot := filepath.Join(dir, "runc-root")
	return &Bundle{Dir: dir, Root: runcRoot}
}

// EditSpec rewrites a bundle's config.json.
func EditSpec(t testing.TB, dir string, fn func(spec map[string]any)) {
	t.Helper()
	path := filepath.Join(dir, "config.json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var spec map[string]any
	if err := json.Unmarshal(b, &spec); err != nil {
		t.Fatal(err)
	}
	fn(spec)
	b, _ = json.MarshalIndent(spec, "", "  ")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// Container is a runc container started from a Bundle.
type Container struct {
	ID     string
	Bundle *Bundle
	PID    int
}

// Runc runs runc with the bundle's state root.
func (b *Bundle) Runc(args ...string) ([]byte, error) {
	return exec.Command("runc", append([]string{"--root", b.Root}, args...)...).CombinedOutput()
}

// Start runs the bundle detached as container id and stops and deletes it
// when the test ends.
func (b *Bundle) Start(t testing.TB, id string) (*Container, error) {
	t.Helper()
	// A detached container inherits runc's stdio: give it a file, not a
	// pipe that would never close.
	logf, err := os.CreateTemp(b.Dir, "run-*.log")
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command("runc", "--root", b.Root, "run", "-d", "--bundle", b.Dir, id)
	cmd.Stdout, cmd.Stderr = logf, logf
	err = cmd.Run()
	out, _ := os.ReadFile(logf.Name())
	t.Cleanup(func() {
		b.Runc("kill", id, "KILL")
		b.Runc("delete", "-f", id)
	})
	if err != nil {
		return nil, &runErr{strings.TrimSpace(string(out)), err}
	}
	c := &Container{ID: id, Bundle: b}
	st, err := os.ReadFile(filepath.Join(b.Root, id, "state.json"))
	if err != nil {
		return nil, err
	}
	var s struct {
		PID int `json:"init_process_pid"`
	}
	json.Unmarshal(st, &s)
	c.PID = s.PID
	return c, nil
}

type runErr struct {
	out string
	err error
}

func (e *runErr) Error() string { return e.err.Error() + ": " + e.out }

// MustStart is Start that fails the test on error.
func (b *Bundle) MustStart(t testing.TB, id string) *Container {
	t.Helper()
	c, err := b.Start(t, id)
	if err != nil {
		t.Fatalf("runc run %s: %v", id, err)
	}
	return c
}

// Exec runs a command inside the container.
func (c *Container) Exec(args ...string) ([]byte, error) {
	return c.Bundle.Runc(append([]string{"exec", c.ID}, args...)...)
}

// Stop kills and deletes the container, waiting for it to be gone.
func (c *Container) Stop(t testing.TB) {
	t.Helper()
	c.Bundle.Runc("kill", c.ID, "KILL")
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		out, _ := c.Bundle.Runc("state", c.ID)
		if strings.Contains(string(out), `"stopped"`) || strings.Contains(string(out), "does not exist") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if out, err := c.Bundle.Runc("delete", "-f", c.ID); err != nil {
		t.Errorf("runc delete %s: %v: %s", c.ID, err, out) // Errorf: Stop may run on another goroutine
	}
}
