package integration

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/circuit-cni/circuit/pkg/lb"
	"github.com/circuit-cni/circuit/pkg/lb/nftables/legacy"
	"github.com/circuit-cni/circuit/pkg/testutil"
)

// lb set and lb remove --drain against real traffic: the host tier runs
// them on nftables, the VM tier on IPVS (the host kernel has none).
//
// Networks 10.220.56.0/24-10.220.57.0/24, service addresses 10.220.61.x.

// lbBackends are the backends this tier proves the changes on.
func lbBackends(t *testing.T) []string {
	if testutil.InVM() {
		if !kernelHasIPVS() {
			t.Skip("the VM kernel has no IPVS")
		}
		return []string{"ipvs"}
	}
	return []string{"nftables"}
}

// drainTarget is a namespace on the test's bridge serving, on port 80, a
// page that names it (busybox httpd) and, on port 9000, a line with its
// name and then an echo of what it is sent (busybox nc).
type drainTarget struct {
	name, ip string
}

func (c *cli) drainTarget(network, name string) drainTarget {
	t := c.t
	t.Helper()
	s := testutil.NewSleeper(t)
	c.must("network", "connect", strconv.Itoa(s.PID), network)
	var ip string
	for _, p := range relInspect(c, network).Peers {
		if p.PID == s.PID {
			ip = relAddr(p.IPs[0])
		}
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "index.html"), []byte(name+"\n"), 0o644)
	echo := filepath.Join(dir, "echo.sh")
	os.WriteFile(echo, []byte("#!/bin/sh\necho "+name+"\nexec cat\n"), 0o755)
	for _, args := range [][]string{
		{"httpd", "-f", "-p", "80", "-h", dir},
		{"nc", "-ll", "-p", "9000", "-e", echo},
	} {
		cmd := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(s.PID), "-n", testutil.Busybox()}, args...)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	}
	testutil.WaitHTTP(t, "http://"+ip+"/", 10*time.Second)
	for testutil.DialTCP(ip+":9000", time.Second) != nil {
		time.Sleep(20 * time.Millisecond)
	}
	return drainTarget{name: name, ip: ip}
}

// echoConn is an open connection to the echo port through a service.
type echoConn struct {
	net.Conn
	r      *bufio.Reader
	target string // the name the target sent first
}

func dialEcho(t *testing.T, addr string) *echoConn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	e := &echoConn{Conn: conn, r: bufio.NewReader(conn)}
	line, err := e.r.ReadString('\n')
	if err != nil {
		t.Fatalf("read the target's name through %s: %v", addr, err)
	}
	e.target = strings.TrimSpace(line)
	return e
}

// echo sends a line and reads it back.
func (e *echoConn) echo(line string) error {
	if _, err := fmt.Fprintln(e, line); err != nil {
		return err
	}
	got, err := e.r.ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(got) != line {
		return fmt.Errorf("echoed %q, want %q", got, line)
	}
	return nil
}

// startDrain runs lb remove --drain in the background and returns once it
// said it drains (the kernel gives the target no new connections then).
type runningDrain struct {
	cmd  *exec.Cmd
	out  *bufio.Reader
	done chan error
	rest strings.Builder
}

func (c *cli) startDrain(args ...string) *runningDrain {
	c.t.Helper()
	full := append([]string{"--state", c.state, "--cni-path", c.cniDir, "lb", "remove", "--drain"}, args...)
	cmd := exec.Command(c.bin, full...)
	stdout, _ := cmd.StdoutPipe()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	d := &runningDrain{cmd: cmd, out: bufio.NewReader(stdout), done: make(chan error, 1)}
	first, err := d.out.ReadString('\n')
	if err != nil || !strings.HasPrefix(first, "draining ") {
		cmd.Process.Kill()
		c.t.Fatalf("lb remove --drain %v: %q, %v\n%s", args, first, err, stderr.String())
	}
	go func() {
		b := make([]byte, 4096)
		for {
			n, err := d.out.Read(b)
			d.rest.Write(b[:n])
			if err != nil {
				break
			}
		}
		err := cmd.Wait()
		if err != nil {
			err = fmt.Errorf("%v: %s", err, stderr.String())
		}
		d.done <- err
	}()
	return d
}

// wait is what the drain printed after its first line, and how it ended.
func (d *runningDrain) wait(t *testing.T) (string, error) {
	t.Helper()
	select {
	case err := <-d.done:
		return d.rest.String(), err
	case <-time.After(20 * time.Second): // a backstop: drains here last 3s at most
		d.cmd.Process.Kill()
		t.Fatal("lb remove --drain never ended")
		return "", nil
	}
}

// A connection open to a draining target keeps working until it ends;
// new connections never reach the target; it goes, from the kernel and
// the datastore, as soon as its connection ended, or when its time is up.
// Interrupted, the drain is finished by the next lb command on the
// service, and by gc.
func TestLBDrain(t *testing.T) {
	for _, backend := range lbBackends(t) {
		t.Run(backend, func(t *testing.T) {
			c := lbStart(t)
			c.must("network", "create", c.conf("drainnet", "10.220.56.0/24"))
			a, b := c.drainTarget("drainnet", "da"), c.drainTarget("drainnet", "db")
			const vip = "10.220.61.1:9000"
			c.lbService("drain", "--backend", backend, vip)
			c.lbMust("service drain updated\n", "lb", "add", "drain", a.ip+":9000", b.ip+":9000")

			held := dialEcho(t, vip)
			defer held.Close()
			victim, other := a, b
			if held.target == b.name {
				victim, other = b, a
			}
			d := c.startDrain("3s", "drain", victim.ip+":9000")
			// New connections go to the other target only.
			for i := range 8 {
				e := dialEcho(t, vip)
				if e.target != other.name {
					t.Errorf("new connection %d during the drain reached %s", i+1, e.target)
				}
				e.Close()
			}
			// The open one goes on, and lb show says the target drains.
			if err := held.echo("still here"); err != nil {
				t.Errorf("the connection to the draining target broke: %v", err)
			}
			show := c.must("lb", "show", "drain")
			if !strings.Contains(show, victim.ip+":9000 is draining: removed when its 1 open connection(s) end") {
				t.Errorf("lb show during the drain:\n%s", show)
			}
			// It ends when its connection does, well before its 3s.
			closed := time.Now()
			held.Close()
			out, err := d.wait(t)
			if err != nil || !strings.Contains(out, "target "+victim.ip+":9000 drained from service drain: no connections left") ||
				!strings.HasSuffix(out, "service drain updated\n") {
				t.Errorf("lb remove --drain: %v\n%s", err, out)
			}
			if took := time.Since(closed); took > 2500*time.Millisecond {
				t.Errorf("the drain ended %s after its last connection closed", took)
			}
			if st := c.lbShow("drain"); len(st.Targets) != 1 || st.Targets[0].Address != other.ip+":9000" {
				t.Errorf("after the drain: %+v", st.Targets)
			}
			if k := kernelLB(t, backend); strings.Contains(k, kernelForm(backend, victim.ip)) {
				t.Errorf("the drained target is still in the kernel:\n%s", k)
			}

			// At the end of its time, with a connection still open.
			c.lbMust("service drain updated\n", "lb", "add", "drain", victim.ip+":9000")
			var stay *echoConn
			for stay == nil || stay.target != victim.name {
				if stay != nil {
					stay.Close()
				}
				stay = dialEcho(t, vip)
			}
			defer stay.Close()
			d = c.startDrain("1s", "drain", victim.ip+":9000")
			if out, err := d.wait(t); err != nil || !strings.Contains(out, "removed from service drain at the end of its drain, 1 connection(s) still open") {
				t.Errorf("lb remove --drain 1s with a connection open: %v\n%s", err, out)
			}

			// Interrupted (Ctrl-C): the target stays draining; the next lb
			// command finishes it once its connection ended.
			c.lbMust("service drain updated\n", "lb", "add", "drain", victim.ip+":9000")
			stay.Close()
			var last *echoConn
			for last == nil || last.target != victim.name {
				if last != nil {
					last.Close()
				}
				last = dialEcho(t, vip)
			}
			d = c.startDrain("1m", "drain", victim.ip+":9000")
			d.cmd.Process.Signal(os.Interrupt)
			if out, err := d.wait(t); err == nil || !strings.Contains(err.Error(), "left draining") {
				t.Errorf("an interrupted drain: %v\n%s", err, out)
			}
			if show := c.must("lb", "show", "drain"); !strings.Contains(show, victim.ip+":9000 is draining") {
				t.Errorf("after the interrupt, with a connection open:\n%s", show)
			}
			last.Close()
			eventually(t, "gc finishes the interrupted drain", func() bool {
				out := c.must("gc")
				return strings.Contains(out, "finished an interrupted drain: target "+victim.ip+":9000 drained")
			})
			if st := c.lbShow("drain"); len(st.Targets) != 1 {
				t.Errorf("after gc: %+v", st.Targets)
			}
		})
	}
}

// kernelLB is what the backend holds: /proc/net/ip_vs for IPVS (the VM
// may have no ipvsadm), circuit's table for nftables.
func kernelLB(t *testing.T, backend string) string {
	t.Helper()
	if backend == "ipvs" {
		out, err := os.ReadFile("/proc/net/ip_vs")
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	return mustNft(t, "list", "table", "inet", "circuit")
}

// kernelForm is how kernelLB's listing writes an IPv4 address as a
// service's target (nftables: "addr . port" in its maps; the hairpin
// sets keep addresses that were balanced to, "addr . addr", a while).
func kernelForm(backend, ip string) string {
	if backend != "ipvs" {
		return ip + " . 9000"
	}
	a := netip.MustParseAddr(ip).As4()
	return fmt.Sprintf("%02X%02X%02X%02X:", a[0], a[1], a[2], a[3])
}

// A client making 500 requests one after another, each on a new
// connection, while targets are added, re-weighted and drained, sees no
// failed request; once a drain started, no new request reaches its target.
func TestLBChangesUnderClientLoop(t *testing.T) {
	for _, backend := range lbBackends(t) {
		t.Run(backend, func(t *testing.T) {
			c := lbStart(t)
			c.must("network", "create", c.conf("loopnet", "10.220.57.0/24"))
			a, b, x := c.drainTarget("loopnet", "la"), c.drainTarget("loopnet", "lb"), c.drainTarget("loopnet", "lx")
			const vip = "10.220.61.2:80"
			c.lbService("loop", "--backend", backend, "--scheduler", "wrr", vip)
			c.lbMust("service loop updated\n", "lb", "add", "loop", a.ip+":80", b.ip+":80")

			type answer struct {
				page  string
				start time.Time
				err   error
			}
			answers := make([]answer, 500)
			progress := make(chan int, 500)
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer close(progress)
				for i := range answers {
					start := time.Now()
					body, err := testutil.HTTPGet("http://"+vip+"/", 5*time.Second)
					answers[i] = answer{body, start, err}
					progress <- i
				}
			}()
			at := func(n int) { // wait until the loop made n requests
				for i := range progress {
					if i+1 >= n {
						return
					}
				}
			}
			at(100)
			c.lbMust("service loop updated\n", "lb", "add", "loop", x.ip+":80")
			at(200)
			c.lbMust("service loop updated\n", "lb", "set", "loop", a.ip+":80", "--weight", "3")
			at(300)
			d := c.startDrain("2s", "loop", b.ip+":80")
			drainedAt := time.Now()
			out, err := d.wait(t)
			if err != nil || !strings.Contains(out, "drained from service loop") {
				t.Errorf("lb remove --drain during the loop: %v\n%s", err, out)
			}
			for range progress {
			}
			wg.Wait()

			count := map[string]int{}
			for i, r := range answers {
				if r.err != nil {
					t.Errorf("request %d of 500 failed: %v", i+1, r.err)
					continue
				}
				count[r.page]++
				if r.page == b.name && r.start.After(drainedAt) {
					t.Errorf("request %d, begun after the drain started, reached the draining target", i+1)
				}
			}
			if count[a.name] == 0 || count[b.name] == 0 || count[x.name] == 0 {
				t.Errorf("answers by target: %v; every target should have served some", count)
			}
			t.Logf("answers by target: %v", count)
		})
	}
}

// restore moves a service an older circuit programmed (the first nftables
// layout, a chain per target) to the current layout in place, while a
// client keeps asking: no request fails.
func TestLBRestoreMigratesOldLayout(t *testing.T) {
	if testutil.InVM() {
		t.Skip("nftables only: the host tier runs it")
	}
	c := lbStart(t)
	c.must("network", "create", c.conf("oldnet", "10.220.57.0/24"))
	a, b := c.drainTarget("oldnet", "oa"), c.drainTarget("oldnet", "ob")
	const vip = "10.220.61.3:80"
	c.lbService("old", "--backend", "nftables", vip)
	c.lbMust("service old updated\n", "lb", "add", "old", a.ip+":80", b.ip+":80")

	// What an older circuit left: the same service in the first layout.
	mustNft(t, "delete", "table", "inet", "circuit")
	old, err := legacy.New("")
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	svc := lb.Service{Name: "old", Address: vip, Protocol: "tcp", Scheduler: "rr",
		Targets: []lb.Target{{Address: a.ip + ":80", Weight: 1, Forward: "nat"}, {Address: b.ip + ":80", Weight: 1, Forward: "nat"}}}
	if err := old.Ensure(svc); err != nil {
		t.Fatal(err)
	}
	if tbl := mustNft(t, "list", "table", "inet", "circuit"); !strings.Contains(tbl, "svc-old/") {
		t.Fatalf("the old layout has no chain per target:\n%s", tbl)
	}

	stop := make(chan struct{})
	failures := make(chan error, 1000)
	done := make(chan struct{}, 100000) // one per request answered
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := testutil.HTTPGet("http://"+vip+"/", 5*time.Second); err != nil {
				failures <- err
			}
			done <- struct{}{}
		}
	}()
	requests := func(n int) {
		for range n {
			<-done
		}
	}
	requests(20) // on the old layout
	out := c.must("restore")
	requests(20) // on the new one
	close(stop)
	wg.Wait()
	close(failures)
	for err := range failures {
		t.Errorf("a request failed during the migration: %v", err)
	}
	if want := fmt.Sprintf("migrated to the current layout service old (%s, 2 targets) with nftables\nrestore: 1 action(s)\n", vip); out != want {
		t.Errorf("restore printed %q, want %q", out, want)
	}
	if tbl := mustNft(t, "list", "table", "inet", "circuit"); strings.Contains(tbl, "svc-old/") || !strings.Contains(tbl, "goto pick-") {
		t.Errorf("after restore, the old layout is left:\n%s", tbl)
	}
	if out := c.must("restore"); out != "restore: nothing to do\n" {
		t.Errorf("a second restore printed %q", out)
	}
}
