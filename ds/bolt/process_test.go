package bolt

// Tests across processes: the test binary re-executes itself to run
// TestHelperProcess, which does what the environment asks and exits.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/ds/dstest"
)

const (
	envHelper = "CIRCUIT_BOLT_TEST_HELPER" // "hold" or "increment"
	envPath   = "CIRCUIT_BOLT_TEST_PATH"   // db file (hold) or state dir (increment)
	envHold   = "CIRCUIT_BOLT_TEST_HOLD"   // how long "hold" keeps the lock
	envID     = "CIRCUIT_BOLT_TEST_ID"     // which record "increment" owns
	envRounds = "CIRCUIT_BOLT_TEST_ROUNDS" // how many Updates "increment" runs
)

// TestHelperProcess is not a test: it is the child process of the tests below.
func TestHelperProcess(t *testing.T) {
	var err error
	switch os.Getenv(envHelper) {
	case "":
		t.Skip("child process of the cross-process tests")
	case "hold":
		err = holdLock(os.Getenv(envPath), os.Getenv(envHold))
	case "increment":
		err = incrementRecords(os.Getenv(envPath), os.Getenv(envID), os.Getenv(envRounds))
	default:
		err = fmt.Errorf("unknown helper %q", os.Getenv(envHelper))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(1)
	}
	// Exit before the test framework prints anything.
	os.Exit(0)
}

// holdLock opens the db with bbolt directly, says "locked" on stdout, keeps
// the exclusive lock for hold, and writes <path>.released just before it
// lets go, so a test can tell by an event, not a clock, that a transaction
// ran after the release.
func holdLock(path, hold string) error {
	d, err := time.ParseDuration(hold)
	if err != nil {
		return err
	}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return err
	}
	fmt.Println("locked")
	time.Sleep(d)
	if err := os.WriteFile(path+".released", nil, 0o600); err != nil {
		return err
	}
	return db.Close()
}

// incrementRecords runs rounds Updates, each incrementing a record of its
// own (peer c<id>'s PID) and one all children share (service shared's
// target weight): a lost update shows as a short count.
func incrementRecords(dir, id, rounds string) error {
	n, err := strconv.Atoi(rounds)
	if err != nil {
		return err
	}
	s, err := Open(dir, WithTimeout(time.Minute))
	if err != nil {
		return err
	}
	defer s.Close()
	for range n {
		err := s.Update(context.Background(), func(tx ds.Tx) error { return dstest.Increment(tx, "c"+id) })
		if err != nil {
			return err
		}
	}
	return nil
}

func helperCmd(t *testing.T, env ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	return cmd
}

// startHolder starts a child holding the db's lock for hold, and returns
// once it holds it.
func startHolder(t *testing.T, path string, hold time.Duration) *exec.Cmd {
	t.Helper()
	cmd := helperCmd(t, envHelper+"=hold", envPath+"="+path, envHold+"="+hold.String())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if strings.TrimSpace(line) != "locked" {
		t.Fatalf("holder did not take the lock: %q, %v", line, err)
	}
	return cmd
}

func TestBusyWhileAnotherProcessHoldsTheLock(t *testing.T) {
	const timeout = 300 * time.Millisecond
	s := openStore(t, t.TempDir(), WithTimeout(timeout))
	startHolder(t, s.Path(), time.Minute)

	for name, run := range map[string]func(context.Context, func(ds.Tx) error) error{
		"Update": s.Update,
		"View":   s.View,
	} {
		ran := false
		start := time.Now()
		err := run(context.Background(), func(ds.Tx) error { ran = true; return nil })
		elapsed := time.Since(start)
		if !errors.Is(err, api.ErrBusy) {
			t.Fatalf("%s while locked: %v, want ErrBusy", name, err)
		}
		want := fmt.Sprintf("datastore busy: another circuit process held %s for more than %s", s.Path(), timeout)
		if err.Error() != want {
			t.Errorf("%s error %q, want %q", name, err, want)
		}
		if ran {
			t.Errorf("%s ran fn without the lock", name)
		}
		// It waited: bbolt gives up one poll interval (50ms) early. No upper
		// bound: a loaded machine may take longer with nothing wrong.
		if elapsed < timeout-100*time.Millisecond {
			t.Errorf("%s failed after %v, before its %v wait was up", name, elapsed, timeout)
		}
	}
}

func TestUpdateWaitsForTheLock(t *testing.T) {
	const hold = time.Second
	s := openStore(t, t.TempDir(), WithTimeout(20*time.Second))
	holder := startHolder(t, s.Path(), hold)

	update(t, s, func(tx ds.Tx) error {
		if _, err := os.Stat(s.Path() + ".released"); err != nil {
			t.Errorf("Update ran while the holder kept the lock: %v", err)
		}
		return tx.PutService(testService("web"))
	})
	if err := holder.Wait(); err != nil {
		t.Errorf("holder: %v", err)
	}
	view(t, s, func(tx ds.Tx) error {
		_, err := tx.GetService("web")
		return err
	})
}

func TestConcurrentWriterProcesses(t *testing.T) {
	const children, rounds = 8, 20
	// No Open here: the children race to create the state dir and file.
	dir := t.TempDir() + "/state"
	var cmds []*exec.Cmd
	for i := range children {
		cmd := helperCmd(t, envHelper+"=increment", envPath+"="+dir,
			envID+"="+strconv.Itoa(i), envRounds+"="+strconv.Itoa(rounds))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Errorf("child %d: %v", i, err)
		}
	}
	if t.Failed() {
		return
	}

	s := openStore(t, dir)
	view(t, s, func(tx ds.Tx) error {
		peers, err := tx.ListPeers("net")
		if err != nil {
			return err
		}
		if len(peers) != children {
			t.Errorf("%d peers, want %d", len(peers), children)
		}
		for i, p := range peers {
			if want := "c" + strconv.Itoa(i); p.ContainerID != want || p.PID != rounds {
				t.Errorf("peer %d = %s with count %d, want %s with %d", i, p.ContainerID, p.PID, want, rounds)
			}
		}
		svc, err := tx.GetService("shared")
		if err != nil {
			return err
		}
		if got := svc.Targets[0].Weight; got != children*rounds {
			t.Errorf("shared counter = %d, want %d", got, children*rounds)
		}
		return nil
	})
}
