package cmd

import (
	"regexp"
	"strings"
	"testing"
	"time"
)

// lb set changes a target in place; what it cannot do is one line, with
// usage errors (exit 2) told from refusals (exit 1), and nothing changed.
func TestLBSet(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.must("lb", "create", "demo", "10.254.2.10:80")
	h.must("lb", "add", "demo", "10.254.1.2:80", "10.254.1.3:80")
	h.expect("service demo updated\n", "lb", "set", "demo", "10.254.1.3:80", "--weight", "4")
	if out := h.must("lb", "list", "--details"); !strings.Contains(out, "  -> 10.254.1.3:80  weight 4\n") {
		t.Errorf("lb list --details after lb set:\n%s", out)
	}
	before := h.must("lb", "show", "demo", "--format", "json")
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"demo", "10.254.1.3:80"}, 2, "give --weight or --forward"},
		{[]string{"demo", "10.254.1.3:80", "--weight", "0"}, 2, "--weight: weight 0: use 1 to 65535"},
		{[]string{"demo", "10.254.1.3:80", "--forward", "masq"}, 2, "--forward"},
		{[]string{"demo"}, 2, "missing arguments"},
		{[]string{"demo", "10.254.1.9:80", "--weight", "2"}, 1, "lb set demo: target 10.254.1.9:80 is not in service demo"},
		{[]string{"nope", "10.254.1.3:80", "--weight", "2"}, 1, `lb set nope: service "nope": not found`},
	} {
		r := h.run(append([]string{"lb", "set"}, tc.args...)...)
		if ExitCode(r.err) != tc.code || !strings.Contains(r.line(), tc.want) || r.stdout != "" {
			t.Errorf("lb set %q: exit %d, %q; want exit %d and %q", tc.args, ExitCode(r.err), r.line(), tc.code, tc.want)
		}
	}
	if after := h.must("lb", "show", "demo", "--format", "json"); after != before {
		t.Errorf("refused lb sets changed the service:\n%s", after)
	}
}

// lb remove --drain waits for the target's connections to end, says so,
// and shows the target draining meanwhile; a weight given ends the drain.
func TestLBRemoveDrain(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.must("lb", "create", "demo", "10.254.2.10:80", "--drain", "45s")
	h.must("lb", "add", "demo", "10.254.1.2:80", "10.254.1.3:80")
	if out := h.must("lb", "list", "--format", "json"); !strings.Contains(out, `"drain": "45s"`) {
		t.Errorf("lb create --drain is not kept:\n%s", out)
	}
	h.fake.SetActive("demo", "10.254.1.3:80", 2)

	done := make(chan result, 1)
	go func() { done <- h.run("lb", "remove", "--drain", "1m", "demo", "10.254.1.3:80") }()
	// While it waits, lb show says it drains and how long it has left.
	waitFor(t, func() bool { return strings.Contains(h.must("lb", "show", "demo"), "is draining") })
	show := h.must("lb", "show", "demo")
	if !regexp.MustCompile(`10\.254\.1\.3:80 +0 +nat +2 `).MatchString(show) ||
		!regexp.MustCompile(`10\.254\.1\.3:80 is draining: removed when its 2 open connection\(s\) end, at the latest in (1m0s|59s) \(weight 1 before\)`).MatchString(show) {
		t.Errorf("lb show while draining:\n%s", show)
	}
	if out := h.must("lb", "list", "--details"); !strings.Contains(out, "  -> 10.254.1.3:80  draining\n") {
		t.Errorf("lb list --details while draining:\n%s", out)
	}
	h.fake.SetActive("demo", "10.254.1.3:80", 0)
	r := <-done
	want := "draining 10.254.1.3:80 from service demo: no new connections, up to 1m0s for the open ones to end\n" +
		"target 10.254.1.3:80 drained from service demo: no connections left\n" +
		"service demo updated\n"
	if r.err != nil || r.stdout != want {
		t.Errorf("lb remove --drain: %v\n%s\nwant:\n%s", r.err, r.stdout, want)
	}
	if out := h.must("lb", "list", "--details"); strings.Contains(out, "10.254.1.3:80") {
		t.Errorf("the drained target is still there:\n%s", out)
	}

	// lb set --weight on a draining target takes it back.
	h.fake.SetActive("demo", "10.254.1.2:80", 1)
	go func() { done <- h.run("lb", "remove", "--drain", "1m", "demo", "10.254.1.2:80") }()
	waitFor(t, func() bool { return strings.Contains(h.must("lb", "show", "demo"), "is draining") })
	h.must("lb", "set", "demo", "10.254.1.2:80", "--weight", "3")
	r = <-done
	if r.err != nil || !strings.Contains(r.stdout, "stopped draining 10.254.1.2:80: another command changed it") {
		t.Errorf("lb remove --drain of a target lb set took back: %v\n%s", r.err, r.stdout)
	}
	if out := h.must("lb", "list", "--details"); !strings.Contains(out, "  -> 10.254.1.2:80  weight 3\n") {
		t.Errorf("after lb set ended the drain:\n%s", out)
	}

	for _, args := range [][]string{{"--drain", "0s"}, {"--drain", "-1s"}, {"--drain", "25h"}} {
		if r := h.run(append(append([]string{"lb", "remove"}, args...), "demo", "10.254.1.2:80")...); ExitCode(r.err) != 2 || !strings.Contains(r.line(), "--drain") {
			t.Errorf("lb remove %q: exit %d, %q", args, ExitCode(r.err), r.line())
		}
	}
	if r := h.run("lb", "create", "other", "10.254.2.11:80", "--drain", "0s"); ExitCode(r.err) != 2 || !strings.Contains(r.line(), "--drain") {
		t.Errorf("lb create --drain 0s: exit %d, %q", ExitCode(r.err), r.line())
	}
}

// waitFor polls cond; the fake answers at once, so a long wait is a hang.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for range 1000 {
		if cond() {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("condition never held")
}
