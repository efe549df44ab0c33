package local

import (
	"context"
	"errors"
	"fmt"

	"github.com/circuit-cni/circuit/controller"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/pkg/netns"
	"github.com/circuit-cni/circuit/pkg/qos"
)

// effective is the policy that shapes a peer: its own, else its network's.
func effective(n *controller.Network, p *controller.Peer) (*controller.QoSPolicy, string) {
	switch {
	case p.QoS != nil:
		return p.QoS, "container"
	case n.QoS != nil:
		return n.QoS, "network"
	}
	return nil, "none"
}

func validPolicy(p controller.QoSPolicy) error {
	switch p.Direction {
	case "", controller.DirEgress, controller.DirIngress, controller.DirBoth:
	default:
		return controller.Errorf(controller.ErrInvalid, "direction %q: use egress, ingress or both", p.Direction)
	}
	if p.IsZero() {
		return controller.Errorf(controller.ErrInvalid, "give at least one of rate, ceiling, delay, jitter or loss")
	}
	if p.Ceiling > 0 && p.Rate == 0 {
		return controller.Errorf(controller.ErrInvalid, "a ceiling needs a rate")
	}
	if p.Ceiling > 0 && p.Ceiling < p.Rate {
		return controller.Errorf(controller.ErrInvalid, "ceiling %s is below rate %s", qos.FormatRate(p.Ceiling), qos.FormatRate(p.Rate))
	}
	if p.Loss < 0 || p.Loss > 100 {
		return controller.Errorf(controller.ErrInvalid, "loss %.2f%% is not between 0 and 100", p.Loss)
	}
	if p.Jitter > 0 && p.Delay == 0 {
		return controller.Errorf(controller.ErrInvalid, "jitter needs a delay")
	}
	return nil
}

// applyPeerQoS shapes a newly connected peer by its effective policy.
func (c *Controller) applyPeerQoS(_ context.Context, n *controller.Network, p *controller.Peer) error {
	pol, _ := effective(n, p)
	if pol == nil {
		return nil
	}
	if err := qos.Apply(p.Netns, p.IfName, *pol); err != nil {
		return fmt.Errorf("qos: %w", err)
	}
	return nil
}

// resetPeerQoS removes circuit's shaping from a peer; the interface may be
// about to go, so failures are only logged.
func (c *Controller) resetPeerQoS(p *controller.Peer) {
	if err := qos.Reset(p.Netns, p.IfName); err != nil {
		c.log.WithError(err).Debugf("reset qos of %s on %s", p.ContainerID, p.Network)
	}
}

// shapeable reports whether a peer's namespace is still there to shape.
func shapeable(p *controller.Peer) bool {
	return p.State == controller.PeerConnected && netns.IsNetns(p.Netns)
}

// SetQoS stores a policy for a network (container == "") or one of its
// peers and applies it to the peers it governs. If any peer cannot take it,
// the peers already changed get their old policy back and nothing is stored.
func (c *Controller) SetQoS(ctx context.Context, network, container string, pol controller.QoSPolicy) error {
	if err := c.setQoS(ctx, network, container, &pol); err != nil {
		return fmt.Errorf("qos set %s: %w", network, err)
	}
	return nil
}

// ResetQoS removes circuit's shaping and forgets the policy: the network's
// and every override, or one container's override.
func (c *Controller) ResetQoS(ctx context.Context, network, container string) error {
	if err := c.setQoS(ctx, network, container, nil); err != nil {
		return fmt.Errorf("qos reset %s: %w", network, err)
	}
	return nil
}

// mergePolicy lays a `qos set` over the policy already in place at the same
// level: the rate pair (rate, ceiling) and the netem trio (delay, jitter,
// loss) are each replaced as a whole when any of their members is given, so
// `--delay 50ms` after `--rate 5000` keeps the rate, and `--rate 10000`
// after `--rate 5000 --ceiling 6000` drops the old ceiling.
func mergePolicy(old *controller.QoSPolicy, upd controller.QoSPolicy) controller.QoSPolicy {
	if old == nil {
		return upd
	}
	out := *old
	if upd.Rate > 0 || upd.Ceiling > 0 {
		out.Rate, out.Ceiling = upd.Rate, upd.Ceiling
	}
	if upd.NeedsNetem() {
		out.Delay, out.Jitter, out.Loss = upd.Delay, upd.Jitter, upd.Loss
	}
	if upd.Direction != "" {
		out.Direction = upd.Direction
	}
	return out
}

func (c *Controller) setQoS(ctx context.Context, network, container string, upd *controller.QoSPolicy) error {
	if upd != nil {
		if err := validPolicy(*upd); err != nil {
			return err
		}
	}
	n, err := c.network(ctx, network)
	if err != nil {
		return err
	}
	pol := upd
	if upd != nil && container == "" {
		m := mergePolicy(n.QoS, *upd)
		pol = &m
	}
	// The planned state: a copy of the network and its peers with the change made.
	next := *n
	next.Peers = append([]controller.Peer(nil), n.Peers...)
	found := container == ""
	for i := range next.Peers {
		p := &next.Peers[i]
		switch {
		case container == "" && pol == nil:
			p.QoS = nil // a network reset clears overrides too
		case container != "" && (p.ContainerID == container || fmt.Sprint(p.PID) == container):
			if upd != nil {
				m := mergePolicy(p.QoS, *upd)
				p.QoS = &m
			} else {
				p.QoS = nil
			}
			found = true
		}
	}
	if !found {
		return controller.Errorf(controller.ErrNotFound, "container %s is not connected to network %s", container, network)
	}
	if container == "" {
		next.QoS = pol
	}
	if upd != nil && upd.NeedsNetem() {
		if err := qos.NetemSupported("/proc/self/ns/net"); err != nil {
			return err
		}
	}

	// Apply to the kernel, peer by peer, remembering how to go back.
	var changed []int
	undo := func() {
		for _, i := range changed {
			old, _ := effective(n, &n.Peers[i])
			c.shape(&n.Peers[i], old)
		}
	}
	for i := range next.Peers {
		p := &next.Peers[i]
		if !shapeable(p) {
			continue
		}
		newPol, _ := effective(&next, p)
		oldPol, _ := effective(n, &n.Peers[i])
		if samePolicy(newPol, oldPol) {
			continue
		}
		if err := c.shape(p, newPol); err != nil {
			undo()
			return fmt.Errorf("container %s: %w", p.ContainerID, err)
		}
		changed = append(changed, i)
	}
	err = c.store.Update(ctx, func(tx ds.Tx) error {
		if _, err := tx.GetNetwork(network); err != nil {
			return err
		}
		stored := next
		stored.Peers = nil
		if err := tx.PutNetwork(&stored); err != nil {
			return err
		}
		for i := range next.Peers {
			if _, err := tx.GetPeer(network, next.Peers[i].ContainerID, next.Peers[i].IfName); errors.Is(err, controller.ErrNotFound) {
				continue // disconnected meanwhile
			}
			if err := tx.PutPeer(&next.Peers[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		undo()
	}
	return err
}

// shape makes a peer's interface carry pol (nil: nothing of circuit's).
func (c *Controller) shape(p *controller.Peer, pol *controller.QoSPolicy) error {
	if pol == nil {
		return qos.Reset(p.Netns, p.IfName)
	}
	return qos.Apply(p.Netns, p.IfName, *pol)
}

func samePolicy(a, b *controller.QoSPolicy) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// ShowQoS lists each peer's effective policy with the kernel's counters.
func (c *Controller) ShowQoS(ctx context.Context, network string) ([]controller.PeerQoS, error) {
	n, err := c.network(ctx, network)
	if err != nil {
		return nil, fmt.Errorf("qos show %s: %w", network, err)
	}
	out := []controller.PeerQoS{}
	for i := range n.Peers {
		p := &n.Peers[i]
		pol, src := effective(n, p)
		row := controller.PeerQoS{Network: network, ContainerID: p.ContainerID, PID: p.PID, IfName: p.IfName, Source: src, Policy: pol}
		if shapeable(p) {
			row.Egress, row.Ingress, err = qos.Stats(p.Netns, p.IfName)
			if err != nil {
				row.Error = err.Error()
			}
		} else {
			row.Error = "container is gone"
		}
		out = append(out, row)
	}
	return out, nil
}
