package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/circuit-cni/circuit/pkg/testutil"
)

// connectResult compares `circuit network connect`/`disconnect` with the
// bridge plugin's own ADD/DEL, round by round.
type connectResult struct {
	rounds                    int
	connect, add              sample // ms
	disconnect, del           sample // ms
	startup                   sample // ms, `circuit version`
	connectRSS, disconnectRSS int64  // KiB, largest seen
}

// connectVsPlugin runs the pairs interleaved, each on a fresh network
// namespace, alternating which goes first, after two warm-up rounds.
func (b *bench) connectVsPlugin(ctx context.Context, r *report) error {
	const net = "bench-conn"
	if err := b.createNetwork(ctx, net, b.bridgeConf(net, "cbc"+b.tag, "10.211.0.0/22"), "cbc"+b.tag); err != nil {
		return err
	}
	p := b.newPlugin(b.bridgeConf("bench-plain", "cbp"+b.tag, "10.211.4.0/22"), "cbp"+b.tag)
	res := &connectResult{rounds: b.cfg.rounds}
	const warmup = 2
	for i := range warmup + b.cfg.rounds {
		if err := ctx.Err(); err != nil {
			return err
		}
		a, s, err := b.sleeperPair()
		if err != nil {
			return err
		}
		id := "bench-plain-" + strconv.Itoa(i)
		pid := strconv.Itoa(a.PID)
		var conn, add, disc, del result
		circuitFirst := i%2 == 0
		for _, step := range order(circuitFirst,
			func() error { conn, err = b.circuit(ctx, "network", "connect", pid, net); return err },
			func() error { add, err = p.call(ctx, "ADD", id, s.PID); return err }) {
			if err := step(); err != nil {
				return err
			}
		}
		for _, step := range order(circuitFirst,
			func() error { disc, err = b.circuit(ctx, "network", "disconnect", pid, net); return err },
			func() error { del, err = p.call(ctx, "DEL", id, s.PID); return err }) {
			if err := step(); err != nil {
				return err
			}
		}
		b.kill(a)
		b.kill(s)
		if i < warmup {
			continue
		}
		res.connect = append(res.connect, ms(conn.took))
		res.add = append(res.add, ms(add.took))
		res.disconnect = append(res.disconnect, ms(disc.took))
		res.del = append(res.del, ms(del.took))
	}
	// Memory: one more pair, under time(1).
	a, err := b.sleeper()
	if err != nil {
		return err
	}
	defer b.kill(a)
	pid := strconv.Itoa(a.PID)
	if res.connectRSS, err = peakRSS(ctx, nil, b.cfg.circuit, b.circuitArgs("network", "connect", pid, net)...); err != nil {
		return err
	}
	if res.disconnectRSS, err = peakRSS(ctx, nil, b.cfg.circuit, b.circuitArgs("network", "disconnect", pid, net)...); err != nil {
		return err
	}
	// What starting the process costs before it does anything.
	for range b.cfg.rounds {
		v, err := b.circuit(ctx, "version")
		if err != nil {
			return err
		}
		res.startup = append(res.startup, ms(v.took))
	}
	r.connect = res
	return nil
}

// order returns the two steps, the first one first when firstFirst.
func order(firstFirst bool, first, second func() error) []func() error {
	if firstFirst {
		return []func() error{first, second}
	}
	return []func() error{second, first}
}

// scaleResult is connect latency against the peers already on a network.
type scaleResult struct {
	shape        string // the network's plugin, as reported
	peers        int
	connect, add sample // ms, index k: k peers already attached
	list         sample // ms, `network list` with all peers
	inspect      sample // ms, `network inspect`
	listRSS      int64
	dbBytes      int64
	teardown     time.Duration // disconnecting every peer, 8 at a time
}

// scale fills a network twice: with the README's bridge (whose plugin
// does more work as containers accumulate: iptables rules, bridge ports)
// and with macvlan (whose plugin does not), so that circuit's own growth
// shows apart from the plugin's.
func (b *bench) scale(ctx context.Context, r *report) error {
	if b.cfg.peers > 1000 {
		return fmt.Errorf("at most 1000 peers fit the scale run's /22 subnets")
	}
	const bridged = "bench-scale"
	if err := b.createNetwork(ctx, bridged, b.bridgeConf(bridged, "cbs"+b.tag, "10.211.8.0/22"), "cbs"+b.tag); err != nil {
		return err
	}
	err := b.scaleOn(ctx, r, "bridge, ipMasq (README)", bridged, b.newPlugin(b.bridgeConf("bench-scale-plain", "cbq"+b.tag, "10.211.12.0/22"), "cbq"+b.tag))
	if err != nil {
		return err
	}
	const mv = "bench-scale-mv"
	for _, m := range []string{"cbm" + b.tag, "cbn" + b.tag} {
		if err := b.master(m); err != nil {
			return err
		}
	}
	if err := b.createNetwork(ctx, mv, b.macvlanConf(mv, "cbm"+b.tag, "10.211.24.0/22")); err != nil {
		return err
	}
	return b.scaleOn(ctx, r, "macvlan", mv, b.newPlugin(b.macvlanConf("bench-scale-mv-plain", "cbn"+b.tag, "10.211.28.0/22")))
}

// scaleOn attaches peers one at a time to a circuit network and, in step,
// as many through the plugin alone; then detaches them all.
func (b *bench) scaleOn(ctx context.Context, r *report, shape, net string, p *plugin) error {
	res := &scaleResult{shape: shape, peers: b.cfg.peers}
	r.scale = append(r.scale, res)
	type attached struct {
		circuit, plugin *testutil.Sleeper
		id              string
	}
	var all []attached
	// Whatever is attached is detached, even after an error.
	defer func() {
		t0 := time.Now()
		parallel(8, len(all), func(i int) {
			bg := context.Background()
			b.circuit(bg, "network", "disconnect", strconv.Itoa(all[i].circuit.PID), net)
			p.call(bg, "DEL", all[i].id, all[i].plugin.PID)
			b.kill(all[i].circuit)
			b.kill(all[i].plugin)
		})
		res.teardown = time.Since(t0)
	}()
	for k := range b.cfg.peers {
		if err := ctx.Err(); err != nil {
			return err
		}
		a, s, err := b.sleeperPair()
		if err != nil {
			return err
		}
		id := net + "-" + strconv.Itoa(k)
		var conn, add result
		var cerr, aerr error
		for _, step := range order(k%2 == 0,
			func() error { conn, cerr = b.circuit(ctx, "network", "connect", strconv.Itoa(a.PID), net); return cerr },
			func() error { add, aerr = p.call(ctx, "ADD", id, s.PID); return aerr }) {
			step()
		}
		all = append(all, attached{a, s, id})
		if cerr != nil || aerr != nil {
			return fmt.Errorf("%s, peer %d: %w", shape, k, firstErr(cerr, aerr))
		}
		res.connect = append(res.connect, ms(conn.took))
		res.add = append(res.add, ms(add.took))
		if (k+1)%100 == 0 {
			logf("scale (%s): %d peers", shape, k+1)
		}
	}
	for range 10 {
		l, err := b.circuit(ctx, "network", "list")
		if err != nil {
			return err
		}
		res.list = append(res.list, ms(l.took))
		in, err := b.circuit(ctx, "network", "inspect", net)
		if err != nil {
			return err
		}
		res.inspect = append(res.inspect, ms(in.took))
	}
	var err error
	if res.listRSS, err = peakRSS(ctx, nil, b.cfg.circuit, b.circuitArgs("network", "list")...); err != nil {
		return err
	}
	res.dbBytes = fileSize(b.state + "/circuit.db")
	return nil
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
