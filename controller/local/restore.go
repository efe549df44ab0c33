package local

import (
	"context"
	"fmt"
	"strings"

	"github.com/circuit-cni/circuit/api"
)

// Restore makes the kernel match the datastore, after a reboot or a flush:
// peers whose container is gone are disconnected (releasing their
// addresses), live peers get their QoS back, and load-balancer services
// and targets are programmed again. A second run finds nothing to do.
func (c *Controller) Restore(ctx context.Context) (*api.Report, error) {
	rep := &api.Report{Actions: []string{}}
	var errs []error
	nets, err := c.ListNetworks(ctx)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	procs := c.pluginScan()
	for ni := range nets {
		n := &nets[ni]
		for pi := range n.Peers {
			p := &n.Peers[pi]
			if why := c.stale(p, procs); why != "" {
				done, err := c.reap(ctx, n, p)
				if err != nil {
					errs = append(errs, fmt.Errorf("restore: disconnect %s from %s: %w", p.ContainerID, n.Name, err))
					continue
				}
				if done {
					line := fmt.Sprintf("disconnected %s from %s (%s)", p.ContainerID, n.Name, why)
					if len(p.IPs) > 0 {
						line += ", released " + strings.Join(p.IPs, ", ")
					}
					rep.Actions = append(rep.Actions, line)
				}
				continue
			}
			line, err := c.restoreQoS(n, p)
			if err != nil {
				errs = append(errs, fmt.Errorf("restore: qos of %s on %s: %w", p.ContainerID, n.Name, err))
			}
			if line != "" {
				rep.Actions = append(rep.Actions, line)
			}
		}
	}
	acts, err := c.restoreServices(ctx)
	rep.Actions = append(rep.Actions, acts...)
	if err != nil {
		errs = append(errs, err)
	}
	return rep, joinErrors(errs...)
}

// restoreQoS re-applies a live peer's effective policy if circuit's shaping
// is missing from its interface.
func (c *Controller) restoreQoS(n *api.Network, p *api.Peer) (string, error) {
	if p.State != api.PeerConnected {
		return "", nil
	}
	pol, _ := effective(n, p)
	if pol == nil {
		return "", nil
	}
	if err := c.ownPin(p); err != nil {
		return "", err
	}
	if c.qosInPlace(p, pol) {
		return "", nil
	}
	if err := c.k.shaper.Apply(p.Netns, p.IfName, shape(*pol)); err != nil {
		return "", err
	}
	return fmt.Sprintf("re-applied qos to %s on %s", p.ContainerID, n.Name), nil
}

// qosInPlace reports whether circuit's shaping for pol is on the interface.
func (c *Controller) qosInPlace(p *api.Peer, pol *api.QoSPolicy) bool {
	eg, in, err := c.k.shaper.Stats(p.Netns, p.IfName)
	if err != nil {
		return false
	}
	switch pol.Direction {
	case api.DirIngress:
		return in != nil
	case api.DirBoth:
		return eg != nil && in != nil
	}
	return eg != nil
}
