package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/hybridrelay/hybridrelay/internal/admin"
	"github.com/hybridrelay/hybridrelay/pkg/dataplane"
)

const ns = "hybridrelay"

// SnapshotFunc returns the daemon's current state.
type SnapshotFunc func() (admin.Snapshot, error)

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(ns+"_"+name, help, labels, nil)
}

var (
	dUp               = desc("up", "1 while the relay serves; carries the datapath in use.", "datapath")
	dAllocations      = desc("allocations", "Live allocations.")
	dPermissions      = desc("permissions", "Live permissions.")
	dChannels         = desc("channels", "Live channel bindings.")
	dOffloaded        = desc("offloaded_channels", "Channel bindings forwarded by the kernel fast path.")
	dAllocEvents      = desc("allocation_events_total", "Allocations created, expired and deleted.", "event")
	dAuthFailures     = desc("auth_failures_total", "Requests refused for their credentials, by reason.", "reason")
	dRequests         = desc("requests_total", "STUN/TURN requests by method and result (ok, dropped or the error code).", "method", "result")
	dPackets          = desc("relayed_packets_total", "Datagrams relayed, by datapath (xdp = kernel fast path) and direction.", "datapath", "direction")
	dBytes            = desc("relayed_bytes_total", "Payload bytes relayed, by datapath (xdp = kernel fast path) and direction.", "datapath", "direction")
	dDataIndications  = desc("data_indications_total", "Datagrams delivered to clients as Data indications (no channel).")
	dDrops            = desc("drops_total", "Datagrams the control plane dropped, by reason.", "reason")
	dOffload          = desc("offload_events_total", "Kernel fast path table operations, by event.", "event")
	dKernelPass       = desc("kernel_pass_total", "Packets the XDP program passed to the kernel stack, by reason; group is normal (userspace's traffic by design), misconfiguration (the host keeps the kernel path from forwarding) or other.", "reason", "group")
	dKernelDrops      = desc("kernel_drops_total", "Packets the XDP program dropped, by reason (bandwidth: over the allocation's bandwidth-limit).", "reason")
	dKernelDropBytes  = desc("kernel_drop_bytes_total", "Payload bytes of the packets the XDP program dropped, by reason.", "reason")
	dKernelPrefilter  = desc("kernel_prefilter_drops_total", "Datagrams to a UDP listener the XDP pre-filter dropped because the server would discard them by their framing alone, by reason.", "reason")
	dKernelChannels   = desc("kernel_channels", "Entries in the kernel channel table.")
	dKernelMax        = desc("kernel_channels_max", "Capacity of the kernel channel table.")
	dBatchSize        = desc("rx_batch_size", "Datagrams per receive batch of the userspace datapath.", "datapath")
	dIO               = desc("dataplane_total", "Userspace datapath counters (syscalls, packets, GSO), by counter.", "datapath", "counter")
	dRateLimitSources = desc("rate_limiter_sources", "Source addresses the unauthenticated-request limiter tracks.")
	dTrustedTuples    = desc("trusted_tuples", "UDP 5-tuples with their own unauthenticated-request budget (they hold an allocation or authenticated within the nonce lifetime).")
	dDraining         = desc("draining", "1 while the relay drains: new Allocates are sent to an alternate server (300) or refused (486); hybridrelay_allocations are then the allocations left.")
	dMaxAllocations   = desc("max_allocations", "The max-allocations quota (0 = unlimited).")
	dProtocol         = desc("protocol_events_total", "DTLS listener, RFC 5780 NAT discovery and RFC 6062 TCP allocation events, by event.", "event")
)

// collector turns a snapshot into metrics at scrape time.
type collector struct {
	snap   SnapshotFunc
	errors prometheus.Counter
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{dUp, dAllocations, dPermissions, dChannels, dOffloaded, dAllocEvents,
		dAuthFailures, dRequests, dPackets, dBytes, dDataIndications, dDrops, dOffload, dKernelPass, dKernelDrops, dKernelDropBytes, dKernelPrefilter,
		dKernelChannels, dKernelMax, dBatchSize, dIO, dRateLimitSources, dTrustedTuples, dDraining, dMaxAllocations, dProtocol} {
		ch <- d
	}
	c.errors.Describe(ch)
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s, err := c.snap()
	c.errors.Collect(ch)
	if err != nil {
		c.errors.Inc()
		return
	}
	gauge := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	counter := func(d *prometheus.Desc, v uint64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), l...)
	}
	userspace := "plain"
	if s.Dataplane != nil && s.Dataplane.Datapath != "" {
		userspace = s.Dataplane.Datapath
	}
	gauge(dUp, 1, s.Datapath)
	if srv := s.Server; srv != nil {
		gauge(dAllocations, float64(srv.Allocations))
		gauge(dPermissions, float64(srv.Permissions))
		gauge(dChannels, float64(srv.Channels))
		gauge(dOffloaded, float64(srv.OffloadedChannels))
		gauge(dRateLimitSources, float64(srv.RateLimiterSources))
		gauge(dTrustedTuples, float64(srv.TrustedTuples))
		draining := 0.0
		if srv.Draining {
			draining = 1
		}
		gauge(dDraining, draining)
		gauge(dMaxAllocations, float64(srv.MaxAllocations))
		counter(dAllocEvents, srv.AllocationsCreated, "created")
		counter(dAllocEvents, srv.AllocationsExpired, "expired")
		counter(dAllocEvents, srv.AllocationsDeleted, "deleted")
		for _, k := range slices.Sorted(maps.Keys(srv.AuthFailures)) {
			counter(dAuthFailures, srv.AuthFailures[k], k)
		}
		for _, m := range slices.Sorted(maps.Keys(srv.Requests)) {
			for _, r := range slices.Sorted(maps.Keys(srv.Requests[m])) {
				counter(dRequests, srv.Requests[m][r], m, r)
			}
		}
		counter(dPackets, srv.UserspaceToPeer.Packets, userspace, "to_peer")
		counter(dPackets, srv.UserspaceToClient.Packets, userspace, "to_client")
		counter(dBytes, srv.UserspaceToPeer.Bytes, userspace, "to_peer")
		counter(dBytes, srv.UserspaceToClient.Bytes, userspace, "to_client")
		counter(dDataIndications, srv.DataIndications)
		for _, k := range slices.Sorted(maps.Keys(srv.Drops)) {
			counter(dDrops, srv.Drops[k], k)
		}
		for _, e := range []struct {
			name string
			v    uint64
		}{{"install", srv.OffloadInstalls}, {"install_error", srv.OffloadInstallErrors}, {"table_full", srv.OffloadFull},
			{"refresh_error", srv.OffloadRefreshErrors}, {"remove", srv.OffloadRemoves}, {"remove_error", srv.OffloadRemoveErrors}} {
			counter(dOffload, e.v, e.name)
		}
		for _, k := range slices.Sorted(maps.Keys(srv.Protocol)) {
			counter(dProtocol, srv.Protocol[k], k)
		}
	}
	if k := s.Kernel; k != nil {
		// The program's own forwarding counters are authoritative for the
		// kernel path (they include channels already gone).
		counter(dPackets, k.Counters["fwd_to_peer_packets"], "xdp", "to_peer")
		counter(dPackets, k.Counters["fwd_to_client_packets"], "xdp", "to_client")
		counter(dBytes, k.Counters["fwd_to_peer_bytes"], "xdp", "to_peer")
		counter(dBytes, k.Counters["fwd_to_client_bytes"], "xdp", "to_client")
		// Relay to relay: one client's ChannelData turned into
		// another's by the program.
		counter(dPackets, k.Counters["fwd_hairpin_packets"], "xdp", "hairpin")
		counter(dBytes, k.Counters["fwd_hairpin_bytes"], "xdp", "hairpin")
		counter(dKernelDrops, k.Counters["drop_bandwidth_packets"], "bandwidth")
		counter(dKernelDropBytes, k.Counters["drop_bandwidth_bytes"], "bandwidth")
		for _, p := range admin.PassCounts(k.Counters) {
			counter(dKernelPass, p.Packets, p.Name, p.Group)
		}
		for _, p := range admin.PrefilterCounts(k.Counters) {
			counter(dKernelPrefilter, p.Packets, p.Name)
		}
		gauge(dKernelChannels, float64(k.Channels))
		gauge(dKernelMax, float64(k.MaxChannels))
	}
	if d := s.Dataplane; d != nil {
		ch <- batchHistogram(d, userspace)
		for _, e := range []struct {
			name string
			v    uint64
		}{{"read_calls", d.ReadCalls}, {"rx_packets", d.RxPackets}, {"rx_bytes", d.RxBytes}, {"rx_gro_reads", d.RxGROReads},
			{"rx_kernel_drops", d.RxKernelDrops}, {"rx_stale_drops", d.RxStaleDrops}, {"tx_packets", d.TxPackets}, {"tx_bytes", d.TxBytes},
			{"tx_gso_sends", d.TxGSOSends}, {"tx_gso_segments", d.TxGSOSegments}, {"tx_mmsg_calls", d.TxMmsgCalls},
			{"tx_mmsg_packets", d.TxMmsgPackets}, {"tx_single_sends", d.TxSingleSends}, {"tx_errors", d.TxErrors},
			{"gso_fallbacks", d.GSOFallbacks}, {"drops", d.Drops}} {
			counter(dIO, e.v, userspace, e.name)
		}
	}
}

// batchHistogram maps the datapath's bucket counts (a batch of n counted in
// the first bucket whose bound is >= n) onto a Prometheus histogram. The
// sum is the datagrams received, which is the sum of all batch sizes.
func batchHistogram(d *dataplane.Stats, datapath string) prometheus.Metric {
	buckets := make(map[float64]uint64, len(dataplane.BatchHistogramBuckets))
	var cum uint64
	for i, bound := range dataplane.BatchHistogramBuckets {
		cum += d.BatchSizes[i]
		buckets[float64(bound)] = cum
	}
	return prometheus.MustNewConstHistogram(dBatchSize, cum, float64(d.RxPackets), buckets, datapath)
}

// Server is the HTTP endpoint.
type Server struct {
	srv  *http.Server
	ln   net.Listener
	done chan struct{}
}

// Handler returns the /metrics handler for snap, with the Go runtime and
// process collectors next to ours.
func Handler(snap SnapshotFunc, log *slog.Logger) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(&collector{snap: snap, errors: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: ns, Name: "scrape_errors_total", Help: "Scrapes that could not read the daemon's state."})})
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var errLog promhttp.Logger
	if log != nil {
		errLog = slogAdapter{log}
	}
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: errLog, Timeout: 10 * time.Second})
}

type slogAdapter struct{ l *slog.Logger }

func (a slogAdapter) Println(v ...any) { a.l.Warn("metrics", "err", fmt.Sprint(v...)) }

// Listen serves /metrics, /healthz and /readyz on addr (an IP:PORT; port 0
// picks one).
func Listen(addr string, snap SnapshotFunc, health Health, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.Default()
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", Handler(snap, log))
	mux.Handle(PathHealthz, probeHandler(health.Live))
	mux.Handle(PathReadyz, probeHandler(health.Ready))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintln(w, "hybridrelay: /metrics, /healthz, /readyz")
	})
	s := &Server{ln: ln, done: make(chan struct{}), srv: &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics endpoint stopped", "err", err)
		}
	}()
	return s, nil
}

// Addr is the bound address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Close shuts the endpoint down, waiting briefly for scrapes in flight.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	<-s.done
	if err != nil {
		return fmt.Errorf("close metrics endpoint: %w", err)
	}
	return nil
}
