package testutil

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// IperfBin is where the tests expect iperf3.
const IperfBin = "/usr/bin/iperf3"

// RequireIperf skips a test when iperf3 is not installed.
func RequireIperf(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(IperfBin); err != nil {
		t.Skipf("iperf3 is not installed at %s", IperfBin)
	}
}

// IperfSeconds is how long each measurement sends.
const IperfSeconds = 2

// iperfTimeout bounds one measurement end to end (server start, the run,
// the results exchange), so a blackholed link fails instead of hanging.
const iperfTimeout = 20 * time.Second

// Iperf measures TCP throughput between an iperf3 server on the host, bound
// to addr (an address of the host's netns, such as a bridge gateway), and
// an iperf3 client inside the network namespace of process pid. With
// reverse false the client sends (the container's egress); with reverse
// true the host sends to the container (its ingress, iperf3 -R). It
// returns the receiver's bits per second (end.sum_received).
//
// It returns an error instead of failing the test so that several
// measurements can run at once from goroutines.
func Iperf(pid int, addr string, reverse bool) (float64, error) {
	return IperfFor(pid, addr, reverse, IperfSeconds, 0)
}

// IperfFor is Iperf sending for seconds, of which the first omit are left
// out of the result (iperf3 -O: TCP slow start and a shaper's initial
// burst are not the steady rate), with more client flags in extra (such
// as "-u", "-b", "2M" for UDP at 2 Mbit/s).
func IperfFor(pid int, addr string, reverse bool, seconds, omit int, extra ...string) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), iperfTimeout+time.Duration(seconds+omit)*time.Second)
	defer cancel()

	port, err := freePort(addr)
	if err != nil {
		return 0, err
	}
	var srvOut bytes.Buffer
	srv := exec.CommandContext(ctx, IperfBin, "-s", "-1", "-B", addr, "-p", strconv.Itoa(port))
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	srv.WaitDelay = time.Second
	if err := srv.Start(); err != nil {
		return 0, fmt.Errorf("start iperf3 server: %w", err)
	}
	srvDone := make(chan struct{})
	go func() { srv.Wait(); close(srvDone) }()
	stopServer := func() {
		srv.Process.Kill()
		<-srvDone
	}
	if err := waitListening(ctx, port, srvDone); err != nil {
		stopServer()
		return 0, fmt.Errorf("iperf3 server on %s:%d: %w\n%s", addr, port, err, srvOut.String())
	}

	args := []string{"-t", strconv.Itoa(pid), "-n", IperfBin,
		"-c", addr, "-p", strconv.Itoa(port), "-t", strconv.Itoa(seconds), "-O", strconv.Itoa(omit), "-J", "--connect-timeout", "3000"}
	if reverse {
		args = append(args, "-R")
	}
	args = append(args, extra...)
	cli := exec.CommandContext(ctx, "nsenter", args...)
	var out, stderr bytes.Buffer
	cli.Stdout, cli.Stderr = &out, &stderr
	cli.WaitDelay = time.Second
	runErr := cli.Run()

	// A one-off server exits once its client is done; give it a moment,
	// then make sure it is gone whatever happened.
	select {
	case <-srvDone:
	case <-time.After(2 * time.Second):
		stopServer()
	}

	bps, perr := ParseIperf(out.Bytes())
	if runErr != nil || perr != nil {
		return 0, fmt.Errorf("iperf3 client in pid %d to %s:%d (reverse %v): %v\nstdout: %s\nstderr: %s\nserver: %s",
			pid, addr, port, reverse, errors.Join(runErr, perr), clip(out.String()), stderr.String(), srvOut.String())
	}
	return bps, nil
}

// MustIperf is Iperf that fails the test on error. It returns Mbit/s.
func MustIperf(t testing.TB, pid int, addr string, reverse bool) float64 {
	t.Helper()
	bps, err := Iperf(pid, addr, reverse)
	if err != nil {
		t.Fatal(err)
	}
	return bps / 1e6
}

// ParseIperf reads end.sum_received.bits_per_second from iperf3 -J
// output; an error iperf3 reported there is returned as "iperf3: ...".
func ParseIperf(b []byte) (float64, error) {
	var r struct {
		Error string `json:"error"`
		End   struct {
			SumReceived *struct {
				Bytes         float64 `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return 0, fmt.Errorf("parse iperf3 JSON: %w", err)
	}
	if r.Error != "" {
		return 0, fmt.Errorf("iperf3: %s", r.Error)
	}
	if r.End.SumReceived == nil {
		return 0, errors.New("iperf3 JSON has no end.sum_received")
	}
	if r.End.SumReceived.Bytes <= 0 || r.End.SumReceived.BitsPerSecond <= 0 {
		return 0, fmt.Errorf("iperf3 received nothing (%v bytes)", r.End.SumReceived.Bytes)
	}
	return r.End.SumReceived.BitsPerSecond, nil
}

// freePort asks the kernel for a TCP port that is free on addr.
func freePort(addr string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
	if err != nil {
		return 0, fmt.Errorf("find a free port on %s: %w", addr, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitListening waits until some socket of this netns listens on port.
// It reads /proc/net/tcp rather than connecting: a probe connection would
// be the one-off server's only client.
func waitListening(ctx context.Context, port int, exited <-chan struct{}) error {
	hexPort := fmt.Sprintf(":%04X", port)
	for {
		for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
			b, _ := os.ReadFile(f)
			for _, l := range strings.Split(string(b), "\n") {
				fields := strings.Fields(l)
				// sl local_address rem_address st ...; st 0A is LISTEN.
				if len(fields) > 3 && strings.HasSuffix(fields[1], hexPort) && fields[3] == "0A" {
					return nil
				}
			}
		}
		select {
		case <-exited:
			return errors.New("exited before listening")
		case <-ctx.Done():
			return fmt.Errorf("not listening: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func clip(s string) string {
	if len(s) > 2000 {
		return s[:2000] + "..."
	}
	return s
}
