package main

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// The CPU the report gives the agents comes from /proc/PID/stat; a command
// name with spaces and parentheses must not shift the fields.
func TestParseStatCPU(t *testing.T) {
	line := []byte("4242 (circuit (agent) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 150 37 0 0 20 0 12 0 500 1000000 3000 18446744073709551615\n")
	got, err := parseStatCPU(line)
	if err != nil {
		t.Fatal(err)
	}
	if want := 187 * 10 * time.Millisecond; got != want {
		t.Errorf("utime+stime = %s, want %s", got, want)
	}
	if _, err := parseStatCPU([]byte("4242 (short) S 1")); err == nil {
		t.Error("a truncated stat line parsed")
	}
}

func TestParseStatusKiB(t *testing.T) {
	status := []byte("Name:\tcircuit-agent\nVmPeak:\t 1300000 kB\nVmHWM:\t   25600 kB\nVmRSS:\t   24576 kB\n")
	for key, want := range map[string]int64{"VmHWM": 25600, "VmRSS": 24576} {
		got, err := parseStatusKiB(status, key)
		if err != nil || got != want {
			t.Errorf("%s = %d, %v; want %d", key, got, err, want)
		}
	}
	if _, err := parseStatusKiB(status, "VmSwap"); err == nil {
		t.Error("a missing key read as a value")
	}
}

// The convergence rounds count a packet as through only on an echo reply
// to their own request: a valid checksum on the way out, the ID and the
// source read back from what a raw socket hands over.
func TestEcho(t *testing.T) {
	req := echoRequest(0x0207, 9)
	if inetChecksum(req) != 0 {
		t.Errorf("the request's checksum does not verify: % x", req)
	}
	reply := append([]byte{0x45, 0, 0, 36, 0, 0, 0, 0, 64, 1, 0, 0, 10, 211, 129, 100, 10, 211, 128, 2}, req...)
	reply[20] = 0 // echo reply
	src, id, ok := echoReply(reply)
	if !ok || id != 0x0207 || src != netip.MustParseAddr("10.211.129.100") {
		t.Errorf("echoReply = %s, %#x, %v", src, id, ok)
	}
	unreachable := append([]byte(nil), reply...)
	unreachable[20] = 3
	if _, _, ok := echoReply(unreachable); ok {
		t.Error("a destination unreachable counted as a reply")
	}
	if _, _, ok := echoReply(reply[:24]); ok {
		t.Error("a truncated packet counted as a reply")
	}
}

func TestPrefixOf(t *testing.T) {
	_, n, _ := net.ParseCIDR("10.211.130.0/24")
	n.IP = n.IP.To16() // netlink hands IPv4 routes over in either form
	if p, ok := prefixOf(n); !ok || p != netip.MustParsePrefix("10.211.130.0/24") {
		t.Errorf("prefixOf = %s, %v", p, ok)
	}
}

func TestClusterSizes(t *testing.T) {
	defer func(nodes string, peers int) { clusterOpts.nodes, clusterOpts.peers = nodes, peers }(clusterOpts.nodes, clusterOpts.peers)
	clusterOpts.nodes, clusterOpts.peers = "32,2,8,8", 50
	sizes, peers, err := clusterSizes(false)
	if err != nil || len(sizes) != 3 || sizes[0] != 2 || sizes[2] != 32 || peers != 50 {
		t.Errorf("clusterSizes = %v, %d, %v; want [2 8 32], 50", sizes, peers, err)
	}
	if sizes, peers, _ := clusterSizes(true); len(sizes) != 1 || sizes[0] != 2 || peers != 2 {
		t.Errorf("smoke sizes = %v, %d; want [2], 2", sizes, peers)
	}
	for _, bad := range []string{"1,8", "2,65"} {
		clusterOpts.nodes = bad
		if _, _, err := clusterSizes(false); err == nil {
			t.Errorf("-cluster-nodes %s accepted", bad)
		}
	}
}

// The throughput runs start once the iperf3 server listens, as its
// namespace's /proc/net/tcp shows.
func TestListensOn(t *testing.T) {
	table := []byte(`  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0A00FA0A:1451 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0A00FA0A:9C40 0B00FA0A:1451 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
`)
	if !listensOn(table, 5201) {
		t.Error("the listener on 5201 was not found")
	}
	if listensOn(table, 40000) {
		t.Error("an established connection from port 40000 counted as listening")
	}
	if listensOn(table[:60], 5201) {
		t.Error("a header alone counted as listening")
	}
}

// etcd is ready once /health answers 200 with health "true".
func TestEtcdHealthReply(t *testing.T) {
	for reply, want := range map[string]bool{
		"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"health\":\"true\",\"reason\":\"\"}": true,
		"HTTP/1.0 503 Service Unavailable\r\n\r\n{\"health\":\"false\",\"reason\":\"RAFT NO LEADER\"}":   false,
		"HTTP/1.0 200 OK\r\n\r\n{\"health\":\"false\"}":                                                  false,
		"HTTP/1.0 200 OK\r\n\r\n": false,
		"":                        false,
	} {
		if got := etcdHealthReply([]byte(reply)); got != want {
			t.Errorf("etcdHealthReply(%q) = %v, want %v", reply, got, want)
		}
	}
}
