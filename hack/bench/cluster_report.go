package main

import (
	_ "embed"
	"fmt"
	"strings"
	"time"
)

// Goals of the cluster section, as the targets table states them.
const (
	sameRatio     = 1.10 // "the same": a cluster network costs at most this times a local one
	scaleGrowth   = 1.20 // convergence at the largest size against the smallest
	joinGoal      = 1000.0
	agentRSSGoal  = 50 * 1024 // KiB
	agentIdleGoal = 1.0       // % of a core
	overlayShare  = 0.5       // of the same-bridge throughput
)

// clusterProfile is where the agents' time goes, measured by hand: the
// part of the cluster section a run cannot write.
//
//go:embed cluster_profile.md
var clusterProfile string

// clusterTargets adds the cluster section's rows to the targets table.
func (r *report) clusterTargets(row func(name, goal, measured string, ok bool)) {
	c := r.cluster
	if c == nil {
		return
	}
	if p := c.paired; p != nil && len(p.connect) > 0 {
		cr, dr := paired(p.connect, p.connectLocal, ratio).median(), paired(p.disconnect, p.discLocal, ratio).median()
		row(fmt.Sprintf("connect and disconnect on a cluster network vs a local one (%d nodes)", p.nodes), fmt.Sprintf("the same: ratio <= %.2f", sameRatio),
			fmt.Sprintf("connect %s, disconnect %s (medians of %d paired ratios)", f2(cr), f2(dr), len(p.connect)), cr <= sameRatio && dr <= sameRatio)
		hs, hp := paired(p.hookStart, p.hookStartLocal, ratio).median(), paired(p.hookStop, p.hookStopLocal, ratio).median()
		row("hook on a cluster network vs a local one", fmt.Sprintf("the same: ratio <= %.2f", sameRatio),
			fmt.Sprintf("prestart %s, poststop %s", f2(hs), f2(hp)), hs <= sameRatio && hp <= sameRatio)
	}
	if len(c.sizes) > 0 {
		lo, hi := c.sizes[0], c.sizes[len(c.sizes)-1]
		if len(c.sizes) > 1 && len(lo.firstPacket) > 0 && len(hi.firstPacket) > 0 {
			g := hi.firstPacket.median() / lo.firstPacket.median()
			row(fmt.Sprintf("`network connect` to the first packet from another node, %d nodes vs %d", hi.nodes, lo.nodes), fmt.Sprintf("within %.0f%%", (scaleGrowth-1)*100),
				fmt.Sprintf("%s ms vs %s ms (medians): %+.0f%%; %d rounds without a reply", f(hi.firstPacket.median()), f(lo.firstPacket.median()), (g-1)*100, hi.lost+lo.lost),
				g <= scaleGrowth && hi.lost+lo.lost == 0)
		}
		if len(hi.joins) > 0 {
			p90 := hi.joins.p90()
			row(fmt.Sprintf("a node joins: every other node routes its block (%d nodes)", hi.nodes), fmt.Sprintf("p90 <= %.0f ms", joinGoal),
				fmt.Sprintf("p90 %s ms, median %s ms, %d joins; %d not converged", f(p90), f(hi.joins.median()), len(hi.joins), hi.joinsLost),
				p90 <= joinGoal && hi.joinsLost == 0)
		}
	}
	if s := c.resources; s != nil && len(s.peakRSS) > 0 {
		worst := s.peakRSS.quantile(1)
		row(fmt.Sprintf("agent peak RSS, %d nodes x %d containers", s.nodes, s.peersPerNode), fmt.Sprintf("<= %s each", kib(agentRSSGoal)),
			fmt.Sprintf("largest %s, median %s", kib(int64(worst)), kib(int64(s.peakRSS.median()))), worst <= agentRSSGoal)
		busiest := s.agentCPU.quantile(1)
		row("agent CPU at rest, same cluster", fmt.Sprintf("<= %.0f%% of a core each", agentIdleGoal),
			fmt.Sprintf("busiest %s%%, median %s%% (over %s)", f2(busiest), f2(s.agentCPU.median()), s.steady), busiest <= agentIdleGoal)
	}
	if t := c.throughput; t != nil && len(t.overlay) > 0 {
		share := t.overlay.median() / t.sameBridge.median()
		row("TCP across nodes through the overlay vs two containers on one bridge", fmt.Sprintf(">= %.0f%%", overlayShare*100),
			fmt.Sprintf("%s vs %s Mbit/s: %.0f%%", f(t.overlay.median()), f(t.sameBridge.median()), share*100), share >= overlayShare)
	}
}

func (r *report) clusterSection(p printer) {
	c := r.cluster
	if c == nil || len(c.sizes) == 0 {
		return
	}
	largest := c.sizes[len(c.sizes)-1].nodes
	p("## 7. Cluster: circuit-agent and the overlay on %d simulated nodes", largest)
	p("")
	took := ""
	if c.took > 0 {
		var parts []string
		for _, s := range c.steps {
			parts = append(parts, fmt.Sprintf("%s %s", s.name, s.took.Round(time.Second)))
		}
		took = fmt.Sprintf(" The section took %s (%s).", c.took.Round(time.Second), strings.Join(parts, ", "))
	}
	p("Each node is a network namespace with its own state dir and `circuit-agent` (default lease TTL, resync and request timeout), linked by a veth to an underlay bridge (%s) in one more namespace, where one etcd process (Debian's) listens at %s; circuit runs in the node's namespace. One cluster network (bridge, host-local, `--overlay vxlan`, a /24 block per node). Containers are sleepers in network namespaces of their own, as in section 1; each node has one connected from its join on. Every process shares the machine's CPUs: at %d nodes, %d agents and etcd run beside what is measured.%s", underlayPrefix, underlayHub, largest, largest, took)
	p("")
	p("### Convergence")
	p("")
	p("**`network connect` to the first packet.** In each round `network connect` puts a fresh container on another node than node 0; once it has returned (when runc would start the container's process), the container pings node 0's container (ICMP echo every %s, from a raw socket the benchmark opened in the container's namespace): the time from the start of `connect` to the first echo reply, the first packet from another node, and from the end of `connect` to it. The node connecting rotates over the others; %d rounds per size. Each node routes every other node's block from its join on, so nothing on this path waits for etcd. (Pings sent from before the connect starts would time the kernel's ARP retries, once a second: the bridge plugin gives the container its address before the host's end of the veth is up, so the container's first ARP for its gateway may be lost.) CPU is user+sys of every agent over the rounds (`/proc/PID/stat`), per round (a connect and a disconnect), the agents' CPU at rest included.", probeInterval, r.cfg.rounds)
	p("")
	p("| nodes | `network connect`: median | first packet: median | p90 | after `connect` returned: median | p90 | rounds without a reply | agents' CPU per round, all together |")
	p("| --- | --- | --- | --- | --- | --- | --- | --- |")
	for _, s := range c.sizes {
		p("| %d | %s ms | %s ms | %s ms | %s ms | %s ms | %d | %s ms |", s.nodes, f(s.connect.median()), f(s.firstPacket.median()), f(s.firstPacket.p90()), f(s.afterConnect.median()), f(s.afterConnect.p90()), s.lost, f(s.roundCPU))
	}
	p("")
	p("**A node joins.** Its namespace made, its agent starts; the time from that start until every other node routes the node's block, and until the node routes every other node's (route events from netlink in each namespace, so nothing polls the nodes). Each size counts the joins that grew the cluster to it, one at a time, %s apart. CPU is that of every agent (the joining one from its start) from the start until %s after.", joinSettle, joinSettle)
	p("")
	p("| nodes | joins | every other node routes its block: median | p90 | it routes every other node's: median | agents' CPU per join, all together |")
	p("| --- | --- | --- | --- | --- | --- |")
	for _, s := range c.sizes {
		p("| %d | %d | %s ms | %s ms | %s ms | %s ms |", s.nodes, len(s.joins), f(s.joins.median()), f(s.joins.p90()), f(s.joinerRoutes.median()), f(s.joinCPU.median()))
	}
	p("")
	if s := c.resources; s != nil {
		p("### The agents at %d nodes x %d containers", s.nodes, s.peersPerNode)
		p("")
		period := ""
		if s.steady >= agentResync {
			period = " (the agents' resync period: each lists etcd and re-checks its kernel once in it)"
		}
		p("Every node filled to %d containers (%d connects in %s: node by node (%d at a time), %d connects at a time, with every other agent paused by SIGSTOP in spells of at most %s, %s apart, well within the 10 s lease; once continued, an agent reads what changed from its watch). With every agent running, each connect costs every agent an overlay pass, and the fill alone takes about 9 minutes of this machine (measured by hand: see the end of this section); what an agent does per connect is in the rounds above. Then, after a pause of %s, CPU (user+sys, `/proc/PID/stat`) over %s%s. Memory: VmRSS from `/proc/PID/status`, and the peak at exit from GNU time (`/usr/bin/time -f %%M`, as for circuit above) once every agent is stopped (SIGTERM).", s.peersPerNode, s.filled, s.fill.Round(100*time.Millisecond), fillGroup, s.fillWidth, pauseFor, resumeFor, s.settle, s.steady, period)
		p("")
		p("| | per agent: median | largest | all agents |")
		p("| --- | --- | --- | --- |")
		p("| CPU at rest (user+sys) | %s%% of a core | %s%% | %s%% |", f2(s.agentCPU.median()), f2(s.agentCPU.quantile(1)), f2(sum(s.agentCPU)))
		p("| RSS once every node joined (1-2 containers each) | %s | %s | %s |", kib(int64(s.rssJoined.median())), kib(int64(s.rssJoined.quantile(1))), kib(int64(sum(s.rssJoined))))
		p("| RSS with %d containers each | %s | %s | %s |", s.peersPerNode, kib(int64(s.rssFilled.median())), kib(int64(s.rssFilled.quantile(1))), kib(int64(sum(s.rssFilled))))
		p("| peak RSS (GNU time, at exit) | %s | %s | |", kib(int64(s.peakRSS.median())), kib(int64(s.peakRSS.quantile(1))))
		p("")
		p("etcd used %s%% of a core over the same %s. The kernel's own high-water mark of each agent (VmHWM, read just before the stop) was at most %s.", f2(s.etcdCPU), s.steady, kib(int64(s.hwm.quantile(1))))

		p("")
	}
	if t := c.throughput; t != nil && len(t.overlay) > 0 {
		p("### Throughput across nodes")
		p("")
		p("iperf3, TCP, one stream, %d s after %d s left out, the paths in turn (%d runs each), at %d nodes: the receiver's rate. The overlay's path is the container's veth, node 0's bridge, VXLAN on node 0, the underlay (veth, the host's bridge, veth), VXLAN on node 1, node 1's bridge, the container's veth; MTU 1450 on the cluster network's links, 1500 on the underlay.", t.seconds, t.omit, len(t.overlay), c.sizes[0].nodes)
		p("")
		p("| path | Mbit/s: median (min-max) | vs the same bridge |")
		p("| --- | --- | --- |")
		base := t.sameBridge.median()
		for _, row := range []struct {
			name string
			v    sample
		}{
			{"two containers on one node's bridge (the same-host baseline)", t.sameBridge},
			{"containers on two nodes, through the overlay", t.overlay},
			{"node to node on the underlay, no overlay", t.underlay},
		} {
			p("| %s | %s (%s-%s) | %.0f%% |", row.name, f(row.v.median()), f(row.v.quantile(0)), f(row.v.quantile(1)), row.v.median()/base*100)
		}
		p("")
	}
	if pr := c.paired; pr != nil && len(pr.connect) > 0 {
		p("### Connect and hooks: cluster network vs local network")
		p("")
		p("On one node of %d, against a local network of the same shape (the cluster network's configuration as circuit runs it for a connect: its MTU, no masquerade, one route to a wider range) on a bridge and subnet of its own, with a container of its own always connected as the cluster network has (a bridge without ports loses its carrier, and the next connect waits for it): %d rounds after %d warm-up rounds, each with a fresh container for each side. A round runs connect, disconnect and the two hooks on one network, then on the other, the order alternating between rounds, each step starting once the node's agent has used no CPU for %s (`/proc/PID/stat`, polled every %s, for at most %s): after a cluster operation the node's agent publishes the node's peers and reads the datastore for a while (and at any size re-plans its overlay at every change elsewhere), and an operation started meanwhile waits on the datastore's lock (a bbolt file lock, retried every 50 ms) for it, on either network. Back to back, a cluster operation right after another on the same node pays for the first one's aftermath. The hook is circuit run as runc runs it: no arguments, the OCI state on stdin (`creating` with the container's pid; `stopped`), the network in `CIRCUIT_NETWORK`.", pr.nodes, pr.rounds, pr.warmup, idleFor, idlePoll, idleBound)
		p("")
		p("| operation | cluster network: median | local network: median | ratio (median of paired ratios) | added (median of paired differences) |")
		p("| --- | --- | --- | --- | --- |")
		for _, row := range []struct {
			name           string
			cluster, local sample
		}{
			{"`network connect`", pr.connect, pr.connectLocal},
			{"`network disconnect`", pr.disconnect, pr.discLocal},
			{"hook, prestart (connects)", pr.hookStart, pr.hookStartLocal},
			{"hook, poststop (disconnects)", pr.hookStop, pr.hookStopLocal},
		} {
			p("| %s | %s ms | %s ms | %s | %s ms |", row.name, f(row.cluster.median()), f(row.local.median()),
				f2(paired(row.cluster, row.local, ratio).median()), f(paired(row.cluster, row.local, minus).median()))
		}
		p("")
	}
	if !r.cfg.smoke {
		p("%s", strings.TrimSpace(clusterProfile))
		p("")
	}
}

func sum(s sample) float64 {
	t := 0.0
	for _, v := range s {
		t += v
	}
	return t
}
