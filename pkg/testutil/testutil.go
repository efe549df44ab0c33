// Package testutil gives circuit's root tests real things to work on:
// network namespaces, processes inside them, runc containers built from a
// busybox rootfs, the CNI plugins and the circuit binary. Everything a
// helper makes is removed in t.Cleanup.
package testutil

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// RequireRoot skips a test that needs root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (run the root tier with `make test` as root)")
	}
}

// InVM reports whether the test runs in the VM tier.
func InVM() bool { return os.Getenv("CIRCUIT_TEST_VM") != "" }

// RandName returns prefix plus a short random suffix, for kernel object and
// netns names that do not collide between parallel tests and packages.
func RandName(prefix string) string {
	b := make([]byte, 4)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// RepoRoot is the module root, found from this file's location.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

var (
	buildMu    sync.Mutex
	builtCNI   string
	builtBin   string
	builtAgent string
)

// CNIPath returns a directory holding the CNI plugins pinned in hack/cni/go.mod:
// $CIRCUIT_TEST_CNI_PATH (set by the Makefile and the VM tier), else a
// build into bin/cni of the repository.
func CNIPath(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("CIRCUIT_TEST_CNI_PATH"); p != "" {
		return p
	}
	buildMu.Lock()
	defer buildMu.Unlock()
	if builtCNI == "" {
		dir := filepath.Join(RepoRoot(), "bin", "cni")
		if _, err := os.Stat(filepath.Join(dir, "bridge")); err != nil {
			run(t, filepath.Join(RepoRoot(), "hack", "cni"), "go", "build", "-o", dir+"/", "tool")
		}
		builtCNI = dir
	}
	return builtCNI
}

// CircuitBin returns the circuit binary: $CIRCUIT_TEST_BIN (set by
// hack/test.sh), else a fresh static build in a temporary directory, so a
// test never replaces the bin/circuit a developer built.
func CircuitBin(t testing.TB) string { return binary(t, "CIRCUIT_TEST_BIN", &builtBin, ".", "circuit") }

// AgentBin returns the circuit-agent binary: $CIRCUIT_TEST_AGENT (set by
// hack/test.sh), else a fresh build as CircuitBin's.
func AgentBin(t testing.TB) string {
	return binary(t, "CIRCUIT_TEST_AGENT", &builtAgent, "./circuit-agent", "circuit-agent")
}

// binary is $env, else pkg built once per test process into *built.
func binary(t testing.TB, env string, built *string, pkg, name string) string {
	t.Helper()
	if p := os.Getenv(env); p != "" {
		return p
	}
	buildMu.Lock()
	defer buildMu.Unlock()
	if *built == "" {
		dir, err := os.MkdirTemp("", name+"-test-bin")
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(dir, name)
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Dir, cmd.Env = RepoRoot(), append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", name, err, b)
		}
		*built = out
	}
	return *built
}

// Busybox is the path of a static busybox.
func Busybox() string {
	if p := os.Getenv("CIRCUIT_TEST_BUSYBOX"); p != "" {
		return p
	}
	return "/bin/busybox"
}

func run(t testing.TB, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Run runs a command and fails the test on error; it returns the output.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	return run(t, "", name, args...)
}

// Reservations lists the addresses host-local holds for a network whose
// ipam dataDir is dataDir: one file per address, beside its lock and
// last_reserved_ip files.
func Reservations(dataDir, network string) []string {
	entries, _ := os.ReadDir(filepath.Join(dataDir, network))
	var ips []string
	for _, e := range entries {
		if n := e.Name(); n != "lock" && !strings.HasPrefix(n, "last_reserved_ip") {
			ips = append(ips, n)
		}
	}
	return ips
}

var builtPlugin string

// TestPlugin returns a directory holding circuit-test-plugin, the CNI
// plugin of internal/testplugin (slow or failing ADD and DEL on demand),
// built once per test process.
func TestPlugin(t testing.TB) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if builtPlugin == "" {
		dir, err := os.MkdirTemp("", "circuit-test-plugin")
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "circuit-test-plugin"), "./internal/testplugin")
		cmd.Dir, cmd.Env = RepoRoot(), append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build the test plugin: %v\n%s", err, b)
		}
		builtPlugin = dir
	}
	return builtPlugin
}
