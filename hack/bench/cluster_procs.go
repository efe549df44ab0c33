package main

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The cluster section's long-lived processes: one etcd, one circuit-agent
// per node, iperf3 servers. Each is killed with the benchmark (a parent
// death signal) and stopped by cleanup otherwise.

// keeperThread starts every long-lived process. The parent death signal
// fires when the thread that forked the child exits, and inNetns ends
// threads on purpose: a process forked from an ordinary goroutine could
// die when its thread is later locked and thrown away. This thread never
// exits.
var (
	keeperOnce sync.Once
	keeperReqs chan keeperReq
)

type keeperReq struct {
	cmd  *exec.Cmd
	done chan error
}

// startKept starts cmd from the keeper thread, with SIGKILL as its parent
// death signal.
func startKept(cmd *exec.Cmd) error {
	keeperOnce.Do(func() {
		keeperReqs = make(chan keeperReq)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread lives as long as the benchmark
			for r := range keeperReqs {
				r.done <- r.cmd.Start()
			}
		}()
	})
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	done := make(chan error)
	keeperReqs <- keeperReq{cmd, done}
	return <-done
}

// etcdServer is Debian's etcd, one member, listening on the underlay.
type etcdServer struct {
	cmd        *exec.Cmd
	clientURL  string
	waited     chan struct{}
	logPath    string
	stopOnce   sync.Once
	clientPort int
}

// startEtcd runs etcd with its data in dir, clients on host:clientPort,
// its peer port on loopback, and waits until it has a leader.
func startEtcd(dir, host string, clientPort, peerPort int) (*etcdServer, error) {
	bin, err := exec.LookPath("etcd")
	if err != nil {
		return nil, fmt.Errorf("no etcd binary (make deps installs Debian's etcd-server)")
	}
	client := fmt.Sprintf("http://%s:%d", host, clientPort)
	peer := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	e := &etcdServer{clientURL: client, clientPort: clientPort, waited: make(chan struct{}), logPath: filepath.Join(dir, "etcd.log")}
	logf, err := os.Create(e.logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	e.cmd = exec.Command(bin, "--name", "bench", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "bench="+peer,
		"--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn")
	e.cmd.Stdout, e.cmd.Stderr = logf, logf
	if err := startKept(e.cmd); err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	go func() { e.cmd.Wait(); close(e.waited) }()
	// etcd answers /health once it has a leader: a second or so.
	hc := http.Client{Timeout: time.Second}
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(25 * time.Millisecond) {
		select {
		case <-e.waited:
			return nil, fmt.Errorf("etcd exited: %s", tailFile(e.logPath, 10))
		default:
		}
		if r, err := hc.Get(client + "/health"); err == nil {
			r.Body.Close()
			if r.StatusCode == http.StatusOK {
				return e, nil
			}
		}
	}
	e.stop()
	return nil, fmt.Errorf("etcd did not become healthy within 20s: %s", tailFile(e.logPath, 10))
}

func (e *etcdServer) pid() int { return e.cmd.Process.Pid }

// stop kills etcd; its data goes with the benchmark's work directory.
func (e *etcdServer) stop() {
	e.stopOnce.Do(func() {
		e.cmd.Process.Kill()
		<-e.waited
	})
}

// freePortPair finds two free TCP ports from first on, the first on host
// (clients), the second on loopback (etcd's peer port), avoiding the
// ports the tests' etcd uses (23791-23802) and etcd's defaults.
func freePortPair(host string, first int) (client, peer int, err error) {
	free := func(addr string) bool {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return false
		}
		l.Close()
		return true
	}
	for p := first; p < first+40; p += 2 {
		if free(net.JoinHostPort(host, strconv.Itoa(p))) && free(net.JoinHostPort("127.0.0.1", strconv.Itoa(p+1))) {
			return p, p + 1, nil
		}
	}
	return 0, 0, fmt.Errorf("no free pair of ports in %d-%d for etcd", first, first+40)
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
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
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
	return nil, fmt.Errorf("circuit-agent did not start within 10s: %s", tailFile(logPath, 10))
}

// stop ends the agent as systemd would (SIGTERM: it revokes its lease),
// and kills it if it is still there after grace.
func (a *agentProc) stop(grace time.Duration) {
	a.stopped.Do(func() {
		if a.pid > 0 {
			syscall.Kill(a.pid, syscall.SIGTERM)
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
