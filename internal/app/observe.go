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
)

// observability is the HTTP listener for /healthz (and /metrics) and the
// gRPC interceptors that feed it.
type observability struct {
	interceptors []grpc.UnaryServerInterceptor
	shutdown     func()
}

// startObservability serves /healthz on --metrics-address, reflecting
// Probe: 200 when ready, 503 with the reason when not.
func startObservability(ctx context.Context, c Config, d *driver.Driver, log *slog.Logger) (observability, error) {
	obs := observability{shutdown: func() {}}
	if c.MetricsAddress == "" {
		return obs, nil
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := d.Check(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
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
	log.Info("serving /healthz", "address", lis.Addr().String())
	obs.shutdown = func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}
	return obs, nil
}
