package local

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/circuit-cni/circuit/agentapi"
	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/pkg/cni"
)

// A cluster network or service is shared through circuit-agent, which
// holds the etcd client: circuit asks it over its socket for every change,
// and reads its replica (the records it keeps in this node's datastore)
// for everything else, so a connect never waits on etcd.

// agent is the client of this node's circuit-agent.
func (c *Controller) agent() *agentapi.Client {
	return agentapi.NewClient(c.cfg.StateDir, agentapi.DefaultTimeout)
}

func (c *Controller) createCluster(ctx context.Context, cfg *cni.Config, req api.CreateNetworkRequest) (*api.Network, error) {
	ranges, err := cni.IPAMRanges(cfg.Raw)
	if err != nil {
		return nil, err
	}
	cl := api.Cluster{Overlay: req.Overlay, BlockSize: req.BlockSize, BlockSize6: req.BlockSize6}
	if err := api.ValidCluster(&cl, ranges); err != nil {
		return nil, err
	}
	if n, err := c.networkRecord(ctx, cfg.Name); err == nil && n.Cluster == nil {
		return nil, api.Errorf(api.ErrExists, "a network of this host named %s exists", cfg.Name)
	}
	var n api.Network
	err = c.agent().Do(ctx, agentapi.MethodPost, agentapi.PathNetworks, agentapi.CreateNetwork{
		Config: cfg.Raw, Force: req.Force, Overlay: cl.Overlay, BlockSize: cl.BlockSize, BlockSize6: cl.BlockSize6,
	}, &n)
	if err != nil {
		return nil, err
	}
	return &n, nil
}

// deleteCluster deletes a cluster network, through the agent.
func (c *Controller) deleteCluster(ctx context.Context, name string, force bool) error {
	path := agentapi.PathNetworks + "/" + url.PathEscape(name)
	if force {
		path += "?force=1"
	}
	return c.agent().Do(ctx, agentapi.MethodDelete, path, nil, nil)
}

// clusterConfig is the configuration a connect to a cluster network runs:
// host-local allocates from the blocks this node holds, and keeps its
// reservations under the state dir (circuit's alone, so gc may release
// what no record explains); the container gets a route to each of the
// network's ranges (other nodes' blocks are behind its gateway, then the
// overlay), the overlay's MTU, and no masquerade of the plugin's (the
// agent's masquerades only what leaves the ranges).
func (c *Controller) clusterConfig(n *api.Network) (*cni.Config, error) {
	if len(n.Cluster.Blocks) == 0 {
		return nil, api.Errorf(api.ErrUnavailable, "this node holds no address block of cluster network %s yet: is circuit-agent running, and has it reached etcd?", n.Name)
	}
	ranges, err := cni.IPAMRanges(n.Config)
	if err != nil {
		return nil, fmt.Errorf("cluster network %s: %w", n.Name, err)
	}
	raw, err := cni.ForCluster(n.Config, cni.Cluster{
		Blocks: n.Cluster.Blocks, Ranges: ranges, DataDir: filepath.Join(c.cfg.StateDir, agentapi.IPAMDir), MTU: n.Cluster.MTU,
	})
	if err != nil {
		return nil, fmt.Errorf("cluster network %s: %w", n.Name, err)
	}
	cfg, err := cni.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("cluster network %s: %w", n.Name, err)
	}
	return cfg, nil
}

// notify tells the agent a cluster network's peers here changed, so it
// publishes them and checks its blocks' free addresses. Best effort: a
// connect never waits for the agent, which reconciles on its own too.
func (c *Controller) notify(ctx context.Context, n *api.Network) {
	if n.Cluster == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 500*time.Millisecond)
	defer cancel()
	if err := c.agent().Do(ctx, agentapi.MethodPost, agentapi.PathNotify, agentapi.Notify{Network: n.Name}, nil); err != nil {
		c.log.WithError(err).Debugf("tell circuit-agent about %s", n.Name)
	}
}

// clusterPeers adds the peers other nodes published to a cluster
// network's own, best effort: without the agent, inspect shows this
// node's.
func (c *Controller) clusterPeers(ctx context.Context, n *api.Network) {
	if n.Cluster == nil {
		return
	}
	for i := range n.Peers {
		n.Peers[i].Node = n.Cluster.Node
	}
	var all agentapi.Peers
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := c.agent().Do(ctx, agentapi.MethodGet, agentapi.PathPeers+"?network="+url.QueryEscape(n.Name), nil, &all); err != nil {
		c.log.WithError(err).Debugf("other nodes' peers of %s", n.Name)
		return
	}
	for _, p := range all.Peers {
		if p.Node != n.Cluster.Node {
			n.Peers = append(n.Peers, p)
		}
	}
	slices.SortFunc(n.Peers, func(a, b api.Peer) int {
		return strings.Compare(a.Node+"/"+a.ContainerID+"/"+a.IfName, b.Node+"/"+b.ContainerID+"/"+b.IfName)
	})
}

// ListNodes lists the cluster's nodes, through the agent.
func (c *Controller) ListNodes(ctx context.Context) ([]api.Node, error) {
	var out agentapi.Nodes
	if err := c.agent().Do(ctx, agentapi.MethodGet, agentapi.PathNodes, nil, &out); err != nil {
		return nil, fmt.Errorf("node list: %w", err)
	}
	return out.Nodes, nil
}

// GCCluster gives back the blocks of nodes lost longer than grace, through
// the agent.
func (c *Controller) GCCluster(ctx context.Context, grace time.Duration, dryRun bool) (*api.Report, error) {
	var rep api.Report
	if err := c.agent().Do(ctx, agentapi.MethodPost, agentapi.PathGC, agentapi.GC{Grace: agentapi.Duration(grace), DryRun: dryRun}, &rep); err != nil {
		return nil, fmt.Errorf("gc --cluster: %w", err)
	}
	if rep.Actions == nil {
		rep.Actions = []string{}
	}
	return &rep, nil
}

// Cluster services: every change goes to the agent.

func (c *Controller) createClusterService(ctx context.Context, svc api.Service) (*api.Service, error) {
	var out api.Service
	if err := c.agent().Do(ctx, agentapi.MethodPost, agentapi.PathServices, svc, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

func (c *Controller) clusterTargets(ctx context.Context, service string, add []api.Target, remove []string) error {
	method := agentapi.MethodPost
	if remove != nil {
		method = agentapi.MethodDelete
	}
	return c.agent().Do(ctx, method, fmt.Sprintf(agentapi.PathTargets, url.PathEscape(service)), agentapi.Targets{Targets: add, Addresses: remove}, nil)
}

func (c *Controller) deleteClusterService(ctx context.Context, service string) error {
	return c.agent().Do(ctx, agentapi.MethodDelete, agentapi.PathServices+"/"+url.PathEscape(service), nil, nil)
}
