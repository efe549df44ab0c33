package local

import (
	"context"
	"fmt"
	"strings"

	"github.com/circuit-cni/circuit/controller"
	"github.com/circuit-cni/circuit/pkg/qos"
)

// Restore makes the kernel match the datastore, after a reboot or a flush:
// peers whose container is gone are disconnected (releasing their
// addresses), live peers get their QoS back, and load-balancer services
// and targets are programmed again. A second run finds nothing to do.
func (c *Controller) Restore(ctx context.Context) (*controller.Report, error) {
	rep := &controller.Report{Actions: []string{}}
	var errs []error
	nets, err := c.ListNetworks(ctx)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	procs := &procScan{}
	for ni := range nets {
		n := &nets[ni]
		for pi := range n.Peers {
			p := &n.Peers[pi]
			if why := c.stale(p, procs); why != "" {
				if claimed, err := c.claim(ctx, p); err != nil || !claimed {
					if err != nil {
						errs = append(errs, fmt.Errorf("restore: disconnect %s from %s: %w", p.ContainerID, n.Name, err))
					}
					continue // changed since it was read: not ours to remove
				}
				if err := c.detach(ctx, n, p); err != nil {
					errs = append(errs, fmt.Errorf("restore: disconnect %s from %s: %w", p.ContainerID, n.Name, err))
					continue
				}
				line := fmt.Sprintf("disconnected %s from %s (%s)", p.ContainerID, n.Name, why)
				if len(p.IPs) > 0 {
					line += ", released " + strings.Join(p.IPs, ", ")
				}
				rep.Actions = append(rep.Actions, line)
				continue
			}
			if p.State != controller.PeerConnected {
				continue
			}
			pol, _ := effective(n, p)
			if pol == nil {
				continue
			}
			if err := c.ownPin(p); err != nil {
				errs = append(errs, fmt.Errorf("restore: qos of %s on %s: %w", p.ContainerID, n.Name, err))
				continue
			}
			if qosInPlace(p, pol) {
				continue
			}
			if err := qos.Apply(p.Netns, p.IfName, *pol); err != nil {
				errs = append(errs, fmt.Errorf("restore: qos of %s on %s: %w", p.ContainerID, n.Name, err))
				continue
			}
			rep.Actions = append(rep.Actions, fmt.Sprintf("re-applied qos to %s on %s", p.ContainerID, n.Name))
		}
	}
	acts, err := c.restoreServices(ctx)
	rep.Actions = append(rep.Actions, acts...)
	if err != nil {
		errs = append(errs, err)
	}
	return rep, joinErrors(errs...)
}

// qosInPlace reports whether circuit's shaping for pol is on the interface.
func qosInPlace(p *controller.Peer, pol *controller.QoSPolicy) bool {
	eg, in, err := qos.Stats(p.Netns, p.IfName)
	if err != nil {
		return false
	}
	switch pol.Direction {
	case controller.DirIngress:
		return in != nil
	case controller.DirBoth:
		return eg != nil && in != nil
	}
	return eg != nil
}
