package local

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/pkg/cni"
	"github.com/circuit-cni/circuit/pkg/lb"
	"github.com/circuit-cni/circuit/pkg/netns"
	"github.com/circuit-cni/circuit/pkg/qos"
	"github.com/circuit-cni/circuit/pkg/runc"
)

// kernel is everything the controller asks of the host, each part a small
// interface over one pkg/ library.
type kernel struct {
	cni    cniRuntime
	ns     namespaces
	shaper shaper
	lb     lbOpener
	procs  processes
}

// cniRuntime runs plugin chains (pkg/cni).
type cniRuntime interface {
	Add(ctx context.Context, cfg *cni.Config, rc cni.RuntimeConf) (*cni.Result, error)
	Del(ctx context.Context, cfg *cni.Config, rc cni.RuntimeConf) error
	DelEach(ctx context.Context, cfg *cni.Config, rc cni.RuntimeConf) error
	GC(ctx context.Context, cfg *cni.Config, valid []cni.RuntimeConf) error
	Cached(network string) ([]cni.RuntimeConf, error)
}

// namespaces pins and inspects network namespaces (pkg/netns).
type namespaces interface {
	Pin(src, dst string) error
	Unpin(path string) error
	// IsNetns reports whether path is a live network namespace.
	IsNetns(path string) bool
	// Same reports whether two paths name the same namespace.
	Same(a, b string) bool
	// ID identifies a namespace (device and inode).
	ID(path string) (string, error)
	// Links lists the interfaces in a namespace.
	Links(nsPath string) ([]string, error)
	// BridgePorts lists a bridge's ports; DeleteLink deletes an interface.
	BridgePorts(nsPath, bridge string) ([]string, error)
	DeleteLink(nsPath, name string) error
	// LinkInfo reads ifname's MAC and, for a veth, its host side's name.
	LinkInfo(nsPath, ifname, hostPath string) (mac, hostIf string, err error)
	// WaitSettled waits, a bounded time, until those of addrs assigned in
	// the namespace have passed IPv6 duplicate address detection.
	WaitSettled(nsPath string, addrs []string) error
}

// shaper installs and reads traffic control (pkg/qos).
type shaper interface {
	Apply(nsPath, ifname string, p qos.Policy) error
	Reset(nsPath, ifname string) error
	Stats(nsPath, ifname string) (egress, ingress *qos.Counters, err error)
	NetemSupported(nsPath string) error
}

// lbOpener opens a load-balancing backend by name ("auto" chooses) in the
// host's netns (pkg/lb).
type lbOpener func(name string) (lb.Backend, error)

// processes reads the process table (/proc, runc's state).
type processes interface {
	// StartTime is a process's start in clock ticks since boot.
	StartTime(pid int) (uint64, error)
	// Self is this process.
	Self() api.Process
	// PluginContainers are the CNI_CONTAINERIDs that running CNI plugins
	// work on.
	PluginContainers() map[string]bool
	// Resolve finds a running container by PID or runc ID.
	Resolve(runcRoot, arg string) (*runc.Container, error)
	// BootID names this boot of the kernel.
	BootID() string
}

// hostKernel is the real thing.
func hostKernel(cfg Config) kernel {
	return kernel{
		cni:    cni.NewRuntime(cfg.CNIPath, filepath.Join(cfg.StateDir, "cache")),
		ns:     hostNamespaces{},
		shaper: hostShaper{},
		lb:     openBackend,
		procs:  hostProcesses{},
	}
}

type hostNamespaces struct{}

func (hostNamespaces) Pin(src, dst string) error             { return netns.Pin(src, dst) }
func (hostNamespaces) Unpin(path string) error               { return netns.Unpin(path) }
func (hostNamespaces) IsNetns(path string) bool              { return netns.IsNetns(path) }
func (hostNamespaces) Same(a, b string) bool                 { return netns.Same(a, b) }
func (hostNamespaces) ID(path string) (string, error)        { return netns.ID(path) }
func (hostNamespaces) Links(nsPath string) ([]string, error) { return netns.LinkNames(nsPath) }

// settleLimit bounds the wait for duplicate address detection: one probe a
// second after a random delay of up to one more, by the kernel's defaults.
const settleLimit = 3 * time.Second

func (hostNamespaces) WaitSettled(nsPath string, addrs []string) error {
	return netns.WaitSettled(nsPath, addrs, settleLimit)
}

func (hostNamespaces) LinkInfo(nsPath, ifname, hostPath string) (string, string, error) {
	return netns.LinkInfo(nsPath, ifname, hostPath)
}

type hostShaper struct{}

func (hostShaper) Apply(nsPath, ifname string, p qos.Policy) error {
	return qos.Apply(nsPath, ifname, p)
}
func (hostShaper) Reset(nsPath, ifname string) error { return qos.Reset(nsPath, ifname) }
func (hostShaper) Stats(nsPath, ifname string) (*qos.Counters, *qos.Counters, error) {
	return qos.Stats(nsPath, ifname)
}
func (hostShaper) NetemSupported(nsPath string) error { return qos.NetemSupported(nsPath) }

// openBackend opens the backend a service was created with; "auto" picks
// IPVS when the kernel has it, else nftables.
func openBackend(name string) (lb.Backend, error) {
	if name == "" || name == api.BackendAuto {
		return lb.Auto("")
	}
	b, err := lb.Open(name, "")
	if err != nil {
		return nil, err
	}
	if err := b.Available(); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

type hostProcesses struct{}

func (hostProcesses) StartTime(pid int) (uint64, error) { return runc.StartTime(pid) }

func (hostProcesses) Self() api.Process {
	start, _ := runc.StartTime(os.Getpid())
	return api.Process{PID: os.Getpid(), Start: start}
}

func (hostProcesses) Resolve(root, arg string) (*runc.Container, error) {
	return runc.Resolve(root, arg)
}

// PluginContainers scans /proc for CNI plugins' CNI_CONTAINERID.
func (hostProcesses) PluginContainers() map[string]bool {
	ids := map[string]bool{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		env, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		for _, kv := range strings.Split(string(env), "\x00") {
			if v, ok := strings.CutPrefix(kv, "CNI_CONTAINERID="); ok && v != "" {
				ids[v] = true
			}
		}
	}
	return ids
}

func (hostProcesses) BootID() string {
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(b))
}

func (hostNamespaces) BridgePorts(nsPath, bridge string) ([]string, error) {
	return netns.BridgePorts(nsPath, bridge)
}

func (hostNamespaces) DeleteLink(nsPath, name string) error { return netns.DeleteLink(nsPath, name) }
