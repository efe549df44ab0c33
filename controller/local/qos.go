package local

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/ds"
	"github.com/circuit-cni/circuit/pkg/qos"
)

// effective is the policy that shapes a peer: its own, else its network's.
func effective(n *api.Network, p *api.Peer) (*api.QoSPolicy, api.PolicySource) {
	return api.Effective(n.QoS, p.QoS)
}

// shape maps circuit's policy to the shaper's.
func shape(p api.QoSPolicy) qos.Policy {
	return qos.Policy{Rate: p.Rate, Ceiling: p.Ceiling, Delay: p.Delay, Jitter: p.Jitter, Loss: p.Loss, Direction: qos.Direction(p.Direction)}
}

func counters(c *qos.Counters) *api.QoSCounters {
	if c == nil {
		return nil
	}
	return &api.QoSCounters{Bytes: c.Bytes, Packets: c.Packets, Drops: c.Drops, Overlimits: c.Overlimits}
}

// applyPeerQoS shapes a newly connected peer by its effective policy.
func (c *Controller) applyPeerQoS(n *api.Network, p *api.Peer) error {
	pol, _ := effective(n, p)
	if pol == nil {
		return nil
	}
	if err := c.k.shaper.Apply(p.Netns, p.IfName, shape(*pol)); err != nil {
		return fmt.Errorf("qos: %w", err)
	}
	return nil
}

// resetPeerQoS removes circuit's shaping from a peer; the interface may be
// about to go, so failures are only logged.
func (c *Controller) resetPeerQoS(p *api.Peer) {
	if err := c.k.shaper.Reset(p.Netns, p.IfName); err != nil {
		c.log.WithError(err).Debugf("reset qos of %s on %s", p.ContainerID, p.Network)
	}
}

// shapeable reports whether a peer's namespace is still there to shape.
func (c *Controller) shapeable(p *api.Peer) bool {
	return p.State == api.PeerConnected && c.k.ns.IsNetns(p.Netns)
}

// SetQoS stores a policy for a network (container == "") or one of its
// peers and applies it to the peers it governs. If any peer cannot take it,
// the peers already changed get their old policy back and nothing is stored.
func (c *Controller) SetQoS(ctx context.Context, network, container string, pol api.QoSPolicy) error {
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

func (c *Controller) setQoS(ctx context.Context, network, container string, upd *api.QoSPolicy) error {
	if upd != nil {
		if err := api.ValidatePolicy(*upd); err != nil {
			return err
		}
	}
	n, err := c.network(ctx, network)
	if err != nil {
		return err
	}
	pol := upd
	if upd != nil && container == "" {
		m := api.MergePolicy(n.QoS, *upd)
		pol = &m
	}
	// The planned state: a copy of the network and its peers with the change made.
	next := *n
	next.Peers = append([]api.Peer(nil), n.Peers...)
	found := container == ""
	for i := range next.Peers {
		p := &next.Peers[i]
		switch {
		case container == "" && pol == nil:
			p.QoS = nil // a network reset clears overrides too
		case container != "" && (p.ContainerID == container || strconv.Itoa(p.PID) == container):
			if upd != nil {
				m := api.MergePolicy(p.QoS, *upd)
				p.QoS = &m
			} else {
				p.QoS = nil
			}
			found = true
		}
	}
	if !found {
		return api.Errorf(api.ErrNotFound, "container %s is not connected to network %s", container, network)
	}
	if container == "" {
		next.QoS = pol
	}
	if upd != nil && upd.NeedsNetem() {
		if err := c.k.shaper.NetemSupported("/proc/self/ns/net"); err != nil {
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
		if !c.shapeable(p) {
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
	// Store only what qos set owns: the network's policy and the peers'
	// QoS fields, on the records as they are now (a connect may have
	// finished, a peer been replaced, while the kernel was shaped).
	err = c.store.Update(ctx, func(tx ds.Tx) error {
		cur, err := tx.GetNetwork(network)
		if err != nil {
			return err
		}
		if container == "" {
			cur.QoS = next.QoS
			if err := tx.PutNetwork(cur); err != nil {
				return err
			}
		}
		for i := range next.Peers {
			want := &next.Peers[i]
			if samePolicy(want.QoS, n.Peers[i].QoS) {
				continue
			}
			p, err := tx.GetPeer(network, want.ContainerID, want.IfName)
			if errors.Is(err, api.ErrNotFound) {
				continue // disconnected meanwhile
			}
			if err != nil {
				return err
			}
			p.QoS = want.QoS
			if err := tx.PutPeer(p); err != nil {
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
func (c *Controller) shape(p *api.Peer, pol *api.QoSPolicy) error {
	if pol == nil {
		return c.k.shaper.Reset(p.Netns, p.IfName)
	}
	return c.k.shaper.Apply(p.Netns, p.IfName, shape(*pol))
}

func samePolicy(a, b *api.QoSPolicy) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// ShowQoS lists each peer's effective policy with the kernel's counters.
func (c *Controller) ShowQoS(ctx context.Context, network string) ([]api.PeerQoS, error) {
	n, err := c.network(ctx, network)
	if err != nil {
		return nil, fmt.Errorf("qos show %s: %w", network, err)
	}
	out := []api.PeerQoS{}
	for i := range n.Peers {
		p := &n.Peers[i]
		pol, src := effective(n, p)
		row := api.PeerQoS{Network: network, ContainerID: p.ContainerID, PID: p.PID, IfName: p.IfName, Source: src, Policy: pol}
		if c.shapeable(p) {
			eg, in, err := c.k.shaper.Stats(p.Netns, p.IfName)
			if err != nil {
				row.Error = err.Error()
			}
			row.Egress, row.Ingress = counters(eg), counters(in)
		} else {
			row.Error = "container is gone"
		}
		out = append(out, row)
	}
	return out, nil
}
