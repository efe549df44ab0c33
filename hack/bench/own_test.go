package main

import (
	"math"
	"strings"
	"testing"
)

// The syncs counted as circuit's must be its own threads' only, even when
// strace splits a call around another thread's.
func TestCountSyncs(t *testing.T) {
	const db = "/s/circuit.db"
	trace := `100 execve("/w/circuit", ["/w/circuit", "network", "connect"], 0x1 /* 3 vars */) = 0
100 clone(child_stack=0x1, flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM|CLONE_SETTLS, tls=0x2 <unfinished ...>
101 openat(AT_FDCWD</w>, "/s/circuit.db", O_RDWR|O_CREAT|O_CLOEXEC, 0600) = 5</s/circuit.db>
100 <... clone resumed>) = 101
101 fdatasync(5</s/circuit.db>) = 0
101 fsync(5</s/circuit.db>) = 0
101 clone(child_stack=NULL, flags=CLONE_VM|CLONE_VFORK|CLONE_PIDFD|SIGCHLD, parent_tid=0x3) = 200
200 execve("/cni/bridge", ["/cni/bridge"], 0x4 /* 9 vars */) = 0
200 clone(child_stack=0x5, flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM|CLONE_SETTLS, tls=0x6) = 201
201 fsync(3</ipam/last>) = 0
200 openat(AT_FDCWD</w>, "/s/circuit.db", O_RDONLY|O_CLOEXEC) = 7</s/circuit.db>
101 fdatasync(5</s/circuit.db> <unfinished ...>
100 openat(AT_FDCWD</w>, "/s/circuit.db", O_RDONLY|O_CLOEXEC) = -1 ENOENT (No such file or directory)
101 <... fdatasync resumed>) = 0
100 openat(AT_FDCWD</w>, "/s/hook.log", O_WRONLY|O_APPEND|O_CREAT, 0600) = 6</s/hook.log>
100 fdatasync(6</s/hook.log>) = 0
100 +++ exited with 0 +++
`
	sc, err := countSyncs(strings.Split(trace, "\n"), db)
	if err != nil {
		t.Fatal(err)
	}
	if sc.fdatasync != 3 || sc.fsync != 1 || sc.dbOpens != 1 || sc.dbRW != 1 || sc.children != 1 {
		t.Errorf("fdatasync %d, fsync %d, opens %d (rw %d), children %d; want 3, 1, 1 (1), 1", sc.fdatasync, sc.fsync, sc.dbOpens, sc.dbRW, sc.children)
	}
	if got := synced(sc.synced); got != "circuit.db 3, hook.log 1" {
		t.Errorf("synced %q", got)
	}
	if _, err := countSyncs(nil, db); err == nil {
		t.Error("no trace: no error")
	}
}

func TestParseInittrace(t *testing.T) {
	stderr := `init internal/bytealg @0.004 ms, 0 ms clock, 0 bytes, 0 allocs
init runtime @0.031 ms, 0.041 ms clock, 0 bytes, 0 allocs
init github.com/urfave/cli/v3 @1.2 ms, 0.250 ms clock, 12000 bytes, 90 allocs
circuit version 1.0
`
	total, pkgs := parseInittrace([]byte(stderr))
	if math.Abs(total-0.291) > 1e-9 || len(pkgs) != 3 || pkgs["github.com/urfave/cli/v3"] != 0.25 {
		t.Errorf("total %v, pkgs %v", total, pkgs)
	}
}
