// Package archtest holds the tests that keep circuit's layering: package
// api is a leaf, the kernel libraries under pkg/ know nothing of circuit's
// app, the datastores know only api.
package archtest

import (
	"bytes"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/circuit-cni/circuit/pkg/testutil"
)

const module = "github.com/circuit-cni/circuit"

// allowed lists, per directory prefix, which of circuit's packages its
// product code may import (besides its own subtree).
var allowed = []struct {
	dir   string
	may   []string
	tests []string // test files may also import these
}{
	{"api", nil, nil},
	{"pkg", []string{"api"}, []string{"internal/ruletable"}},
	{"ds/dstest", []string{"api", "ds", "internal/ruletable"}, nil},
	{"ds", []string{"api"}, []string{"internal/ruletable"}},
	{"controller/contract", []string{"api", "controller", "internal/ruletable"}, nil},
	{"controller/fake", []string{"api", "controller", "pkg/cni", "pkg/lb", "pkg/qos"}, nil},
	{"controller/local", []string{"api", "agentapi", "controller", "ds", "internal/filelock", "pkg"}, []string{"internal/ruletable"}},
	{"internal/filelock", []string{"api"}, nil},
	{"agentapi", []string{"api"}, nil},
	{"controller", []string{"api"}, nil},
	{"agentapi", []string{"api"}, nil},
	// The node agent: the cluster's state in etcd, the node's replica in
	// its bolt store, configurations through pkg/cni, the node's kernel
	// through pkg/overlay, pkg/masq and pkg/lb (under circuit's lb.lock,
	// internal/filelock); never the controllers or the CLI (circuit talks
	// to it through agentapi).
	{"agent", []string{"api", "agentapi", "ds", "internal/filelock", "pkg/cni", "pkg/overlay", "pkg/masq", "pkg/lb"}, nil},
	{"circuit-agent", []string{"agent", "api"}, nil},
}

// etcdClients are the only directories whose code may import etcd: the
// circuit binary must not link it (see TestBinaryLinksNoEtcdOrHTTP). The
// integration tests (test files only) compact etcd under an agent.
var etcdClients = []string{"ds/etcd", "agent", "integration"}

// agentUsers are the only directories whose code may import the agent:
// circuit reaches it through agentapi's socket, never by linking it.
var agentUsers = []string{"circuit-agent", "agent"}

func root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// needSource skips where the source is not (the VM tier runs test
// binaries only).
func needSource(t *testing.T) {
	if _, err := os.Stat(filepath.Join(root(), "go.mod")); err != nil {
		t.Skip("needs the source tree (not in the VM tier)")
	}
}

func TestLayering(t *testing.T) {
	needSource(t)
	base := root()
	checked := 0
	err := filepath.WalkDir(base, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(base, path)
		if d.IsDir() {
			if strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || rel == "hack" || rel == "bin" {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		dir := filepath.ToSlash(filepath.Dir(rel))
		rule := -1
		for i, a := range allowed {
			if dir == a.dir || strings.HasPrefix(dir, a.dir+"/") {
				rule = i
				break
			}
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if strings.HasPrefix(p, "go.etcd.io/etcd/") && !ok(dir, etcdClients) {
				t.Errorf("%s imports %s: only %v may use etcd", rel, p, etcdClients)
			}
			if (p == module+"/agent" || strings.HasPrefix(p, module+"/agent/")) && !ok(dir, agentUsers) {
				t.Errorf("%s imports %s: only %v may link the agent", rel, p, agentUsers)
			}
		}
		if rule < 0 {
			return nil
		}
		a := allowed[rule]
		checked++
		test := strings.HasSuffix(path, "_test.go")
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if p != module && !strings.HasPrefix(p, module+"/") {
				continue
			}
			own := strings.TrimPrefix(strings.TrimPrefix(p, module), "/")
			if own == a.dir || strings.HasPrefix(own, a.dir+"/") || ok(own, a.may) || (test && ok(own, a.tests)) {
				continue
			}
			t.Errorf("%s imports %s: %s/ may import only %v of circuit's", rel, own, a.dir, a.may)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 50 {
		t.Fatalf("checked only %d files: is the walk rooted at the module (%s)?", checked, base)
	}
}

func ok(pkg string, list []string) bool {
	for _, l := range list {
		if pkg == l || strings.HasPrefix(pkg, l+"/") {
			return true
		}
	}
	return false
}

// The product module lists only what the binary and its tests need: the
// benchmark's plotting libraries live in hack/bench's own module.
func TestNoBenchmarkDependencies(t *testing.T) {
	needSource(t)
	b, err := os.ReadFile(filepath.Join(root(), "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	for _, dep := range []string{"gonum.org/", "go-fonts", "go-latex", "go-pdf"} {
		if strings.Contains(string(b), dep) {
			t.Errorf("go.mod requires %s: benchmark-only dependencies belong in hack/bench/go.mod", dep)
		}
	}
}

// The circuit binary links neither etcd nor the Prometheus client it
// brings: only ds/etcd (and circuit-agent) use them. A package that
// imports ds/etcd by the way would add megabytes to every hook. Nor does it
// link net/http, TLS or OpenTelemetry (which libcni 1.3.1 brings): their
// package init alone costs every container start milliseconds
// (docs/benchmarks.md, section 8).
func TestBinaryLinksNoEtcdOrHTTP(t *testing.T) {
	if testutil.InVM() {
		t.Skip("the VM has no go tool; the unit tier runs this")
	}
	// One line per dependency: its path, then its imports.
	cmd := exec.Command(goTool(t), "list", "-deps", "-f", `{{.ImportPath}} {{join .Imports " "}}`, ".")
	cmd.Dir = root()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps .: %v\n%s", err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 50 {
		t.Fatalf("go list -deps . listed only %d packages: %q", len(lines), lines)
	}
	forbidden := func(p string) bool {
		return strings.HasPrefix(p, "go.etcd.io/etcd/") || strings.HasPrefix(p, "github.com/prometheus/") ||
			strings.HasPrefix(p, "go.opentelemetry.io/") ||
			p == "net/http" || strings.HasPrefix(p, "net/http/") || p == "crypto/tls" || p == "crypto/x509"
	}
	imports := map[string][]string{}
	for _, line := range lines {
		fields := strings.Fields(line)
		imports[fields[0]] = fields[1:]
	}
	// go list -deps prints the package itself last. Walk from it to name
	// the chain of imports that brings each forbidden package in.
	top := strings.Fields(lines[len(lines)-1])[0]
	via := map[string]string{top: ""}
	queue := []string{top}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, imp := range imports[p] {
			if _, seen := via[imp]; seen {
				continue
			}
			via[imp] = p
			if forbidden(imp) {
				chain := []string{imp}
				for q := p; q != ""; q = via[q] {
					chain = append([]string{q}, chain...)
				}
				t.Errorf("the circuit binary links %s: %s", imp, strings.Join(chain, " -> "))
				continue // its own imports would only repeat the chain
			}
			queue = append(queue, imp)
		}
	}
}

// goTool finds the go command: the one that built this test if it is still
// there, else the first on PATH.
func goTool(t *testing.T) string {
	name := "go"
	if goroot := runtime.GOROOT(); goroot != "" {
		if p := filepath.Join(goroot, "bin", name); fileExists(p) {
			return p
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("no go tool to list the binary's dependencies: %v", err)
	}
	return p
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
