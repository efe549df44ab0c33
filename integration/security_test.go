package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/ds/bolt"
	"github.com/circuit-cni/circuit/pkg/testutil"
)

// Security: who may run circuit, the modes of what it keeps, names that
// could become paths, and traffic control circuit did not install.

// secOneLine checks that a command failed with one "circuit: " line on
// stderr containing every one of want.
func secOneLine(t *testing.T, what string, err error, stderr string, want ...string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s succeeded", what)
		return
	}
	lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
	t.Logf("%s: %s", what, lines[0])
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "circuit: ") {
		t.Errorf("%s: stderr is not one error line:\n%s", what, stderr)
		return
	}
	for _, w := range want {
		if !strings.Contains(lines[0], w) {
			t.Errorf("%s: error %q does not mention %q", what, lines[0], w)
		}
	}
}

// secTree lists every path under dir with its mode and size, to show that
// nothing was created, removed or changed.
func secTree(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		size := fi.Size()
		if fi.IsDir() {
			size = 0
		}
		fmt.Fprintf(&b, "%s %v %d\n", path, fi.Mode(), size)
		return nil
	})
	return b.String()
}

func secMode(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// secNobody runs circuit as uid/gid 65534 with the given state dir.
func secNobody(t *testing.T, bin, state, stdin string, args ...string) (string, string, error) {
	cmd := exec.Command(bin, append([]string{"--state", state}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

func TestSecurityNonRootRefused(t *testing.T) {
	c := newCLI(t)
	// A state dir nobody could read, were its modes not repaired by root:
	// the refusal must come from the privilege check, not from EACCES.
	conf := c.conf("shared", "10.220.44.0/24")
	c.must("network", "create", conf)
	pub := t.TempDir()
	for _, d := range []string{filepath.Dir(c.state), c.state, pub, filepath.Dir(conf)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(conf, 0o644)
	os.Chmod(filepath.Join(c.state, "circuit.db"), 0o644)
	// The binary where nobody can run it.
	bin := filepath.Join(pub, "circuit")
	b, err := os.ReadFile(c.bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, stderr, err := secNobody(t, bin, c.state, "", "version"); err != nil {
		t.Fatalf("circuit version as nobody: %v\n%s%s", err, out, stderr)
	}
	before := secTree(t, c.state)
	fresh := filepath.Join(pub, "fresh-state")
	if err := os.Chmod(pub, 0o777); err != nil {
		t.Fatal(err)
	}
	hookState := fmt.Sprintf(`{"ociVersion": "1.0.2", "id": "nobody-ctr", "status": "creating", "pid": %d, "bundle": "/"}`, os.Getpid())
	for _, tc := range []struct {
		name, stdin string
		args        []string
	}{
		{"list", "", []string{"network", "list"}},
		{"inspect", "", []string{"network", "inspect", "shared"}},
		{"create", "", []string{"network", "create", conf}},
		{"connect", "", []string{"network", "connect", strconv.Itoa(os.Getpid()), "shared"}},
		{"qos", "", []string{"network", "qos", "set", "--rate", "1000", "shared"}},
		{"gc", "", []string{"gc"}},
		{"restore", "", []string{"restore"}},
		{"hook", hookState, []string{"--cni-path", c.cniDir}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, state := range []string{c.state, fresh} {
				out, stderr, err := secNobody(t, bin, state, tc.stdin, tc.args...)
				what := fmt.Sprintf("circuit --state %s %s as nobody", state, strings.Join(tc.args, " "))
				secOneLine(t, what, err, stderr, "root", "CAP_NET_ADMIN")
				if out != "" {
					t.Errorf("%s printed %q", what, out)
				}
			}
			// Nothing may be made on behalf of a refused caller: a state dir
			// it owned would let it swap the datastore root trusts later.
			if fi, err := os.Stat(fresh); err == nil {
				t.Errorf("refused as nobody, circuit (%s) created the state dir %s (owner uid %d): %s",
					tc.name, fresh, fi.Sys().(*syscall.Stat_t).Uid, strings.TrimSpace(secTree(t, fresh)))
				os.RemoveAll(fresh)
			}
		})
	}
	if after := secTree(t, c.state); after != before {
		t.Errorf("a refused non-root circuit changed the state dir:\n%s\n%s", before, after)
	}
}

func TestSecurityStateModes(t *testing.T) {
	c := newCLI(t)
	c.state = filepath.Join(c.state, "new")
	if err := os.Chmod(filepath.Dir(c.state), 0o755); err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(c.state, "circuit.db")
	c.must("network", "list")
	if m := secMode(t, c.state); m != 0o700 {
		t.Errorf("new state dir has mode %v, want 0700", m)
	}
	// A read does not create the datastore; the first write does.
	if _, err := os.Stat(db); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("network list on a new state dir made circuit.db (%v)", err)
	}
	c.must("network", "create", c.conf("modes", "10.220.45.0/24"))
	if m := secMode(t, db); m != 0o600 {
		t.Errorf("new circuit.db has mode %v, want 0600", m)
	}
	// What a connect adds (pins, libcni's cache) stays root's.
	s := testutil.NewSleeper(t)
	c.must("network", "connect", strconv.Itoa(s.PID), "modes")
	filepath.WalkDir(c.state, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if fi, err := os.Lstat(path); err == nil && fi.Mode().Perm()&0o022 != 0 {
			t.Errorf("%s is writable by others: %v", path, fi.Mode())
		}
		return nil
	})

	for _, modes := range [][2]fs.FileMode{{0o755, 0o644}, {0o777, 0o666}, {0o750, 0o640}} {
		os.Chmod(c.state, modes[0])
		os.Chmod(db, modes[1])
		c.must("network", "list")
		if m := secMode(t, c.state); m != 0o700 {
			t.Errorf("state dir chmod'ed %v is %v after a command, want 0700", modes[0], m)
		}
		if m := secMode(t, db); m != 0o600 {
			t.Errorf("circuit.db chmod'ed %v is %v after a command, want 0600", modes[1], m)
		}
	}
	c.must("network", "disconnect", strconv.Itoa(s.PID), "modes")
}

func TestSecurityPathNamesRefused(t *testing.T) {
	c := newCLI(t)
	root := filepath.Dir(c.state) // holds this test's state, ipam and conf dirs
	confs := filepath.Join(root, "confs")
	if err := os.MkdirAll(confs, 0o700); err != nil {
		t.Fatal(err)
	}
	write := func(name, body string) string {
		path := filepath.Join(confs, name)
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	conf := func(name, typ string) string {
		return fmt.Sprintf(`{"cniVersion": "0.4.0", "name": %q, "type": %q, "bridge": %q,
  "ipam": {"type": "host-local", "subnet": "10.220.46.0/24", "dataDir": %q}}`, name, typ, c.bridge, c.ipam)
	}
	evil := write("evil.conf", conf("../evil", "bridge"))
	slash := write("slash.conf", conf("a/b", "bridge"))
	shType := write("sh.conf", conf("typed", "../../bin/sh"))
	shList := write("sh.conflist", fmt.Sprintf(`{"cniVersion": "0.4.0", "name": "listed", "plugins": [
  {"type": "bridge", "bridge": %q, "ipam": {"type": "host-local", "subnet": "10.220.46.0/24", "dataDir": %q}},
  {"type": "../../bin/sh"}]}`, c.bridge, c.ipam))
	dirConf := filepath.Join(confs, "a-directory.conf")
	if err := os.Mkdir(dirConf, 0o700); err != nil {
		t.Fatal(err)
	}
	c.must("network", "create", c.conf("safe", "10.220.47.0/24"))
	s := testutil.NewSleeper(t)
	pid := strconv.Itoa(s.PID)
	// The outcome of a refused command: the whole tree around the state dir
	// and /var/lib/cni, where a host-local dataDir escape would land.
	snapshot := func() string { return secTree(t, root) + secTree(t, "/var/lib/cni") }
	before := snapshot()

	for _, tc := range []struct {
		args []string
		want []string // words the error must have
	}{
		{[]string{"network", "create", evil}, []string{`"../evil"`}},
		{[]string{"network", "create", slash}, []string{`"a/b"`}},
		{[]string{"network", "create", shType}, []string{`"../../bin/sh"`, "not a path"}},
		{[]string{"network", "create", shList}, []string{`"../../bin/sh"`, "not a path"}},
		{[]string{"network", "create", dirConf}, []string{dirConf, "directory"}},
		{[]string{"network", "connect", "--ifname", "../x", pid, "safe"}, []string{`"../x"`}},
		{[]string{"network", "connect", "--ifname", "a/b", pid, "safe"}, []string{`"a/b"`}},
		{[]string{"network", "connect", pid, "../evil"}, []string{"../evil"}},
		{[]string{"network", "inspect", "../evil"}, []string{"../evil"}},
		{[]string{"network", "delete", "../evil"}, []string{"../evil"}},
		{[]string{"network", "qos", "set", "--rate", "1000", "../evil"}, []string{"../evil"}},
	} {
		_, stderr, err := c.run("", tc.args...)
		secOneLine(t, "circuit "+strings.Join(tc.args, " "), err, stderr, tc.want...)
		if after := snapshot(); after != before {
			t.Errorf("circuit %s changed files:\n%s\n---\n%s", strings.Join(tc.args, " "), before, after)
			before = after
		}
	}
	if l := relLinks(t, s.PID); len(l) != 0 {
		t.Errorf("refused connects left %v in the container", l)
	}
	if out := c.must("network", "list", "-q"); out != "safe\n" {
		t.Errorf("networks after refused commands: %q", out)
	}

	// A load-balancer service named like a path.
	_, stderr, err := c.run("", "lb", "create", "../x", "10.220.40.1:80")
	secOneLine(t, "circuit lb create ../x", err, stderr, `"../x"`)
	if after := snapshot(); after != before {
		t.Errorf("lb create ../x changed files:\n%s\n---\n%s", before, after)
	}

	// A hook whose CNI_CONF is a directory: runc's start fails, nothing is
	// made, hook.log says why.
	st := fmt.Sprintf(`{"ociVersion": "1.0.2", "id": "dir-conf", "status": "creating", "pid": %d, "bundle": %q}`, s.PID, confs)
	cmd := exec.Command(c.bin, "--state", c.state, "--cni-path", c.cniDir)
	cmd.Env = append(os.Environ(), "CNI_CONF="+dirConf)
	cmd.Stdin = strings.NewReader(st)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	err = cmd.Run()
	secOneLine(t, "hook with CNI_CONF a directory", err, errb.String(), dirConf, "directory")
	log, _ := os.ReadFile(filepath.Join(c.state, "hook.log"))
	if !strings.Contains(string(log), "dir-conf") || !strings.Contains(string(log), "directory") {
		t.Errorf("hook.log does not record the refused hook:\n%s", log)
	}
	// hook.log is the one thing a refused hook writes.
	after := snapshot()
	withoutLog := func(s string) string {
		var keep []string
		for _, l := range strings.Split(s, "\n") {
			if !strings.HasPrefix(l, filepath.Join(c.state, "hook.log")+" ") {
				keep = append(keep, l)
			}
		}
		return strings.Join(keep, "\n")
	}
	if withoutLog(after) != withoutLog(before) {
		t.Errorf("the refused hook changed files:\n%s\n---\n%s", before, after)
	}
	if l := relLinks(t, s.PID); len(l) != 0 {
		t.Errorf("the refused hook left %v in the container", l)
	}
	if out := c.must("network", "list", "-q"); out != "safe\n" {
		t.Errorf("networks after the refused hook: %q", out)
	}
}

// A root qdisc circuit did not install is someone else's: qos reset, gc and
// restore leave it, and qos set refuses to replace it.
func TestSecurityForeignQdiscKept(t *testing.T) {
	c := newCLI(t)
	c.must("network", "create", c.conf("foreign", "10.220.48.0/24"))
	s := testutil.NewSleeper(t)
	c.must("network", "connect", strconv.Itoa(s.PID), "foreign")
	c.must("network", "qos", "set", "--rate", "5000", "foreign")
	if q := relQdiscs(t, s.PID); !strings.Contains(q, "qdisc htb c1c0: root") {
		t.Fatalf("qos set did not shape the container:\n%s", q)
	}
	testutil.Run(t, "nsenter", "-t", strconv.Itoa(s.PID), "-n", "tc", "qdisc", "replace", "dev", "eth0", "root", "handle", "1:", "htb")
	foreign := func(after string) {
		t.Helper()
		q := relQdiscs(t, s.PID)
		if !strings.Contains(q, "qdisc htb 1: root") {
			t.Fatalf("the foreign qdisc is gone after %s:\n%s", after, q)
		}
		if strings.Contains(q, "c1c0:") {
			t.Errorf("circuit's qdisc is back after %s:\n%s", after, q)
		}
	}
	foreign("tc qdisc replace")

	// The stored policy cannot be applied over it: restore says so.
	_, stderr, err := c.run("", "restore")
	secOneLine(t, "restore over a foreign qdisc", err, stderr, "did not install")
	foreign("restore")
	if out := c.must("gc"); out != "gc: nothing to do\n" {
		t.Errorf("gc printed:\n%s", out)
	}
	foreign("gc")
	if out := c.must("network", "qos", "reset", "foreign"); out != "qos reset for foreign\n" {
		t.Errorf("qos reset printed %q", out)
	}
	foreign("qos reset")
	if out := c.must("restore"); out != "restore: nothing to do\n" {
		t.Errorf("restore without a policy printed:\n%s", out)
	}
	foreign("restore without a policy")
	_, stderr, err = c.run("", "network", "qos", "set", "--rate", "5000", "foreign")
	secOneLine(t, "qos set over a foreign qdisc", err, stderr, "did not install")
	foreign("a refused qos set")
	if n := relInspect(c, "foreign"); n.QoS != nil || slices.ContainsFunc(n.Peers, func(p api.Peer) bool { return p.QoS != nil }) {
		t.Errorf("a refused qos set was stored: %+v", n)
	}
	c.must("network", "disconnect", strconv.Itoa(s.PID), "foreign")
	c.assertReleased("foreign", fmt.Sprintf("pid-%d-", s.PID))
}

// A configuration path that is a FIFO must not hang circuit: a hook that
// never returns hangs runc's start, and circuit swallows SIGINT and
// SIGTERM once its context is cancelled.
func TestSecurityConfFIFONoHang(t *testing.T) {
	c := newCLI(t)
	fifo := filepath.Join(t.TempDir(), "conf.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	s := testutil.NewSleeper(t)
	st := fmt.Sprintf(`{"ociVersion": "1.0.2", "id": "fifo-conf", "status": "creating", "pid": %d, "bundle": "/"}`, s.PID)
	for _, tc := range []struct {
		name, stdin string
		env         []string
		args        []string
	}{
		{"create", "", nil, []string{"network", "create", fifo}},
		{"hook", st, []string{"CNI_CONF=" + fifo}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(c.bin, append([]string{"--state", c.state, "--cni-path", c.cniDir}, tc.args...)...)
			cmd.Env = append(os.Environ(), tc.env...)
			cmd.Stdin = strings.NewReader(tc.stdin)
			var errb bytes.Buffer
			cmd.Stderr = &errb
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			// Hung is an event, not a time: a thread of circuit sleeping
			// in the kernel on the FIFO. A loaded machine only delays the
			// exit; the minute is a backstop for a kernel without wchan.
			backstop := time.After(time.Minute)
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for hung := ""; ; {
				select {
				case err := <-done:
					secOneLine(t, tc.name+" with a FIFO for its configuration", err, errb.String(), fifo)
				case <-tick.C:
					if hung = fifoWait(cmd.Process.Pid); hung == "" {
						continue
					}
				case <-backstop:
					hung = "no exit within a minute"
				}
				if hung != "" {
					cmd.Process.Kill()
					<-done
					t.Errorf("%s with a FIFO for its configuration hung (%s)", tc.name, hung)
				}
				break
			}
			if out := c.must("network", "list", "-q"); out != "" {
				t.Errorf("networks: %q", out)
			}
		})
	}
}

// gc and restore act as root on the netns path a record names: unmount,
// delete, enter to shape. A record whose path is not circuit's own pin
// (a tampered or corrupt datastore) is refused, not followed.
func TestSecurityGCRestoreOnlyTouchOwnPins(t *testing.T) {
	c := newCLI(t)
	c.must("network", "create", c.conf("tamper", "10.220.46.0/24"))
	c.must("network", "qos", "set", "--rate", "5000", "tamper")
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Interfaces of the host's own namespace, harmless to shape should
	// restore follow the record.
	hostIf := testutil.RandName("cvh")
	testutil.Run(t, "ip", "link", "add", hostIf, "type", "veth", "peer", "name", hostIf+"p")
	t.Cleanup(func() { exec.Command("ip", "link", "del", hostIf).Run() })
	store, err := bolt.Open(c.state)
	if err != nil {
		t.Fatal(err)
	}
	err = store.Update(context.Background(), func(tx ds.Tx) error {
		// A dead one pointing at a file, and a live one pointing at the
		// host's own namespace (this test's), with a host interface.
		if err := tx.PutPeer(&api.Peer{Network: "tamper", ContainerID: "gone", PID: 999999999, IfName: "eth0",
			Netns: victim, State: api.PeerConnected, ConnectedAt: time.Now()}); err != nil {
			return err
		}
		return tx.PutPeer(&api.Peer{Network: "tamper", ContainerID: "host", PID: os.Getpid(), IfName: hostIf,
			Netns: fmt.Sprintf("/proc/%d/ns/net", os.Getpid()), State: api.PeerConnected, ConnectedAt: time.Now()})
	})
	store.Close()
	if err != nil {
		t.Fatal(err)
	}
	qdiscs := func() string {
		// A dump other tests' link changes interrupted is read again.
		for {
			out, _ := exec.Command("tc", "qdisc", "show", "dev", hostIf).CombinedOutput()
			if !strings.Contains(string(out), "Dump was interrupted") {
				return string(out)
			}
		}
	}
	before := qdiscs()
	for _, cmd := range []string{"gc", "restore"} {
		_, stderr, err := c.run("", cmd)
		secOneLine(t, cmd+" over tampered records", err, stderr, "not circuit's pin")
		if b, err := os.ReadFile(victim); err != nil || string(b) != "keep me" {
			t.Errorf("%s removed or changed %s: %v", cmd, victim, err)
		}
		if after := qdiscs(); after != before || strings.Contains(after, "c1c0:") {
			t.Errorf("%s shaped the host's %s:\n%s", cmd, hostIf, after)
		}
	}
	// Leave nothing for the cleanup's network delete to follow.
	store, err = bolt.Open(c.state)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	store.Update(context.Background(), func(tx ds.Tx) error {
		tx.DeletePeer("tamper", "gone", "eth0")
		return tx.DeletePeer("tamper", "host", hostIf)
	})
}

// fifoWait names the kernel wait a thread of process pid sleeps in when it
// is blocked on a FIFO or pipe, or returns "".
func fifoWait(pid int) string {
	chans, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/wchan", pid))
	for _, f := range chans {
		b, _ := os.ReadFile(f)
		if w := string(b); w == "wait_for_partner" || strings.HasPrefix(w, "pipe_") {
			return "blocked in the kernel's " + w
		}
	}
	return ""
}

// A target in circuit's own network namespace (or PID 1's) is refused with
// one line before any plugin runs: the plugins would otherwise add links,
// addresses and routes to the host. circuit runs here in a throwaway
// namespace of its own, shared with the process it is asked to connect.
func TestSecurityHostNetnsRefused(t *testing.T) {
	c := newCLI(t)
	// ptp, which (unlike bridge) does not check for this itself.
	conf := filepath.Join(t.TempDir(), "hostns.conf")
	os.WriteFile(conf, fmt.Appendf(nil, `{"cniVersion": "1.0.0", "name": "hostns", "type": "ptp",
	  "ipam": {"type": "host-local", "subnet": "10.220.70.0/24", "dataDir": %q}}`, c.ipam), 0o644)
	c.must("network", "create", conf)
	script := fmt.Sprintf(`sleep 60 >/dev/null 2>&1 & trap 'kill $!' EXIT; %s --state %s --cni-path %s network connect $! hostns`, c.bin, c.state, c.cniDir)
	cmd := exec.Command("unshare", "-n", "sh", "-c", script)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	out, err := cmd.Output()
	secOneLine(t, "connect a process in circuit's own network namespace", err, errb.String(), "network namespace")
	if strings.TrimSpace(string(out)) != "" {
		t.Errorf("stdout: %s", out)
	}
	if peers := c.must("network", "inspect", "hostns", "--format", "{{len .Peers}}"); strings.TrimSpace(peers) != "0" {
		t.Errorf("a peer was recorded: %s", peers)
	}
	if p := c.pins(); len(p) != 0 {
		t.Errorf("pins: %v", p)
	}
	if r := c.reservations("hostns"); len(r) != 0 {
		t.Errorf("addresses reserved: %v", r)
	}
	// PID 1 is the host's namespace too.
	_, stderr, err := c.run("", "network", "connect", "1", "hostns")
	secOneLine(t, "connect PID 1", err, stderr, "network namespace")
}

// A damaged circuit.db (truncated, or bytes flipped) is one line naming
// the file and what to do: never a panic, a stack trace or a SIGBUS, and
// not in hook mode either, where it would land inside runc's error.
func TestSecurityDamagedDatastore(t *testing.T) {
	c := newCLI(t)
	c.must("network", "create", c.conf("dmg", "10.220.72.0/24"))
	for i := range 20 { // records enough for several pages
		c.stdin(fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "dmg%02d", "type": "bridge"}`, i), "network", "create", "-")
	}
	db := filepath.Join(c.state, "circuit.db")
	good, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.WriteFile(db, good, 0o600) }) // for the cleanup's own commands
	pageSize := 4096
	damaged := map[string][]byte{
		"truncated to the meta pages": good[:2*pageSize],
		"truncated mid-file":          good[:len(good)/2+100],
		"meta pages flipped":          flip(good, 16, 2*pageSize),
		"data pages flipped":          flip(good, 2*pageSize, len(good)),
	}
	for name, b := range damaged {
		if err := os.WriteFile(db, b, 0o600); err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{{"network", "list"}, {"lb", "list"}, {"gc"}} {
			out, stderr, err := c.run("", args...)
			if err == nil {
				continue // a flip that missed everything bbolt reads
			}
			if strings.Contains(stderr, "panic") || strings.Contains(stderr, "goroutine") || strings.Contains(stderr, "SIGBUS") {
				t.Errorf("%s: circuit %v crashed:\n%s", name, args, stderr)
				continue
			}
			secOneLine(t, name+": circuit "+strings.Join(args, " "), err, stderr, db)
			_ = out
		}
		// In hook mode too.
		st := `{"ociVersion": "1.2.0", "id": "dmg-00", "status": "stopped"}`
		_, stderr, err := c.run(st)
		if err != nil && (strings.Contains(stderr, "panic") || strings.Contains(stderr, "goroutine")) {
			t.Errorf("%s: hook crashed:\n%s", name, stderr)
		}
	}
}

// flip inverts every 97th byte of b[from:to] in a copy.
func flip(b []byte, from, to int) []byte {
	out := bytes.Clone(b)
	for i := from; i < to && i < len(out); i += 97 {
		out[i] ^= 0xff
	}
	return out
}
