package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Sleeper is a process alone in a new network namespace: the smallest thing
// circuit can connect, when a test does not need runc.
type Sleeper struct {
	Cmd *exec.Cmd
	PID int
}

// The parent-death signal fires when the OS thread that forked the child
// exits, and namespace helpers end threads on purpose. Sleepers are
// therefore forked from one goroutine that keeps its thread for the life of
// the test process.
var (
	spawnOnce sync.Once
	spawnReqs chan spawnReq
)

type spawnReq struct {
	cmd  *exec.Cmd
	done chan error
}

// Spawn starts cmd from that goroutine's thread: a parent-death signal
// set in cmd.SysProcAttr then fires only when this process ends. For
// other long-lived helpers than sleepers too (a benchmark's etcd).
func Spawn(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnReqs = make(chan spawnReq)
		go func() {
			runtime.LockOSThread() // never unlocked: this thread lives as long as the process
			for r := range spawnReqs {
				r.done <- r.cmd.Start()
			}
		}()
	})
	done := make(chan error)
	spawnReqs <- spawnReq{cmd, done}
	return <-done
}

// NewSleeper starts `sleep` in a fresh network namespace (unshare -n) and
// kills it when the test ends (or the test process dies).
func NewSleeper(t testing.TB) *Sleeper {
	t.Helper()
	s, err := StartSleeper()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Kill)
	return s
}

// StartSleeper is NewSleeper for programs that are not tests (the
// benchmarks): the caller kills the sleeper.
func StartSleeper() (*Sleeper, error) {
	cmd := exec.Command(Busybox(), "sleep", "3600")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	if err := Spawn(cmd); err != nil {
		return nil, fmt.Errorf("start sleeper: %w", err)
	}
	s := &Sleeper{Cmd: cmd, PID: cmd.Process.Pid}
	// Wait until the process has its own namespace.
	deadline := time.Now().Add(time.Minute) // a backstop: unshare takes milliseconds
	for time.Now().Before(deadline) {
		a, _ := os.Readlink("/proc/self/ns/net")
		b, _ := os.Readlink("/proc/" + strconv.Itoa(s.PID) + "/ns/net")
		if b != "" && a != b {
			return s, nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	s.Kill()
	return nil, fmt.Errorf("sleeper %d did not get a network namespace of its own", s.PID)
}

// Kill ends the process and reaps it.
func (s *Sleeper) Kill() {
	if s.Cmd.ProcessState == nil {
		s.Cmd.Process.Kill()
		s.Cmd.Wait()
	}
}

// Exec runs a command inside the sleeper's network namespace.
func (s *Sleeper) Exec(name string, args ...string) ([]byte, error) {
	a := append([]string{"-t", strconv.Itoa(s.PID), "-n", name}, args...)
	return exec.Command("nsenter", a...).CombinedOutput()
}
