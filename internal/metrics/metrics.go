// Package metrics owns Cairn's Prometheus metrics: the per-RPC counter and
// latency histogram fed by a gRPC interceptor, the pool and reconcile
// gauges and counters read from the driver at scrape time, build info, and
// the /metrics HTTP handler that serves them from Cairn's own registry.
//
// Pool state is never pushed into gauges on the CSI call path: a collector
// asks a Source when Prometheus scrapes, so the numbers are as fresh as the
// scrape and a busy driver pays nothing for them between scrapes.
//
// The package knows nothing of the driver's types: internal/app adapts the
// driver to Source, which keeps this package testable with a fake.
package metrics

import (
	"context"
	"log/slog"
	"net/http"
	"path"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Namespace prefixes every Cairn metric.
const Namespace = "cairn"

// Pool is one pool's state as a Source reports it.
type Pool struct {
	Name, Type string
	// CapacityKnown is false when the pool's space could not be read; the
	// capacity gauges are then left out for this pool rather than reported
	// as zero, which would look like a full pool.
	CapacityKnown  bool
	TotalBytes     int64
	AvailableBytes int64
	Enforced       bool // volume sizes are hard limits (quota, qgroup, file size)
	// Counted is false when the process has no metadata store (node mode);
	// the volume and snapshot gauges are then left out.
	Counted            bool
	Volumes, Snapshots int
}

// Reconcile is what reconcile found in one pool, summed since start.
type Reconcile struct {
	Pool                         string
	OrphansFound, OrphansRemoved uint64
	MissingData                  int
}

// Source is what the collector reads at scrape time.
type Source interface {
	// Pools reports every configured pool. An error drops the pool metrics
	// from that scrape (and is logged); the other metrics are still served.
	Pools(ctx context.Context) ([]Pool, error)
	// Reconcile reports reconcile totals per pool.
	Reconcile() []Reconcile
}

// BuildInfo labels cairn_build_info.
type BuildInfo struct {
	Version string
	// GoVersion defaults to runtime.Version().
	GoVersion string
}

// Options configure New.
type Options struct {
	Source Source
	Build  BuildInfo
	Logger *slog.Logger
	// ScrapeTimeout bounds one read of the Source (default 10s), so that a
	// hung pool filesystem cannot hang /metrics forever.
	ScrapeTimeout time.Duration
}

// Metrics is Cairn's registry and the instruments that feed it.
type Metrics struct {
	reg      *prometheus.Registry
	ops      *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// durationBuckets span what a CSI call takes: sub-millisecond metadata
// reads to multi-minute copies of a large volume (clone on a dir pool).
var durationBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}

// New builds the registry: Cairn's metrics, plus the standard Go runtime
// and process collectors (go_*, process_*), which dashboards expect.
func New(opts Options) *Metrics {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.ScrapeTimeout <= 0 {
		opts.ScrapeTimeout = 10 * time.Second
	}
	if opts.Build.GoVersion == "" {
		opts.Build.GoVersion = runtime.Version()
	}
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "csi", Name: "operations_total",
			Help: "CSI calls served, by method and gRPC status code.",
		}, []string{"method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "csi", Name: "operation_duration_seconds",
			Help:    "Time to serve a CSI call, by method and gRPC status code.",
			Buckets: durationBuckets,
		}, []string{"method", "code"}),
	}
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "build_info",
		Help:        "Always 1; the labels say which build is running.",
		ConstLabels: prometheus.Labels{"version": opts.Build.Version, "goversion": opts.Build.GoVersion},
	})
	build.Set(1)
	m.reg.MustRegister(
		m.ops, m.duration, build,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	if opts.Source != nil {
		m.reg.MustRegister(newPoolCollector(opts.Source, opts.Logger, opts.ScrapeTimeout))
	}
	return m
}

// Registry is the registry the handler serves, for tests and for callers
// that want to add their own collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus exposition formats.
// Collection errors are served as far as possible, not as a 500, so one
// bad collector never blinds the whole scrape.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError,
		Registry:      m.reg, // promhttp_metric_handler_errors_total
	})
}

// UnaryServerInterceptor counts and times every unary call. It must run
// outside the driver's own interceptors so that the code it records is
// the one the client receives.
func (m *Metrics) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		m.Observe(info.FullMethod, status.Code(err), time.Since(start))
		return resp, err
	}
}

// Observe records one call. fullMethod is the gRPC method path
// (/csi.v1.Controller/CreateVolume); the label is its last element, which
// is unique across the CSI services.
func (m *Metrics) Observe(fullMethod string, code codes.Code, d time.Duration) {
	method := path.Base(fullMethod)
	m.ops.WithLabelValues(method, code.String()).Inc()
	m.duration.WithLabelValues(method, code.String()).Observe(d.Seconds())
}
