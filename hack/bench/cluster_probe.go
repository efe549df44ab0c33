package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/circuit-cni/circuit/pkg/overlay"
	"github.com/circuit-cni/circuit/pkg/testutil"
)

// What the cluster section observes of the nodes' kernels: when routes
// appear (netlink events, so no polling loads the machine while the agents
// converge), when a packet first gets through (ICMP echo from a
// container's namespace), and TCP throughput (iperf3).

// routeLog records, for one node's namespace, when a route of circuit's
// overlay protocol to each destination first appeared.
type routeLog struct {
	mu   sync.Mutex
	seen map[netip.Prefix]time.Time
	err  error // the subscription's, if it broke
	done chan struct{}
}

// watchRoutes subscribes to the route changes of the namespace at nsPath.
func watchRoutes(nsPath string) (*routeLog, error) {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, err
	}
	defer ns.Close() // the subscription's socket keeps the namespace
	l := &routeLog{seen: map[netip.Prefix]time.Time{}, done: make(chan struct{})}
	updates := make(chan netlink.RouteUpdate, 256)
	err = netlink.RouteSubscribeWithOptions(updates, l.done, netlink.RouteSubscribeOptions{
		Namespace:     &ns,
		ErrorCallback: func(err error) { l.mu.Lock(); l.err = err; l.mu.Unlock() },
	})
	if err != nil {
		return nil, fmt.Errorf("watch routes in %s: %w", nsPath, err)
	}
	go func() {
		for u := range updates {
			if u.Type != unix.RTM_NEWROUTE || u.Protocol != overlay.RouteProtocol || u.Dst == nil {
				continue
			}
			at := time.Now()
			p, ok := prefixOf(u.Dst)
			if !ok {
				continue
			}
			l.mu.Lock()
			if _, had := l.seen[p]; !had {
				l.seen[p] = at
			}
			l.mu.Unlock()
		}
	}()
	return l, nil
}

func (l *routeLog) stop() {
	select {
	case <-l.done:
	default:
		close(l.done)
	}
}

// firstSeen is when a route to p first appeared (false: not yet).
func (l *routeLog) firstSeen(p netip.Prefix) (time.Time, bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	t, ok := l.seen[p]
	return t, ok, l.err
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones).Masked(), true
}

// overlayBlock is the IPv4 block a node holds on a cluster network, read
// from its overlay device (the agent puts each block's network address on
// it, as a /32); false while it has none.
func overlayBlock(h *netlink.Handle, device string, blockBits int) (netip.Prefix, bool) {
	link, err := h.LinkByName(device)
	if err != nil {
		return netip.Prefix{}, false
	}
	addrs, err := h.AddrList(link, netlink.FAMILY_V4)
	if err != nil { // a dump interrupted by a change: the next poll reads it
		return netip.Prefix{}, false
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok {
			return netip.PrefixFrom(ip, blockBits).Masked(), true
		}
	}
	return netip.Prefix{}, false
}

// pinger sends ICMP echo requests from inside a container's network
// namespace, through a raw socket the benchmark holds (opened there), so
// the first reply is timed without starting a process.
type pinger struct {
	fd int
}

func openPinger(nsPath string) (*pinger, error) {
	p := &pinger{fd: -1}
	err := inNetns(nsPath, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
		if err != nil {
			return fmt.Errorf("raw ICMP socket: %w", err)
		}
		p.fd = fd
		// A short receive timeout lets the reader see it was stopped.
		tv := unix.NsecToTimeval((10 * time.Millisecond).Nanoseconds())
		return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	})
	if err != nil {
		if p.fd >= 0 {
			unix.Close(p.fd)
		}
		return nil, err
	}
	return p, nil
}

func (p *pinger) close() { unix.Close(p.fd) }

// probe is one run of echo requests to one address.
type probe struct {
	first chan time.Time // the first reply's arrival, once
	stopc chan struct{}
	wg    sync.WaitGroup
}

// start sends an echo request to dst every interval, with id marking this
// run's requests (a late reply to an earlier run is ignored), until stop.
func (p *pinger) start(dst netip.Addr, id uint16, interval time.Duration) *probe {
	pr := &probe{first: make(chan time.Time, 1), stopc: make(chan struct{})}
	to := &unix.SockaddrInet4{Addr: dst.As4()}
	pr.wg.Add(2)
	go func() {
		defer pr.wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for seq := uint16(0); ; seq++ {
			unix.Sendto(p.fd, echoRequest(id, seq), 0, to) // unreachable until the route is there
			select {
			case <-pr.stopc:
				return
			case <-t.C:
			}
		}
	}()
	go func() {
		defer pr.wg.Done()
		buf := make([]byte, 1500)
		for {
			select {
			case <-pr.stopc:
				return
			default:
			}
			n, _, err := unix.Recvfrom(p.fd, buf, 0)
			if err != nil {
				continue // the receive timeout: look at stopc again
			}
			at := time.Now()
			if src, rid, ok := echoReply(buf[:n]); ok && rid == id && src == dst {
				select {
				case pr.first <- at:
				default:
				}
			}
		}
	}()
	return pr
}

func (pr *probe) stop() {
	close(pr.stopc)
	pr.wg.Wait()
}

// echoRequest is an ICMP echo request with an 8-byte payload.
func echoRequest(id, seq uint16) []byte {
	b := make([]byte, 16)
	b[0] = 8 // echo request; code 0
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	copy(b[8:], "circuit!")
	binary.BigEndian.PutUint16(b[2:], inetChecksum(b))
	return b
}

// echoReply reads an IPv4 packet as a raw ICMP socket receives it (the IP
// header first): its source and echo ID if it is an echo reply.
func echoReply(pkt []byte) (netip.Addr, uint16, bool) {
	if len(pkt) < 20 || pkt[0]>>4 != 4 {
		return netip.Addr{}, 0, false
	}
	hl := int(pkt[0]&0x0f) * 4
	if len(pkt) < hl+8 || pkt[hl] != 0 {
		return netip.Addr{}, 0, false
	}
	src := netip.AddrFrom4([4]byte(pkt[12:16]))
	return src, binary.BigEndian.Uint16(pkt[hl+4:]), true
}

// inetChecksum is the Internet checksum (RFC 1071) of b.
func inetChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// iperfServer is an iperf3 server in a network namespace, bound to addr.
type iperfServer struct {
	cmd    *exec.Cmd
	addr   string
	waited chan struct{}
}

const iperfPort = 5201

// startIperfServer starts the server and waits until it listens.
func startIperfServer(ctx context.Context, nsPath, addr string) (*iperfServer, error) {
	s := &iperfServer{addr: addr, waited: make(chan struct{})}
	s.cmd = exec.Command("nsenter", "--net="+nsPath, "iperf3", "-s", "-B", addr, "-p", strconv.Itoa(iperfPort))
	if err := startKept(s.cmd); err != nil {
		return nil, fmt.Errorf("start iperf3 server: %w", err)
	}
	go func() { s.cmd.Wait(); close(s.waited) }()
	// nsenter execs iperf3 in place: /proc/PID/net is the namespace's.
	tcp := fmt.Sprintf("/proc/%d/net/tcp", s.cmd.Process.Pid)
	for deadline := time.Now().Add(startBound); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		select {
		case <-s.waited:
			return nil, fmt.Errorf("iperf3 server on %s exited at once", addr)
		default:
		}
		if err := ctx.Err(); err != nil {
			s.stop()
			return nil, err
		}
		if raw, err := os.ReadFile(tcp); err == nil && listensOn(raw, iperfPort) {
			return s, nil
		}
	}
	s.stop()
	return nil, fmt.Errorf("iperf3 server on %s not listening after %s", addr, startBound)
}

// listensOn tells whether a /proc/net/tcp table has a socket listening on
// port (the local address is hex IP:port; state 0A is LISTEN).
func listensOn(table []byte, port int) bool {
	want := fmt.Sprintf(":%04X", port)
	for _, l := range strings.Split(string(table), "\n")[1:] {
		f := strings.Fields(l)
		if len(f) > 3 && strings.HasSuffix(f[1], want) && f[3] == "0A" {
			return true
		}
	}
	return false
}

func (s *iperfServer) stop() {
	s.cmd.Process.Kill()
	<-s.waited
}

// iperfFrom runs an iperf3 client in the namespace at nsPath against s
// for seconds, leaving the first omit out (slow start), and returns the
// receiver's Mbit/s. A server still busy with the last test refuses a
// new one for a moment: that is tried again.
func iperfFrom(ctx context.Context, nsPath string, s *iperfServer, seconds, omit int) (float64, error) {
	args := []string{"--net=" + nsPath, "iperf3", "-c", s.addr, "-p", strconv.Itoa(iperfPort),
		"-t", strconv.Itoa(seconds), "-O", strconv.Itoa(omit), "-J", "--connect-timeout", "10000"}
	var err error
	for deadline := time.Now().Add(startBound); ; {
		r, rerr := execTimed(ctx, nil, nil, "nsenter", args...)
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		// iperf3 -J says what went wrong in its JSON; the error of the
		// run would carry all of it.
		var bps float64
		if bps, err = testutil.ParseIperf(r.out); err == nil {
			return bps / 1e6, nil
		}
		if rerr != nil && len(r.out) == 0 {
			err = rerr
		}
		if !strings.Contains(err.Error(), "busy") && !strings.Contains(err.Error(), "refused") || time.Now().After(deadline) {
			return 0, err
		}
		if serr := sleepCtx(ctx, 50*time.Millisecond); serr != nil {
			return 0, serr
		}
	}
}
