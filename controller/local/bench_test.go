package local

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/pkg/netns"
	"github.com/circuit-cni/circuit/pkg/testutil"
)

// BenchmarkConnectDisconnect times one Connect and one Disconnect of a
// process in its own network namespace, on a bridge network with host-local
// IPAM (the README's example, isGateway, with and without ipMasq), through
// the real CNI plugins. One op is the pair; connect-ms/op and
// disconnect-ms/op split it.
// ns/op and allocs/op count this process only: the plugins run as child
// processes, whose time is in ns/op but whose allocations are not.
func BenchmarkConnectDisconnect(b *testing.B) {
	testutil.RequireRoot(b)
	for _, masq := range []bool{true, false} {
		b.Run(fmt.Sprintf("ipMasq=%v", masq), func(b *testing.B) { benchConnectDisconnect(b, masq) })
	}
}

func benchConnectDisconnect(b *testing.B, ipMasq bool) {
	state, ipam, bridge := b.TempDir(), b.TempDir(), testutil.RandName("cbb")
	log := logrus.New()
	log.SetOutput(io.Discard)
	c, err := New(Config{StateDir: state, CNIPath: []string{testutil.CNIPath(b)}, Log: log})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.Cleanup(func() {
		c.DeleteNetwork(context.Background(), "benchnet", true)
		c.Close()
		exec.Command("ip", "link", "del", bridge).Run()
		pins, _ := filepath.Glob(filepath.Join(state, "netns", "*"))
		for _, pin := range pins {
			netns.Unpin(pin)
		}
	})
	conf := fmt.Appendf(nil, `{
  "cniVersion": "0.2.0", "name": "benchnet", "type": "bridge", "bridge": %q,
  "ipMasq": %v, "isGateway": true,
  "ipam": {"type": "host-local", "subnet": "10.210.200.0/22", "dataDir": %q, "routes": [{"dst": "0.0.0.0/0"}]}
}`, bridge, ipMasq, ipam)
	if _, err := c.CreateNetwork(ctx, api.CreateNetworkRequest{Config: conf}); err != nil {
		b.Fatal(err)
	}
	pid := fmt.Sprint(testutil.NewSleeper(b).PID)

	var conn, disc time.Duration
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		if _, err := c.Connect(ctx, api.ConnectRequest{Container: pid, Network: "benchnet"}); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := c.Disconnect(ctx, api.DisconnectRequest{Container: pid, Network: "benchnet"}); err != nil {
			b.Fatal(err)
		}
		conn += t1.Sub(t0)
		disc += time.Since(t1)
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) / float64(b.N) }
	b.ReportMetric(ms(conn+disc), "ms/op")
	b.ReportMetric(ms(conn), "connect-ms/op")
	b.ReportMetric(ms(disc), "disconnect-ms/op")
}
