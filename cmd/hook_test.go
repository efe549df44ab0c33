package cmd

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/circuit-cni/circuit/api"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func (h *harness) hookLog() string {
	h.t.Helper()
	b, err := os.ReadFile(filepath.Join(h.env["CIRCUIT_STATE"], "hook.log"))
	if err != nil && !os.IsNotExist(err) {
		h.t.Fatal(err)
	}
	return string(b)
}

func TestHookMode(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.must("network", "create", h.conf("sandbox", "bridge", "10.100.10.0/24"))
	h.must("network", "create", h.conf("shell", "bridge", "10.30.30.0/24"))
	h.env["CIRCUIT_NETWORK"] = "sandbox, shell"
	h.env["CNI_CONF"] = "conf.d/bridge.conf" // relative to the bundle, where runc runs hooks

	h.stdin = `{"ociVersion": "1.2.0", "id": "web-00", "status": "creating", "pid": 4668, "bundle": "/root/web-00"}`
	h.expect("", "--debug=false")
	h.stdin = `{"ociVersion": "1.2.0", "id": "web-00", "status": "stopped", "bundle": "/root/web-00"}`
	h.expect("")

	wd, _ := os.Getwd()
	want := []api.HookRequest{
		{ID: "web-00", Status: "creating", PID: 4668, Bundle: "/root/web-00", CNIConf: filepath.Join(wd, "conf.d/bridge.conf"), Networks: []string{"sandbox", "shell"}},
		{ID: "web-00", Status: "stopped", Bundle: "/root/web-00", CNIConf: filepath.Join(wd, "conf.d/bridge.conf"), Networks: []string{"sandbox", "shell"}},
	}
	if got := h.fake.Hooks(); !reflect.DeepEqual(got, want) {
		t.Errorf("hook requests:\n%+v\nwant:\n%+v", got, want)
	}

	log := h.hookLog()
	wantLog := `2016-10-12T18:45:27Z web-00 creating connected container web-00 to network sandbox as eth0 [10.100.10.2/24]
2016-10-12T18:45:27Z web-00 creating connected container web-00 to network shell as eth1 [10.30.30.2/24]
2016-10-12T18:45:27Z web-00 stopped disconnected container web-00 from network sandbox
2016-10-12T18:45:27Z web-00 stopped disconnected container web-00 from network shell
`
	if log != wantLog {
		t.Errorf("hook.log:\n%s\nwant:\n%s", log, wantLog)
	}
	if fi, err := os.Stat(filepath.Join(h.env["CIRCUIT_STATE"], "hook.log")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("hook.log mode: %v %v", fi.Mode(), err)
	}
}

func TestHookModeAnnotationWins(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.must("network", "create", h.conf("shell", "bridge", "10.30.30.0/24"))
	h.env["CNI_CONF"] = "/etc/cni/conf.d/bridge.conf"
	h.env["CIRCUIT_NETWORK"] = "sandbox"
	h.env["CIRCUIT_IFNAME"] = "net0"
	h.stdin = `{"id": "web-00", "status": "created", "pid": 19022, "bundle": "/b", "annotations": {"circuit.network": "shell", "other": "x"}}`
	h.expect("")
	want := api.HookRequest{ID: "web-00", Status: "created", PID: 19022, Bundle: "/b",
		Annotations: map[string]string{"circuit.network": "shell", "other": "x"}, Networks: []string{"shell"}, IfName: "net0"}
	if got := h.fake.Hooks(); len(got) != 1 || !reflect.DeepEqual(got[0], want) {
		t.Errorf("hook request: %+v, want %+v", got, want)
	}
	h.expect(`NAME                TYPE                VERSION             PEERS
shell               bridge              0.2.0               10.30.30.2 (19022)
`, "network", "list")
}

func TestHookModeCNIConf(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.env["CNI_CONF"] = h.conf("hooked", "bridge", "10.220.10.0/24")
	h.stdin = `{"id": "c1", "status": "creating", "pid": 10}`
	h.expect("")
	h.expect("hooked\n", "network", "list", "-q")
}

func TestHookModeErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, stdin, want string
	}{
		{"garbage", "garbage", "circuit: hook: stdin is not OCI state JSON: invalid character 'g' looking for beginning of value"},
		{"trailing", `{"id": "a", "status": "stopped"} {}`, "circuit: hook: stdin is not OCI state JSON: trailing data after the state object"},
		{"oversized", `{"id": "a", "status": "stopped", "bundle": "` + strings.Repeat("x", 1<<20) + `"}`, "circuit: hook: OCI state on stdin is larger than 1 MiB"},
		{"missing id", `{"status": "stopped"}`, "circuit: hook: invalid OCI state: missing id"},
		{"unknown status", `{"id": "a", "status": "paused", "pid": 1}`, `circuit: hook: invalid OCI state: unknown status "paused"`},
		{"no network", `{"id": "a", "status": "creating", "pid": 1}`, "circuit: hook: container a (creating): hook a: no network: set CNI_CONF or CIRCUIT_NETWORK in the hook's env, or the circuit.network annotation"},
		{"unknown network", `{"id": "a", "status": "creating", "pid": 1, "annotations": {"circuit.network": "nope"}}`, `circuit: hook: container a (creating): hook a: connect 1 to nope: network "nope": not found`},
	} {
		h := newHarness(t)
		h.stdin = tc.stdin
		r := h.run()
		if r.line() != tc.want || ExitCode(r.err) != 1 || r.stdout != "" || r.stderr != "" {
			t.Errorf("%s: %q (exit %d), want %q; stdout %q stderr %q", tc.name, r.line(), ExitCode(r.err), tc.want, r.stdout, r.stderr)
		}
		// Every error is in the hook log too, one line.
		log := h.hookLog()
		if strings.Count(log, "\n") != 1 || !strings.Contains(log, strings.TrimPrefix(tc.want, "circuit: ")) {
			t.Errorf("%s: hook.log:\n%s", tc.name, log)
		}
	}
}

func TestHookModeControllerFailure(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.factory = errors.New("permission denied: circuit must run as root")
	h.env["CIRCUIT_NETWORK"] = "sandbox"
	h.stdin = `{"id": "web-00", "status": "creating", "pid": 4668}`
	r := h.run()
	if r.line() != "circuit: hook: container web-00 (creating): permission denied: circuit must run as root" {
		t.Errorf("got %q", r.line())
	}
	if log := h.hookLog(); log != "2016-10-12T18:45:27Z web-00 creating hook: container web-00 (creating): permission denied: circuit must run as root\n" {
		t.Errorf("hook.log: %q", log)
	}
}

func TestNoCommandShowsHelp(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	for _, stdin := range []string{"", " \n"} {
		h.stdin = stdin
		if out := h.must(); !strings.Contains(out, "USAGE") {
			t.Errorf("stdin %q: no help:\n%s", stdin, out)
		}
	}
	// A terminal is never read, even when it would have data.
	h.terminal, h.stdin = true, "garbage"
	if out := h.must(); !strings.Contains(out, "USAGE") {
		t.Errorf("terminal: no help:\n%s", out)
	}
	if len(h.fake.Hooks()) != 0 || h.hookLog() != "" {
		t.Errorf("hook ran without OCI state")
	}
}

func TestHookConfig(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	delete(h.env, "CIRCUIT_STATE") // the default state dir is left out of the env
	conf := h.conf("bridge", "bridge", "10.100.10.0/24")
	want := `{
    "hooks": {
        "prestart": [
            {
                "path": "/usr/local/bin/circuit",
                "env": [
                    "CNI_CONF=` + conf + `",
                    "CNI_PATH=/path/to/cni/plugins:/other",
                    "CIRCUIT_HOOK_TIMEOUT=30",
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
                ],
                "timeout": 30
            }
        ],
        "poststop": [
            {
                "path": "/usr/local/bin/circuit",
                "env": [
                    "CNI_CONF=` + conf + `",
                    "CNI_PATH=/path/to/cni/plugins:/other",
                    "CIRCUIT_HOOK_TIMEOUT=30",
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
                ],
                "timeout": 30
            }
        ]
    }
}
`
	h.expect(want, "hook", "config", "--cni-conf", conf, "--cni-path", "/path/to/cni/plugins:/other")

	out := h.must("--state", "/srv/circuit", "hook", "config", "--network", "sandbox,shell", "--network", "lan", "--ifname", "eth1", "--create-runtime")
	var got struct{ Hooks specs.Hooks }
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	env := []string{"CIRCUIT_NETWORK=sandbox,shell,lan", "CIRCUIT_IFNAME=eth1", "CIRCUIT_STATE=/srv/circuit", "CIRCUIT_HOOK_TIMEOUT=30", "PATH=" + hookPATH}
	thirty := 30
	wantHooks := specs.Hooks{
		CreateRuntime: []specs.Hook{{Path: h.self, Env: env, Timeout: &thirty}},
		Poststop:      []specs.Hook{{Path: h.self, Env: env, Timeout: &thirty}},
	}
	if !reflect.DeepEqual(got.Hooks, wantHooks) {
		t.Errorf("hooks:\n%+v\nwant:\n%+v", got.Hooks, wantHooks)
	}

	for _, args := range [][]string{
		{"hook", "config", "--network", "a", "--cni-conf", conf},
		{"hook", "config", "--network", " , "},
		{"hook", "config", "--network", "a", "--timeout", "2"},
	} {
		if r := h.run(args...); ExitCode(r.err) != 2 {
			t.Errorf("%q: %v", args, r.err)
		}
	}
	if r := h.run("hook", "config", "--cni-conf", "/no/such.conf"); r.line() != "circuit: --cni-conf: stat /no/such.conf: no such file or directory" {
		t.Errorf("missing conf: %q", r.line())
	}
}

func TestHookInstall(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	bundles := []string{t.TempDir(), t.TempDir()}
	config := `{
	"ociVersion": "1.2.0",
	"process": {"args": ["sh"], "env": ["A=<b>"]},
	"annotations": {"x": "y"},
	"hooks": {
		"prestart": [{"path": "/usr/bin/other"}],
		"poststop": [{"path": "/usr/local/bin/circuit", "env": ["CIRCUIT_NETWORK=old"]}]
	},
	"linux": {}
}`
	for _, b := range bundles {
		if err := os.WriteFile(filepath.Join(b, "config.json"), []byte(config), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	h.expect("hooks installed in "+bundles[0]+"\nhooks installed in "+bundles[1]+"\n",
		"hook", "install", "--network", "sandbox", bundles[0], bundles[1])

	for _, b := range bundles {
		raw, err := os.ReadFile(filepath.Join(b, "config.json"))
		if err != nil {
			t.Fatal(err)
		}
		var c map[string]json.RawMessage
		if err := json.Unmarshal(raw, &c); err != nil {
			t.Fatal(err)
		}
		if len(c) != 5 || !strings.Contains(string(c["process"]), `"A=<b>"`) || !strings.Contains(string(c["annotations"]), `"x": "y"`) {
			t.Errorf("other keys changed:\n%s", raw)
		}
		var hooks specs.Hooks
		if err := json.Unmarshal(c["hooks"], &hooks); err != nil {
			t.Fatal(err)
		}
		env := []string{"CIRCUIT_NETWORK=sandbox", "CIRCUIT_STATE=" + h.env["CIRCUIT_STATE"], "CIRCUIT_HOOK_TIMEOUT=30", "PATH=" + hookPATH}
		thirty := 30
		want := specs.Hooks{
			Prestart: []specs.Hook{{Path: "/usr/bin/other"}, {Path: h.self, Env: env, Timeout: &thirty}},
			Poststop: []specs.Hook{{Path: h.self, Env: env, Timeout: &thirty}},
		}
		if !reflect.DeepEqual(hooks, want) {
			t.Errorf("hooks:\n%+v\nwant:\n%+v", hooks, want)
		}
	}

	missing := filepath.Join(t.TempDir(), "nope")
	if r := h.run("hook", "install", "--network", "sandbox", missing); !strings.Contains(r.line(), "no such file or directory") || ExitCode(r.err) != 1 {
		t.Errorf("missing bundle: %q", r.line())
	}
}

// hook.log is written only into a state dir this user owns, never through
// a symlink, and always 0600.
func TestHookLogNoSymlinkNoForeignDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("hook.log is written by root only")
	}
	t.Parallel()
	stateFor := func(h *harness) string { return h.env["CIRCUIT_STATE"] }
	bad := `{"ociVersion": "1.2.0", "id": "web-00", "status": "creating", "pid": 1}` // no network: fails, and logs

	// A symlink where hook.log goes is not followed.
	h := newHarness(t)
	target := filepath.Join(t.TempDir(), "elsewhere")
	os.WriteFile(target, []byte("not circuit's\n"), 0o644)
	if err := os.Symlink(target, filepath.Join(stateFor(h), "hook.log")); err != nil {
		t.Fatal(err)
	}
	h.stdin = bad
	h.run()
	if b, _ := os.ReadFile(target); string(b) != "not circuit's\n" {
		t.Errorf("hook.log was written through a symlink into %s:\n%s", target, b)
	}

	// A state dir another user owns gets nothing.
	h = newHarness(t)
	os.Chown(stateFor(h), 65534, 65534)
	h.stdin = bad
	h.run()
	if _, err := os.Lstat(filepath.Join(stateFor(h), "hook.log")); err == nil {
		t.Error("hook.log was written into a state dir another user owns")
	}

	// An existing hook.log too open is narrowed to 0600.
	h = newHarness(t)
	os.WriteFile(filepath.Join(stateFor(h), "hook.log"), nil, 0o644)
	h.stdin = bad
	h.run()
	if fi, err := os.Stat(filepath.Join(stateFor(h), "hook.log")); err != nil || fi.Mode().Perm() != 0o600 || fi.Size() == 0 {
		t.Errorf("hook.log: %v %v", fi, err)
	}
}

// What a container asks the plugins for comes from its annotations, else
// the hook entry's environment; a bad one refuses the container in one line.
func TestHookModeSettings(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.must("network", "create", h.capsConf("pub", "10.100.20.0/24"))
	h.env["CIRCUIT_NETWORK"] = "pub"
	h.env["CIRCUIT_PUBLISH"] = "9999:99" // the annotation wins
	h.env["CIRCUIT_ALIAS"] = "from-env"
	h.stdin = `{"ociVersion": "1.2.0", "id": "web-00", "status": "creating", "pid": 4668, "annotations": {
		"circuit.publish": "8080:80, [fd00:20::1]:9000-9001:90-91/udp", "circuit.ip": "10.100.20.9", "circuit.mac": "02:42:0a:64:14:09"}}`
	h.expect("")
	got := h.fake.Hooks()[0].Settings
	want := api.Settings{
		Publish: []api.PortMapping{{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"},
			{HostIP: "fd00:20::1", HostPort: 9000, ContainerPort: 90, Protocol: "udp"}, {HostIP: "fd00:20::1", HostPort: 9001, ContainerPort: 91, Protocol: "udp"}},
		RequestedIPs: []string{"10.100.20.9"},
		RequestedMAC: "02:42:0a:64:14:09",
		Aliases:      []string{"from-env"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("settings:\n%+v\nwant:\n%+v", got, want)
	}
	peer := h.must("network", "inspect", "pub")
	for _, w := range []string{`"hostPort": 9001`, `"requestedIPs": [`, `"requestedMAC": "02:42:0a:64:14:09"`, `"aliases": [`} {
		if !strings.Contains(peer, w) {
			t.Errorf("network inspect lacks %s:\n%s", w, peer)
		}
	}

	for _, tc := range []struct{ annotations, want string }{
		{`{"circuit.publish": "0:80"}`, `publish "0:80": host port: "0" is out of 1-65535`},
		{`{"circuit.publish": "[::1]:8080:80"}`, "cannot DNAT IPv6 loopback"},
		{`{"circuit.mac": "02:42:0a:64:14:0a,02:42:0a:64:14:0b"}`, "one MAC"},
		{`{"circuit.mac": "01:00:5e:00:00:01"}`, "multicast"},
		{`{"circuit.ip": "10.99.0.1"}`, "outside network pub's ranges"},
		{`{"circuit.publish": "8080:8080"}`, "already published by container web-00"},
	} {
		before := h.must("network", "inspect", "pub")
		h.stdin = `{"ociVersion": "1.2.0", "id": "web-01", "status": "creating", "pid": 4669, "annotations": ` + tc.annotations + `}`
		r := h.run()
		if r.err == nil || !strings.Contains(r.line(), tc.want) || strings.Count(r.line(), "\n") != 0 {
			t.Errorf("%s: %q (%v), want one line with %q", tc.annotations, r.line(), r.err, tc.want)
		}
		if after := h.must("network", "inspect", "pub"); after != before {
			t.Errorf("%s: a refused hook changed the network:\n%s", tc.annotations, after)
		}
	}

	// hook config writes the settings into the hook's environment, and
	// refuses the malformed ones there rather than at every start.
	out := h.must("hook", "config", "--network", "pub", "--publish", "8080:80", "-p", "53:53/udp", "--ip", "10.100.20.7", "--mac", "02:42:0a:64:14:07", "--alias", "api")
	for _, w := range []string{`"CIRCUIT_PUBLISH=8080:80,53:53/udp"`, `"CIRCUIT_IP=10.100.20.7"`, `"CIRCUIT_MAC=02:42:0a:64:14:07"`, `"CIRCUIT_ALIAS=api"`} {
		if !strings.Contains(out, w) {
			t.Errorf("hook config lacks %s:\n%s", w, out)
		}
	}
	for _, args := range [][]string{{"--publish", "70000:80"}, {"--ip", "not-an-ip"}, {"--mac", "01:00:5e:00:00:01"}, {"--alias", "no spaces"}, {"--publish", ""}} {
		if r := h.run(append([]string{"hook", "config", "--network", "pub"}, args...)...); ExitCode(r.err) != 2 || r.stdout != "" {
			t.Errorf("hook config %q: exit %d, %q", args, ExitCode(r.err), r.line())
		}
	}
}
