package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/circuit-cni/circuit/api"
	"github.com/circuit-cni/circuit/pkg/overlay"
)

// metrics are the agent's Prometheus metrics, on a registry of its own
// (several agents run in one test process), served by --metrics-addr.
// Gauges are set from the agent's view of etcd and from what the overlay
// loop programmed; counters and histograms as things happen.
type metrics struct {
	reg *prometheus.Registry

	nodes        *prometheus.GaugeVec // state
	blocks       *prometheus.GaugeVec // network
	free         *prometheus.GaugeVec // network
	peers        *prometheus.GaugeVec // network
	remoteNodes  *prometheus.GaugeVec // network
	routes       *prometheus.GaugeVec // network
	neighbours   *prometheus.GaugeVec // network
	fdb          *prometheus.GaugeVec // network
	reconciles   *prometheus.CounterVec
	reconcileDur *prometheus.HistogramVec
	watch        *prometheus.CounterVec // reason
	etcd         *prometheus.HistogramVec

	// Per-service and per-target counters of the cluster load balancer
	// register on reg too (serviceCollector), read from the kernel.
}

func newMetrics() *metrics {
	const ns = "circuit_agent"
	gauge := func(name, help string, labels ...string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: name, Help: help}, labels)
	}
	m := &metrics{
		reg:         prometheus.NewRegistry(),
		nodes:       gauge("nodes", "Cluster nodes by state (ready: its agent's lease lives; lost).", "state"),
		blocks:      gauge("blocks_held", "Address blocks this node holds, per cluster network.", "network"),
		free:        gauge("free_addresses", "Addresses left to hand out in this node's blocks, per cluster network.", "network"),
		peers:       gauge("peers", "Containers connected on this node, per cluster network.", "network"),
		remoteNodes: gauge("overlay_peers", "Other ready nodes this node's overlay reaches, per cluster network.", "network"),
		routes:      gauge("overlay_routes", "Overlay routes programmed, per cluster network.", "network"),
		neighbours:  gauge("overlay_neighbours", "Overlay neighbour entries programmed, per cluster network.", "network"),
		fdb:         gauge("overlay_fdb_entries", "Overlay FDB entries programmed, per cluster network.", "network"),
		reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "reconciles_total",
			Help: "Reconciles, by loop (cluster: blocks, replica, peers; overlay: the kernel) and result."}, []string{"loop", "result"}),
		reconcileDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "reconcile_duration_seconds",
			Help: "How long reconciles take, by loop.", Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10)}, []string{"loop"}),
		watch: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "watch_restarts_total",
			Help: "Times the agent listed etcd again, by reason (compacted, resync, error)."}, []string{"reason"}),
		etcd: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "etcd_request_duration_seconds",
			Help: "Latency of the agent's requests to etcd, by result (ok, error, unavailable).", Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10)}, []string{"result"}),
	}
	m.reg.MustRegister(m.nodes, m.blocks, m.free, m.peers, m.remoteNodes, m.routes, m.neighbours, m.fdb,
		m.reconciles, m.reconcileDur, m.watch, m.etcd,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// reconciled counts one reconcile of loop that started at start.
func (m *metrics) reconciled(loop string, start time.Time, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.reconciles.WithLabelValues(loop, result).Inc()
	m.reconcileDur.WithLabelValues(loop).Observe(time.Since(start).Seconds())
}

// etcdRequest times one request to etcd.
func (m *metrics) etcdRequest(start time.Time, err error) {
	result := "ok"
	switch {
	case errors.Is(err, api.ErrUnavailable):
		result = "unavailable"
	case err != nil:
		result = "error"
	}
	m.etcd.WithLabelValues(result).Observe(time.Since(start).Seconds())
}

// overlayEntries sets what each network's device carries, as the last
// overlay pass left it.
func (m *metrics) overlayEntries(nets []overlay.Network, rep overlay.Report) {
	for _, g := range []*prometheus.GaugeVec{m.routes, m.neighbours, m.fdb, m.remoteNodes} {
		g.Reset()
	}
	for _, n := range nets {
		c := rep.Devices[n.Device]
		m.routes.WithLabelValues(n.Label).Set(float64(c.Routes))
		m.neighbours.WithLabelValues(n.Label).Set(float64(c.Neighbours))
		m.fdb.WithLabelValues(n.Label).Set(float64(c.FDB))
		m.remoteNodes.WithLabelValues(n.Label).Set(float64(c.FDB)) // one FDB entry per remote node
	}
}

// observe sets the gauges read off the view and the node's datastore.
func (a *Agent) observe(st *state, facts localFacts) {
	m := a.metrics
	ready, lost := len(st.alive), 0
	for n := range st.nodes {
		if !st.alive[n] {
			lost++
		}
	}
	m.nodes.WithLabelValues(string(api.NodeReady)).Set(float64(ready))
	m.nodes.WithLabelValues(string(api.NodeLost)).Set(float64(lost))
	m.blocks.Reset()
	m.free.Reset()
	m.peers.Reset()
	for name := range st.networks {
		if facts.local[name] {
			continue
		}
		var mine []netip.Prefix
		for _, b := range st.held(name, a.cfg.Node) {
			if !a.conflict(b) {
				mine = append(mine, b)
			}
		}
		m.blocks.WithLabelValues(name).Set(float64(len(mine)))
		m.peers.WithLabelValues(name).Set(float64(facts.peers[name]))
		used, err := a.used(name, mine)
		if err != nil {
			continue
		}
		var free uint64
		for _, b := range mine {
			if u := usable(b); u > used[b] {
				free += u - used[b]
			}
		}
		m.free.WithLabelValues(name).Set(float64(free))
	}
}

// serveMetrics serves /metrics on addr until ctx ends.
func (a *Agent) serveMetrics(ctx context.Context, addr string) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Errorf("metrics: %v", err)
		}
	}()
	a.log.Infof("metrics on http://%s/metrics", ln.Addr())
	return func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		<-done
	}, nil
}
