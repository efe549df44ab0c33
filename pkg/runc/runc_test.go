package runc

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/circuit-cni/circuit/api"
)

// fakeRoot writes a runc state dir holding one container whose init is
// this test process.
func fakeRoot(t *testing.T, id string, start uint64) string {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, id), 0o700)
	st := fmt.Sprintf(`{"id": %q, "init_process_pid": %d, "init_process_start": %d}`, id, os.Getpid(), start)
	if err := os.WriteFile(filepath.Join(root, id, "state.json"), []byte(st), 0o600); err != nil {
		t.Fatal(err)
	}
	return root
}

func TestResolve(t *testing.T) {
	start, err := StartTime(os.Getpid())
	if err != nil || start == 0 {
		t.Fatalf("StartTime: %d, %v", start, err)
	}
	root := fakeRoot(t, "web-00", start)
	c, err := Resolve(root, "web-00")
	if err != nil || c.ID != "web-00" || c.PID != os.Getpid() {
		t.Fatalf("by id: %+v, %v", c, err)
	}
	// By PID, runc's ID is found so both names mean one container.
	c, err = Resolve(root, fmt.Sprint(os.Getpid()))
	if err != nil || c.ID != "web-00" {
		t.Fatalf("by pid: %+v, %v", c, err)
	}
	// A PID runc does not know gets a stable ID from PID and start time.
	c, err = Resolve(t.TempDir(), fmt.Sprint(os.Getpid()))
	if want := fmt.Sprintf("pid-%d-%d", os.Getpid(), start); err != nil || c.ID != want {
		t.Fatalf("unknown to runc: %+v, %v; want %s", c, err, want)
	}
}

func TestResolveRefuses(t *testing.T) {
	start, _ := StartTime(os.Getpid())
	root := fakeRoot(t, "web-00", start)
	stale := fakeRoot(t, "reused", start+1) // PID reused by another process
	cases := []struct {
		root, arg string
		want      error
	}{
		{root, "web-01", api.ErrNotFound},
		{root, "999999999", api.ErrNotFound},
		{root, "0", api.ErrInvalid},
		{root, "../etc", api.ErrInvalid},
		{root, "a/b", api.ErrInvalid},
		{root, strings.Repeat("a", 1025), api.ErrInvalid},
		{stale, "reused", api.ErrNotFound},
	}
	for _, tc := range cases {
		if _, err := Resolve(tc.root, tc.arg); !errors.Is(err, tc.want) {
			t.Errorf("Resolve(%q): err = %v, want %v", tc.arg, err, tc.want)
		}
	}
}
