package cmd

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/circuit-cni/circuit/api"
)

func TestTableLayout(t *testing.T) {
	t.Parallel()
	tb := table[[]string]{
		columns: []column{{"NAME", 6}, {"ADDR", 4}, {"LAST", 0}},
		row:     func(r []string) []string { return r },
		details: func(r []string) []string { return []string{"  -> " + r[0]} },
	}
	var b bytes.Buffer
	if err := tb.write(&b, [][]string{{"a", "b", "c"}, {"longname", "wide", ""}}); err != nil {
		t.Fatal(err)
	}
	// Cells are padded to the width, keep one space when wider, and lines
	// have no trailing blanks.
	want := "NAME  ADDR LAST\na     b   c\n  -> a\nlongname wide\n  -> longname\n"
	if b.String() != want {
		t.Errorf("got:\n%q\nwant:\n%q", b.String(), want)
	}
}

func TestNetworkListFormats(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.expect("[]\n", "network", "list", "--format", "json")
	h.expect("", "network", "list", "--format", "{{.Name}}")
	h.expect("NAME                TYPE                VERSION             PEERS\n", "network", "list")
	h.expect("", "network", "list", "-q")

	// A conflist, and a config with characters JSON would HTML-escape.
	list := `{"cniVersion": "1.0.0", "name": "chain", "note": "a<b&c>d",
	  "plugins": [{"type": "bridge", "ipam": {"subnet": "10.1.0.0/16"}}, {"type": "portmap"}, {"type": "bandwidth"}]}`
	path := filepath.Join(t.TempDir(), "chain.conflist")
	if err := os.WriteFile(path, []byte(list), 0o644); err != nil {
		t.Fatal(err)
	}
	h.must("network", "create", path)
	h.must("network", "create", h.conf("a-very-long-network-name", "macvlan", ""))
	h.must("network", "connect", "4668", "chain")
	h.must("network", "connect", "4670", "chain")
	h.must("network", "connect", "4669", "chain")
	if err := h.fake.AddPeer(api.Peer{Network: "chain", ContainerID: "zz", PID: 77, IfName: "eth0", IPs: []string{"10.1.0.9/16", "fd00::9/64"}, State: api.PeerConnecting}); err != nil {
		t.Fatal(err)
	}

	h.expect(`NAME                TYPE                VERSION             PEERS
a-very-long-network-name macvlan             0.2.0
chain               bridge              1.0.0               10.1.0.2 (4668), 10.1.0.4 (4669), 10.1.0.3 (4670), 10.1.0.9,fd00::9 (77, connecting)
`, "network", "list")
	h.expect("a-very-long-network-name\nchain\n", "network", "list", "--quiet")
	h.expect("a-very-long-network-name\nchain\n", "network", "list", "-q", "--format", "json")
	h.expect("a-very-long-network-name macvlan 0\nchain bridge,portmap,bandwidth 4\n",
		"network", "list", "--format", `{{.Name}} {{join .Plugins ","}} {{len .Peers}}`)
	// One line per item, even when the template prints nothing for it.
	h.expect("\n\"chain\"\n", "network", "list", "--format", `{{if .IsList}}{{json .Name}}{{end}}`)

	out := h.must("network", "list", "--format", "json")
	var nets []api.Network
	if err := json.Unmarshal([]byte(out), &nets); err != nil {
		t.Fatalf("json output: %v\n%s", err, out)
	}
	if len(nets) != 2 || nets[1].Name != "chain" || len(nets[1].Peers) != 4 || !nets[1].IsList {
		t.Errorf("json: %+v", nets)
	}
	if !strings.Contains(out, `"note": "a<b&c>d"`) || !strings.HasPrefix(out, "[\n    {\n        \"name\": ") {
		t.Errorf("json is HTML-escaped or not indented:\n%s", out)
	}

	// inspect: one object, the stored config as JSON.
	out = h.must("network", "inspect", "chain")
	var n api.Network
	if err := json.Unmarshal([]byte(out), &n); err != nil {
		t.Fatalf("inspect: %v\n%s", err, out)
	}
	if n.Name != "chain" || n.Type != "bridge" || len(n.Peers) != 4 || !strings.Contains(out, "\"config\": {\n        \"cniVersion\": \"1.0.0\"") {
		t.Errorf("inspect:\n%s", out)
	}
	h.expect("[]\n", "network", "inspect", "a-very-long-network-name", "--format", "{{json .Peers}}")
	if got := h.must("network", "inspect", "chain", "--format", "table"); got != out {
		t.Errorf("inspect --format table should print JSON:\n%s", got)
	}
}

func TestQoSShow(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.must("network", "create", h.conf("sandbox", "bridge", "10.100.10.0/24"))
	h.expect("[]\n", "network", "qos", "show", "sandbox", "--format", "json")
	h.must("network", "connect", "4668", "sandbox")
	h.must("network", "connect", "4669", "sandbox")
	h.must("network", "qos", "set", "--rate", "5000", "--ceiling", "6000", "--delay", "50ms", "--jitter", "5ms", "--loss", "0.5%", "--direction", "both", "sandbox")
	h.must("network", "qos", "set", "--rate", "1mbit", "--container", "4669", "sandbox")

	h.expect(`CONTAINER           PID     IFNAME  SOURCE     RATE      CEILING   DELAY   JITTER  LOSS   DIRECTION  EGRESS-BYTES  EGRESS-DROPS  INGRESS-BYTES  INGRESS-DROPS
pid-4668-32676      4668    eth0    network    5mbit     6mbit     50ms    5ms     0.5%   both       0             0             0              0
pid-4669-32683      4669    eth0    container  1mbit     -         -       -       -      -          0             0             -              -
`, "network", "qos", "show", "sandbox")
	h.expect("pid-4668-32676 network 5000000\npid-4669-32683 container 1000000\n", "network", "qos", "show", "sandbox", "--format", "{{.ContainerID}} {{.Source}} {{.Policy.Rate}}")

	h.expect("qos reset for sandbox\n", "network", "qos", "reset", "--container", "4669", "sandbox")
	h.expect("pid-4668-32676 network\npid-4669-32683 network\n", "network", "qos", "show", "sandbox", "--format", "{{.ContainerID}} {{.Source}}")
	h.expect("qos reset for sandbox\n", "network", "qos", "reset", "sandbox")
	h.expect("pid-4668-32676 none\npid-4669-32683 none\n", "network", "qos", "show", "sandbox", "--format", "{{.ContainerID}} {{.Source}}")
}

func TestLBFormats(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.expect("[]\n", "lb", "list", "--format", "json")
	h.must("lb", "create", "web", "[fd00::1]:443", "--protocol", "sctp", "--scheduler", "wlc", "--backend", "ipvs", "--persistence", "30s")
	h.must("lb", "create", "demo", "192.168.100.235:80")
	h.must("lb", "add", "demo", "10.254.1.196:80", "10.254.1.20:80")
	h.must("lb", "add", "demo", "10.254.1.3:80", "--weight", "5", "--forward", "dr")
	h.must("lb", "add", "demo", "10.254.1.4:80", "--weight", "2")

	h.expect(`NAME                ADDR                 PROTOCOL            SCHEDULER
demo                192.168.100.235:80   tcp                 rr
  -> 10.254.1.3:80  weight 5  dr
  -> 10.254.1.4:80  weight 2
  -> 10.254.1.20:80
  -> 10.254.1.196:80
web                 [fd00::1]:443        sctp                wlc
`, "lb", "list", "--details")
	h.expect("demo\nweb\n", "lb", "list", "-q")
	h.expect("demo 4\nweb 0\n", "lb", "ls", "--format", "{{.Name}} {{len .Targets}}")

	h.fake.SetServiceStats("demo", api.Counters{Connections: 12, Packets: 340, Bytes: 45000},
		map[string]api.Counters{"10.254.1.196:80": {Connections: 12, Packets: 340, Bytes: 45000}})
	h.expect(`NAME                ADDR                 PROTOCOL            SCHEDULER
demo                192.168.100.235:80   tcp                 rr

backend:      ipvs
persistence:  -
drain:        30s
connections:  12
packets:      340
bytes:        45000

TARGET                  WEIGHT  FORWARD  ACTIVE  CONNECTIONS  PACKETS      BYTES
10.254.1.3:80           5       dr       0       0            0            0
10.254.1.4:80           2       nat      0       0            0            0
10.254.1.20:80          1       nat      0       0            0            0
10.254.1.196:80         1       nat      0       12           340          45000
`, "lb", "show", "demo")
	h.expect(`NAME                ADDR                 PROTOCOL            SCHEDULER
web                 [fd00::1]:443        sctp                wlc

backend:      ipvs
persistence:  30s
drain:        30s
connections:  0
packets:      0
bytes:        0

no targets
`, "lb", "show", "web")

	out := h.must("lb", "show", "demo", "--format", "json")
	var st api.ServiceStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if st.Name != "demo" || st.Stats.Bytes != 45000 || len(st.Service.Targets) != 4 || st.Targets["10.254.1.196:80"].Connections != 12 {
		t.Errorf("lb show json: %+v", st)
	}
	h.expect("12\n", "lb", "show", "demo", "--format", `{{(index .Targets "10.254.1.196:80").Connections}}`)
}

func TestRestoreGC(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.expect("restore: nothing to do\n", "restore")
	h.expect("gc: nothing to do\n", "gc")
	h.expect("{\n    \"actions\": []\n}\n", "gc", "--format", "json")

	h.must("network", "create", h.conf("sandbox", "bridge", "10.100.10.0/24"))
	h.must("network", "qos", "set", "--rate", "100", "sandbox")
	h.must("lb", "create", "demo", "192.168.100.235:80")
	h.expect("restore: nothing to do\n", "restore")
	h.fake.Flush() // a reboot
	h.expect("restored service demo (192.168.100.235:80, 0 targets) with ipvs\nrestore: 1 action(s)\n", "restore")

	for _, p := range []api.Peer{
		{Network: "sandbox", ContainerID: "dead", PID: 1, IfName: "eth0", State: api.PeerConnecting},
		{Network: "sandbox", ContainerID: "live", PID: 2, IfName: "eth0", State: api.PeerConnected},
	} {
		if err := h.fake.AddPeer(p); err != nil {
			t.Fatal(err)
		}
	}
	h.expect("would disconnect dead from sandbox (an interrupted connect)\ngc: dry run, 1 action(s), nothing changed\n", "gc", "--dry-run")
	h.expect("would disconnect dead from sandbox (an interrupted connect)\n", "gc", "--dry-run", "--format", "{{range .Actions}}{{.}}{{end}}")
	h.expect("disconnect dead from sandbox (an interrupted connect)\ngc: 1 action(s)\n", "gc")
	h.expect("gc: nothing to do\n", "gc")
	h.expect("live\n", "network", "inspect", "sandbox", "--format", "{{range .Peers}}{{.ContainerID}}{{end}}")
}

func TestCreateFromStdin(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.stdin = `{"cniVersion": "0.4.0", "name": "piped", "type": "ptp"}`
	h.expect("piped created\n", "network", "create", "-")

	h.stdin = `{"name": "x"`
	if r := h.run("network", "create", "-"); r.err == nil || !strings.Contains(r.line(), "JSON") {
		t.Errorf("malformed stdin: %q", r.line())
	}
	h.stdin = strings.Repeat(" ", maxConfigSize+1)
	if r := h.run("network", "create", "-"); r.line() != "circuit: read -: larger than 1 MiB" {
		t.Errorf("oversized stdin: %q", r.line())
	}

	// --force replaces a definition.
	h.stdin = `{"cniVersion": "0.4.0", "name": "piped", "type": "bridge"}`
	if r := h.run("network", "create", "-"); r.line() != "circuit: create network piped: already exists (use --force to replace it)" {
		t.Errorf("duplicate: %q", r.line())
	}
	h.expect("piped created\n", "network", "create", "--force", "-")
	h.expect("bridge\n", "network", "inspect", "piped", "--format", "{{.Type}}")
}
