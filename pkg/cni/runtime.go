package cni

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/circuit-cni/circuit/api"
	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// Runtime runs plugins found in a search path, with libcni's result cache
// kept in a directory of circuit's.
type Runtime struct {
	cni *libcni.CNIConfig
}

// NewRuntime searches paths, in order, for plugins.
func NewRuntime(paths []string, cacheDir string) *Runtime {
	return &Runtime{cni: libcni.NewCNIConfigWithCacheDir(paths, cacheDir, nil)}
}

// RuntimeConf names what a plugin works on: one interface of one
// container on a network (the CNI spec calls it an attachment).
type RuntimeConf struct {
	ContainerID string // CNI_CONTAINERID
	Netns       string // "" when the namespace is gone
	IfName      string
	// Args are CNI_ARGS (key, value); Capabilities the capability
	// arguments, each passed (as runtimeConfig) to the plugins that
	// declare it.
	Args         [][2]string
	Capabilities map[string]any
}

func (a RuntimeConf) rt() *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: a.ContainerID, NetNS: a.Netns, IfName: a.IfName,
		Args: a.Args, CapabilityArgs: a.Capabilities}
}

// Result is what circuit keeps of a plugin chain's result.
type Result struct {
	IPs      []string // CIDR
	Gateways []string // the IPs' gateways, where the result gives one
	MAC      string
	HostIf   string
}

// Add runs ADD through the chain.
func (r *Runtime) Add(ctx context.Context, cfg *Config, a RuntimeConf) (*Result, error) {
	res, err := r.cni.AddNetworkList(ctx, cfg.List, a.rt())
	if err != nil {
		return nil, err
	}
	return convert(res, a.IfName)
}

// Del runs DEL through the chain, using libcni's cached result.
func (r *Runtime) Del(ctx context.Context, cfg *Config, a RuntimeConf) error {
	return r.cni.DelNetworkList(ctx, cfg.List, a.rt())
}

// DelEach runs DEL plugin by plugin, last first, going on past failures,
// so that a chain whose ADD failed half-way (or one of whose plugins has
// since gone) still gives back what its other plugins made.
func (r *Runtime) DelEach(ctx context.Context, cfg *Config, a RuntimeConf) error {
	var errs []error
	for i := len(cfg.List.Plugins) - 1; i >= 0; i-- {
		one := *cfg.List
		one.Plugins = cfg.List.Plugins[i : i+1]
		// A plugin that is not installed made nothing to give back.
		if err := r.cni.DelNetworkList(ctx, &one, a.rt()); err != nil && !strings.Contains(err.Error(), "failed to find plugin") {
			errs = append(errs, err)
		}
	}
	return api.Join(errs...)
}

// GC asks the plugins (CNI 1.1) to release whatever is not among valid.
func (r *Runtime) GC(ctx context.Context, cfg *Config, valid []RuntimeConf) error {
	args := &libcni.GCArgs{}
	for _, a := range valid {
		args.ValidAttachments = append(args.ValidAttachments, types.GCAttachment{ContainerID: a.ContainerID, IfName: a.IfName})
	}
	return r.cni.GCNetworkList(ctx, cfg.List, args)
}

// Cached lists the attachments libcni has cached results for on a network.
func (r *Runtime) Cached(network string) ([]RuntimeConf, error) {
	all, err := r.cni.GetCachedAttachments("")
	if err != nil {
		return nil, err
	}
	var out []RuntimeConf
	for _, c := range all {
		if c.Network == network {
			out = append(out, RuntimeConf{ContainerID: c.ContainerID, Netns: c.NetNS, IfName: c.IfName})
		}
	}
	return out, nil
}

// convert reads addresses and interfaces from any result version.
func convert(res types.Result, ifname string) (*Result, error) {
	if res == nil {
		return nil, errors.New("plugin chain returned no result")
	}
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		return nil, fmt.Errorf("read plugin result: %w", err)
	}
	out := &Result{}
	for _, ip := range cur.IPs {
		out.IPs = append(out.IPs, (&net.IPNet{IP: ip.Address.IP, Mask: ip.Address.Mask}).String())
		if ip.Gateway != nil {
			out.Gateways = append(out.Gateways, ip.Gateway.String())
		}
	}
	// The container's interface has a sandbox; the host side of a veth is the
	// last sandbox-less interface before it (bridge plugins list the bridge first).
	for _, itf := range cur.Interfaces {
		if itf.Sandbox != "" {
			if itf.Name == ifname && out.MAC == "" {
				out.MAC = itf.Mac
			}
			continue
		}
		out.HostIf = itf.Name
	}
	return out, nil
}
