package ocistate

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

const self = "/usr/local/bin/circuit"

func testSet(createRuntime bool, env ...string) HookSet {
	if env == nil {
		env = []string{"CIRCUIT_NETWORK=sandbox", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	}
	h := specs.Hook{Path: self, Env: env}
	return HookSet{Setup: h, Teardown: h, CreateRuntime: createRuntime}
}

const runcConfig = `{
	"ociVersion": "1.2.0",
	"process": {
		"terminal": true,
		"args": ["sh", "-c", "echo a<b && true"]
	},
	"root": {"path": "rootfs", "readonly": true},
	"hooks": {
		"prestart": [{"path": "/usr/bin/other-hook", "args": ["other-hook", "x"], "timeout": 5}],
		"poststart": [{"path": "/usr/bin/notify"}]
	},
	"linux": {"namespaces": [{"type": "network"}]}
}`

func hooksOf(t *testing.T, config []byte) map[string][]specs.Hook {
	t.Helper()
	var c struct {
		Hooks map[string][]specs.Hook `json:"hooks"`
	}
	if err := json.Unmarshal(config, &c); err != nil {
		t.Fatalf("result is not JSON: %v\n%s", err, config)
	}
	return c.Hooks
}

func TestMergeHooksKeepsEverythingElse(t *testing.T) {
	out, err := MergeHooks([]byte(runcConfig), testSet(false))
	if err != nil {
		t.Fatal(err)
	}
	s := string(out)
	// Key order and untouched values survive; HTML characters stay readable.
	for _, want := range []string{
		"{\n\t\"ociVersion\": \"1.2.0\",\n\t\"process\": {",
		`"echo a<b && true"`,
		`"readonly": true`,
		`"linux": {`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("lost %q:\n%s", want, s)
		}
	}
	if strings.Index(s, `"root"`) > strings.Index(s, `"hooks"`) || strings.Index(s, `"hooks"`) > strings.Index(s, `"linux"`) {
		t.Errorf("keys were reordered:\n%s", s)
	}
	h := hooksOf(t, out)
	if len(h["prestart"]) != 2 || h["prestart"][0].Path != "/usr/bin/other-hook" || h["prestart"][1].Path != self {
		t.Errorf("prestart: %+v", h["prestart"])
	}
	if h["prestart"][0].Timeout == nil || *h["prestart"][0].Timeout != 5 || len(h["prestart"][0].Args) != 2 {
		t.Errorf("other hook changed: %+v", h["prestart"][0])
	}
	if len(h["poststart"]) != 1 || len(h["poststop"]) != 1 || h["poststop"][0].Path != self {
		t.Errorf("hooks: %+v", h)
	}
	if !strings.HasSuffix(s, "}\n") {
		t.Errorf("no final newline")
	}
}

func TestMergeHooksIdempotentAndSwitchKind(t *testing.T) {
	once, err := MergeHooks([]byte(runcConfig), testSet(false))
	if err != nil {
		t.Fatal(err)
	}
	twice, err := MergeHooks(once, testSet(false))
	if err != nil {
		t.Fatal(err)
	}
	if string(once) != string(twice) {
		t.Fatalf("second merge changed the file:\n%s\n---\n%s", once, twice)
	}

	// New settings replace our entry in place.
	changed, err := MergeHooks(once, testSet(false, "CIRCUIT_NETWORK=shell"))
	if err != nil {
		t.Fatal(err)
	}
	h := hooksOf(t, changed)
	if len(h["prestart"]) != 2 || h["prestart"][1].Env[0] != "CIRCUIT_NETWORK=shell" || len(h["poststop"]) != 1 {
		t.Fatalf("update: %+v", h)
	}

	// Switching to createRuntime leaves no stale prestart entry of ours.
	switched, err := MergeHooks(once, testSet(true))
	if err != nil {
		t.Fatal(err)
	}
	h = hooksOf(t, switched)
	if len(h["prestart"]) != 1 || h["prestart"][0].Path != "/usr/bin/other-hook" {
		t.Errorf("prestart: %+v", h["prestart"])
	}
	if len(h["createRuntime"]) != 1 || h["createRuntime"][0].Path != self || len(h["poststop"]) != 1 {
		t.Errorf("hooks: %+v", h)
	}
}

func TestMergeHooksNoHooksAndSpaces(t *testing.T) {
	in := "{\n    \"ociVersion\": \"1.0.0\",\n    \"hooks\": null\n}"
	out, err := MergeHooks([]byte(in), testSet(true))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "\n    \"hooks\": {\n        \"createRuntime\": [") {
		t.Errorf("indent not kept:\n%s", out)
	}
	// Removing our only entries of a kind drops the kind.
	out, err = MergeHooks(out, testSet(false))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "createRuntime") {
		t.Errorf("stale createRuntime:\n%s", out)
	}

	out, err = MergeHooks([]byte(`{"ociVersion":"1.0.0"}`), testSet(false))
	if err != nil {
		t.Fatal(err)
	}
	want := "{\n\t\"ociVersion\": \"1.0.0\",\n\t\"hooks\": {\n\t\t\"prestart\": [\n\t\t\t{\n\t\t\t\t\"path\": \"/usr/local/bin/circuit\","
	if !strings.HasPrefix(string(out), want) {
		t.Errorf("got:\n%s", out)
	}
}

func TestMergeHooksErrors(t *testing.T) {
	for _, in := range []string{``, `[]`, `{"hooks": []}`, `{"hooks": {"prestart": {}}}`, `{} x`, `{"a":`} {
		if _, err := MergeHooks([]byte(in), testSet(false)); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
	bad := testSet(false)
	bad.Teardown.Path = "/other"
	if _, err := MergeHooks([]byte(`{}`), bad); err == nil {
		t.Errorf("different paths: no error")
	}
}

// A config.json that is a symlink is not followed: circuit runs as root,
// and the link could point at any file.
func TestInstallHooksRefusesSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(t.TempDir(), "elsewhere.json")
	if err := os.WriteFile(target, []byte(runcConfig), 0o640); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "config.json")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	err := InstallHooks(link, testSet(false))
	if err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Errorf("install into a symlinked config.json: %v, want a refusal", err)
	}
	if b, _ := os.ReadFile(target); string(b) != runcConfig {
		t.Errorf("the link's target was changed:\n%s", b)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the link was replaced: %v %v", fi, err)
	}
}

func TestInstallHooksFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.json")
	if err := os.WriteFile(path, []byte(runcConfig), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := InstallHooks(path, testSet(false)); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode() != 0o640 {
		t.Errorf("mode %v, want 0640", fi.Mode())
	}
	b, _ := os.ReadFile(path)
	if h := hooksOf(t, b); len(h["prestart"]) != 2 {
		t.Errorf("hooks: %+v", h)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("temp file left behind: %v", entries)
	}

	if err := InstallHooks(filepath.Join(dir, "missing.json"), testSet(false)); !os.IsNotExist(err) {
		t.Errorf("missing file: %v", err)
	}
	if err := os.WriteFile(path, []byte("not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := InstallHooks(path, testSet(false)); err == nil || !strings.Contains(err.Error(), "not a JSON object") {
		t.Errorf("bad file: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "not json" {
		t.Errorf("bad file was changed: %q", b)
	}
}
