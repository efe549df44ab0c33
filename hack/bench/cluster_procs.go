package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/circuit-cni/circuit/pkg/testutil"
)

// The cluster section's long-lived processes: one etcd, one circuit-agent
// per node, iperf3 servers. Each is killed with the benchmark (a parent
// death signal) and stopped by cleanup otherwise.

// startKept starts cmd with SIGKILL as its parent death signal, from
// testutil's thread that never exits: the signal fires when the thread
// that forked the child exits, and inNetns ends threads on purpose.
func startKept(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	return testutil.Spawn(cmd)
}

// etcdServer is Debian's etcd, one member, in the hub's namespace.
type etcdServer struct {
	cmd      *exec.Cmd
	waited   chan struct{}
	logPath  string
	stopOnce sync.Once
}

// startEtcd runs etcd in the namespace at nsPath with its data in dir,
// clients on host:clientPort, its peer port on that namespace's loopback,
// and waits until it has a leader.
func startEtcd(ctx context.Context, nsPath, dir, host string, clientPort, peerPort int) (*etcdServer, error) {
	bin, err := exec.LookPath("etcd")
	if err != nil {
		return nil, fmt.Errorf("no etcd binary (make deps installs Debian's etcd-server)")
	}
	client := fmt.Sprintf("http://%s:%d", host, clientPort)
	peer := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	e := &etcdServer{waited: make(chan struct{}), logPath: filepath.Join(dir, "etcd.log")}
	logf, err := os.Create(e.logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	// nsenter execs etcd in place: the process is etcd's.
	e.cmd = exec.Command("nsenter", "--net="+nsPath, bin, "--name", "bench", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "bench="+peer,
		"--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn")
	e.cmd.Stdout, e.cmd.Stderr = logf, logf
	if err := startKept(e.cmd); err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	go func() { e.cmd.Wait(); close(e.waited) }()
	// etcd answers /health once it has a leader: a second or so, longer
	// on a loaded machine.
	addr := net.JoinHostPort(host, strconv.Itoa(clientPort))
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(25 * time.Millisecond) {
		select {
		case <-e.waited:
			return nil, fmt.Errorf("etcd exited: %s", tailFile(e.logPath, 10))
		case <-ctx.Done():
			e.stop()
			return nil, ctx.Err()
		default:
		}
		if etcdHealthy(nsPath, addr) {
			return e, nil
		}
	}
	e.stop()
	return nil, fmt.Errorf("etcd did not become healthy within 60s: %s", tailFile(e.logPath, 10))
}

// etcdHealthy asks etcd's /health from inside its namespace: the socket
// is made on a thread there (an http.Client would dial from another
// goroutine, in the host's namespace).
func etcdHealthy(nsPath, addr string) bool {
	var body []byte
	err := inNetns(nsPath, func() error {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(time.Second))
		if _, err := fmt.Fprintf(conn, "GET /health HTTP/1.0\r\nHost: %s\r\n\r\n", addr); err != nil {
			return err
		}
		body, err = io.ReadAll(conn)
		return err
	})
	return err == nil && etcdHealthReply(body)
}

// etcdHealthReply: a 200 whose JSON says "health": "true".
func etcdHealthReply(raw []byte) bool {
	head, body, ok := bytes.Cut(raw, []byte("\r\n\r\n"))
	if !ok || !bytes.HasPrefix(head, []byte("HTTP/1.")) || !bytes.Contains(firstLineOf(head), []byte(" 200 ")) {
		return false
	}
	var h struct {
		Health string `json:"health"`
	}
	return json.Unmarshal(body, &h) == nil && h.Health == "true"
}

func firstLineOf(b []byte) []byte {
	l, _, _ := bytes.Cut(b, []byte("\r\n"))
	return l
}

func (e *etcdServer) pid() int { return e.cmd.Process.Pid }

// stop kills etcd; its data goes with the benchmark's work directory.
func (e *etcdServer) stop() {
	e.stopOnce.Do(func() {
		e.cmd.Process.Kill()
		<-e.waited
	})
}

// agentProc is one circuit-agent, run as
//
//	/usr/bin/time -f %M -o RSS nsenter --net=NS setpriv --pdeathsig KILL -- circuit-agent ...
//
// for its peak resident set size at exit, measured as the other sections
// measure it (see peakRSS): Go starts its children with vfork, and the
// kernel carries the parent's peak RSS across the exec into the child's
// ru_maxrss, so Go's own ProcessState would report the benchmark's peak,
// not the agent's. GNU time forks for real, from a small process; nsenter
// and setpriv exec in place, so the agent is time's child. setpriv makes
// the agent die with time, as time dies with the benchmark.
type agentProc struct {
	time    *exec.Cmd // GNU time; the agent is its only child
	pid     int       // the agent's
	rssFile string
	logPath string
	waited  chan struct{}
	stopped sync.Once
}

func startAgent(nsPath, logPath, rssFile, bin string, args ...string) (*agentProc, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	full := append([]string{"-f", "%M", "-o", rssFile, "nsenter", "--net=" + nsPath, "setpriv", "--pdeathsig", "KILL", "--", bin}, args...)
	a := &agentProc{time: exec.Command("/usr/bin/time", full...), rssFile: rssFile, logPath: logPath, waited: make(chan struct{})}
	a.time.Stdout, a.time.Stderr = logf, logf
	if err := startKept(a.time); err != nil {
		return nil, fmt.Errorf("start circuit-agent: %w", err)
	}
	go func() { a.time.Wait(); close(a.waited) }()
	// The agent is time's child once it forked; it is the agent once
	// nsenter and setpriv have exec'd.
	children := fmt.Sprintf("/proc/%d/task/%d/children", a.time.Process.Pid, a.time.Process.Pid)
	for deadline := time.Now().Add(startBound); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		select {
		case <-a.waited:
			return nil, fmt.Errorf("circuit-agent exited at once: %s", tailFile(logPath, 10))
		default:
		}
		if a.pid == 0 {
			raw, _ := os.ReadFile(children)
			if f := strings.Fields(string(raw)); len(f) > 0 {
				a.pid, _ = strconv.Atoi(f[0])
			}
			continue
		}
		if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", a.pid)); exe == bin {
			return a, nil
		}
	}
	a.stop(time.Second)
	return nil, fmt.Errorf("circuit-agent did not start within %s: %s", startBound, tailFile(logPath, 10))
}

// signal sends sig to the agent itself (not GNU time).
func (a *agentProc) signal(sig syscall.Signal) {
	if a.pid > 0 {
		syscall.Kill(a.pid, sig)
	}
}

// stop ends the agent as systemd would (SIGTERM: it revokes its lease),
// and kills it if it is still there after grace. An agent left paused by
// a run cut short is continued, so that it hears the SIGTERM.
func (a *agentProc) stop(grace time.Duration) {
	a.stopped.Do(func() {
		if a.pid > 0 {
			syscall.Kill(a.pid, syscall.SIGTERM)
			syscall.Kill(a.pid, syscall.SIGCONT)
		} else {
			a.time.Process.Kill()
		}
		select {
		case <-a.waited:
		case <-time.After(grace):
			if a.pid > 0 {
				syscall.Kill(a.pid, syscall.SIGKILL)
			}
			a.time.Process.Kill()
			<-a.waited
		}
	})
}

// peakRSS is what GNU time wrote when the agent exited (KiB).
func (a *agentProc) peakRSS() (int64, error) {
	raw, err := os.ReadFile(a.rssFile)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(lastLine(raw)), 10, 64)
}

// clockTick is the unit of utime and stime in /proc/PID/stat: USER_HZ,
// 100 on every Linux architecture.
const clockTick = 10 * time.Millisecond

// cpuTime is the user+sys time a process has used so far, all its threads
// (those gone too) included.
func cpuTime(pid int) (time.Duration, error) {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	return parseStatCPU(raw)
}

// parseStatCPU reads utime and stime (fields 14 and 15) from a
// /proc/PID/stat line; the command name, field 2, may hold spaces and
// parentheses, so fields are counted from its closing parenthesis.
func parseStatCPU(raw []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return 0, fmt.Errorf("unexpected /proc stat: %q", raw)
	}
	f := strings.Fields(string(raw[i+1:]))
	// f[0] is field 3 (state): utime is f[11], stime f[12].
	if len(f) < 13 {
		return 0, fmt.Errorf("unexpected /proc stat: %q", raw)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("unexpected /proc stat: %q", raw)
	}
	return time.Duration(utime+stime) * clockTick, nil
}

// statusKiB reads a "Key:   123 kB" line of /proc/PID/status (VmRSS,
// VmHWM): the process's own address space, which begins at its exec.
func statusKiB(pid int, key string) (int64, error) {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	return parseStatusKiB(raw, key)
}

func parseStatusKiB(raw []byte, key string) (int64, error) {
	for _, l := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(l, key+":"); ok {
			f := strings.Fields(v)
			if len(f) == 0 {
				break
			}
			return strconv.ParseInt(f[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc status", key)
}

// tailFile is the last n lines of a log, for an error message.
func tailFile(path string, n int) string {
	raw, _ := os.ReadFile(path)
	l := strings.Split(strings.TrimSpace(string(raw)), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
