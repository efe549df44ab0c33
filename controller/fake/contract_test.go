package fake_test

import (
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/circuit-cni/circuit/controller"
	"github.com/circuit-cni/circuit/controller/contract"
	"github.com/circuit-cni/circuit/controller/fake"
)

// fakeEnv is the contract suite's world in memory: a kernel like this
// project's hosts (no netem, nftables only).
type fakeEnv struct {
	f *fake.Fake
}

var subnet atomic.Int32

func (e fakeEnv) Controller() controller.Controller { return e.f }

func (e fakeEnv) Conf(name string) []byte {
	return fmt.Appendf(nil, `{"cniVersion": "1.0.0", "name": %q, "plugins": [
	  {"type": "bridge", "capabilities": {"ips": true, "mac": true}, "ipam": {"type": "host-local", "subnet": "10.241.%d.0/24"}},
	  {"type": "portmap", "capabilities": {"portMappings": true}}]}`, name, subnet.Add(1)%250)
}

func (e fakeEnv) PlainConf(name string) []byte {
	return fmt.Appendf(nil, `{"cniVersion": "1.0.0", "name": %q, "type": "bridge", "ipam": {"type": "host-local", "subnet": "10.241.%d.0/24"}}`,
		name, subnet.Add(1)%250)
}

func (e fakeEnv) Start() contract.Container {
	pid := e.f.Start()
	return contract.Container{Ref: strconv.Itoa(pid), ID: fmt.Sprintf("pid-%d-%d", pid, pid*7), PID: pid, Stop: func() { e.f.Stop(pid) }}
}

func (e fakeEnv) Netem() bool { return false }

func TestContract(t *testing.T) {
	contract.Run(t, func(t *testing.T) contract.Env {
		return fakeEnv{fake.New(fake.WithoutNetem(), fake.WithBackends("nftables"))}
	})
}

// fullEnv is the same with a kernel that has everything (the VM tier's).
type fullEnv struct{ fakeEnv }

func (e fullEnv) Netem() bool { return true }

func TestContractFullKernel(t *testing.T) {
	contract.Run(t, func(t *testing.T) contract.Env { return fullEnv{fakeEnv{fake.New()}} })
}
