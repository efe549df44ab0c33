package local

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sync/atomic"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/circuit-cni/circuit/controller"
	"github.com/circuit-cni/circuit/controller/contract"
	"github.com/circuit-cni/circuit/pkg/netns"
	"github.com/circuit-cni/circuit/pkg/qos"
	"github.com/circuit-cni/circuit/pkg/runc"
	"github.com/circuit-cni/circuit/pkg/testutil"
)

// contractEnv is the contract suite's world on the real kernel: a state dir,
// a host-local data dir, a bridge and subnet per network, sleepers in
// namespaces of their own for containers.
type contractEnv struct {
	t    *testing.T
	c    *Controller
	ipam string
}

// contractNet numbers the suite's networks: 10.241.N.0/24.
var contractNet atomic.Int32

func newContractEnv(t *testing.T) contract.Env {
	testutil.RequireRoot(t)
	if testutil.InVM() {
		t.Skip("the contract suite needs no kernel the host lacks")
	}
	state := t.TempDir()
	log := logrus.New()
	log.SetOutput(os.Stderr)
	c, err := New(Config{StateDir: state, CNIPath: []string{testutil.CNIPath(t)}, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	e := &contractEnv{t: t, c: c, ipam: t.TempDir()}
	t.Cleanup(func() { cleanupController(c, state) })
	return e
}

func (e *contractEnv) Controller() controller.Controller { return e.c }

func (e *contractEnv) Conf(name string) []byte {
	n := contractNet.Add(1) % 250
	bridge := testutil.RandName("cct")
	e.t.Cleanup(func() { exec.Command("ip", "link", "del", bridge).Run() })
	return fmt.Appendf(nil, `{"cniVersion": "1.0.0", "name": %q, "plugins": [
  {"type": "bridge", "bridge": %q, "isGateway": true, "capabilities": {"ips": true, "mac": true},
   "ipam": {"type": "host-local", "subnet": "10.241.%d.0/24", "dataDir": %q}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}`, name, bridge, n, e.ipam)
}

func (e *contractEnv) PlainConf(name string) []byte {
	n := contractNet.Add(1) % 250
	bridge := testutil.RandName("cct")
	e.t.Cleanup(func() { exec.Command("ip", "link", "del", bridge).Run() })
	return fmt.Appendf(nil, `{
  "cniVersion": "1.0.0", "name": %q, "type": "bridge", "bridge": %q, "isGateway": true,
  "ipam": {"type": "host-local", "subnet": "10.241.%d.0/24", "dataDir": %q}
}`, name, bridge, n, e.ipam)
}

func (e *contractEnv) Start() contract.Container {
	s := testutil.NewSleeper(e.t)
	start, err := runc.StartTime(s.PID)
	if err != nil {
		e.t.Fatal(err)
	}
	return contract.Container{Ref: fmt.Sprint(s.PID), ID: fmt.Sprintf("pid-%d-%d", s.PID, start), PID: s.PID, Stop: s.Kill}
}

func (e *contractEnv) Netem() bool { return qos.NetemSupported("/proc/self/ns/net") == nil }

func TestContract(t *testing.T) {
	contract.Run(t, newContractEnv)
}

// cleanupController tears down what a failed test may leave: peers the
// proper way, services, then pins.
func cleanupController(c *Controller, state string) {
	ctx := context.Background()
	nets, _ := c.ListNetworks(ctx)
	for _, n := range nets {
		c.DeleteNetwork(ctx, n.Name, true)
	}
	svcs, _ := c.ListServices(ctx)
	for _, s := range svcs {
		c.DeleteService(ctx, s.Name)
	}
	c.Close()
	pins, _ := os.ReadDir(state + "/netns")
	for _, p := range pins {
		netns.Unpin(state + "/netns/" + p.Name())
	}
}
