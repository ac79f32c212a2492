package app

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	"google.golang.org/grpc"

	"github.com/cairn-csi/cairn/internal/driver"
	"github.com/cairn-csi/cairn/internal/metrics"
)

// observability is the HTTP listener for /healthz and /metrics and the
// gRPC interceptors that feed it.
type observability struct {
	interceptors []grpc.UnaryServerInterceptor
	shutdown     func()
}

// startObservability serves, on --metrics-address, /healthz (reflecting
// Probe: 200 when ready, 503 with the reason when not) and /metrics
// (Prometheus). With the flag empty it serves nothing and adds no
// interceptor, so the metrics cost nothing when off.
//
// The address actually bound is logged as address=, which is how a caller
// that asked for port 0 (tests) finds it.
func startObservability(ctx context.Context, c Config, d *driver.Driver, log *slog.Logger) (observability, error) {
	obs := observability{shutdown: func() {}}
	if c.MetricsAddress == "" {
		return obs, nil
	}
	m := metrics.New(metrics.Options{
		Source: driverSource{d},
		Build:  metrics.BuildInfo{Version: Version()},
		Logger: log,
	})
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := d.Check(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	mux.Handle("/metrics", m.Handler())
	lis, err := net.Listen("tcp", c.MetricsAddress)
	if err != nil {
		return obs, err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics listener stopped", "err", err)
		}
	}()
	log.Info("serving /healthz and /metrics", "address", lis.Addr().String())
	obs.interceptors = []grpc.UnaryServerInterceptor{m.UnaryServerInterceptor()}
	obs.shutdown = func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}
	return obs, nil
}

// driverSource adapts the driver's hooks (internal/driver/metrics_hooks.go)
// to metrics.Source, so that internal/metrics need not know the driver.
type driverSource struct{ d *driver.Driver }

func (s driverSource) Pools(ctx context.Context) ([]metrics.Pool, error) {
	stats, err := s.d.PoolStats(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]metrics.Pool, 0, len(stats))
	for _, p := range stats {
		out = append(out, metrics.Pool{
			Name: p.Name, Type: p.Type,
			CapacityKnown:  p.CapacityErr == nil,
			TotalBytes:     p.Capacity.TotalBytes,
			AvailableBytes: p.Capacity.AvailableBytes,
			Enforced:       p.Capacity.Enforced,
			Counted:        p.Counted,
			Volumes:        p.Volumes,
			Snapshots:      p.Snapshots,
		})
	}
	return out, nil
}

func (s driverSource) Reconcile() []metrics.Reconcile {
	var out []metrics.Reconcile
	for _, r := range s.d.ReconcileStats() {
		out = append(out, metrics.Reconcile{Pool: r.Pool, OrphansFound: r.OrphansFound, OrphansRemoved: r.OrphansRemoved, MissingData: r.MissingData})
	}
	return out
}
