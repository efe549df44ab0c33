package main

import (
	"context"
	"fmt"
	"strconv"

	"github.com/circuit-cni/circuit/pkg/testutil"
)

type qosPoint struct {
	rate            int    // Mbit/s set, as rate and ceiling
	egress, ingress sample // Mbit/s measured, TCP
	udp             sample // Mbit/s received, UDP egress offered at 1.5 times the rate
}

type qosResult struct {
	seconds, omit int
	unshaped      float64 // Mbit/s, egress before any policy
	points        []qosPoint
}

// qosRates sets each rate (as both rate and ceiling, both directions) on a
// network and measures one container's TCP throughput to its gateway with
// iperf3, leaving the first second out (slow start and the shaper's burst).
func (b *bench) qosRates(ctx context.Context, r *report) error {
	const net = "bench-qos"
	if err := b.createNetwork(ctx, net, b.bridgeConf(net, "cbw"+b.tag, "10.211.20.0/24"), "cbw"+b.tag); err != nil {
		return err
	}
	s, err := b.sleeper()
	if err != nil {
		return err
	}
	defer b.kill(s)
	pid := strconv.Itoa(s.PID)
	if _, err := b.circuit(ctx, "network", "connect", pid, net); err != nil {
		return err
	}
	defer b.circuit(context.Background(), "network", "disconnect", pid, net)
	const gateway = "10.211.20.1"
	res := &qosResult{seconds: 4, omit: 1}
	if b.cfg.smoke {
		res.seconds = 1
	}
	measure := func(reverse bool) (float64, error) {
		bps, err := testutil.IperfFor(s.PID, gateway, reverse, res.seconds, res.omit)
		return bps / 1e6, err
	}
	if res.unshaped, err = measure(false); err != nil {
		return err
	}
	r.qos = res
	for _, rate := range b.cfg.rates {
		rs := strconv.Itoa(rate) + "mbit"
		if _, err := b.circuit(ctx, "network", "qos", "set", net, "--rate", rs, "--ceiling", rs, "--direction", "both"); err != nil {
			return err
		}
		pt := qosPoint{rate: rate}
		for range 3 {
			if err := ctx.Err(); err != nil {
				return err
			}
			e, err := measure(false)
			if err != nil {
				return fmt.Errorf("egress at %s: %w", rs, err)
			}
			in, err := measure(true)
			if err != nil {
				return fmt.Errorf("ingress at %s: %w", rs, err)
			}
			// UDP has no congestion control: what arrives is what the shaper let through.
			u, err := testutil.IperfFor(s.PID, gateway, false, res.seconds, res.omit, "-u", "-b", fmt.Sprintf("%dK", rate*1500))
			if err != nil {
				return fmt.Errorf("udp egress at %s: %w", rs, err)
			}
			pt.egress = append(pt.egress, e)
			pt.ingress = append(pt.ingress, in)
			pt.udp = append(pt.udp, u/1e6)
		}
		res.points = append(res.points, pt)
		logf("qos: %d Mbit/s set: egress %s, ingress %s Mbit/s", rate, f2(pt.egress.median()), f2(pt.ingress.median()))
	}
	return nil
}
