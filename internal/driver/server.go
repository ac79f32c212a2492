package driver

import (
	"context"
	"log/slog"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// NewServer returns a gRPC server with the services of d's mode
// registered. Requests are logged with their secrets stripped; extra
// interceptors (metrics) run outside the logging one. Innermost is
// mapErrors, so the logger and metrics see the code the caller gets.
func NewServer(d *Driver, opts []grpc.ServerOption, interceptors ...grpc.UnaryServerInterceptor) *grpc.Server {
	chain := append(append([]grpc.UnaryServerInterceptor{}, interceptors...), d.logCalls, mapErrors)
	srv := grpc.NewServer(append(opts, grpc.ChainUnaryInterceptor(chain...))...)
	csi.RegisterIdentityServer(srv, d)
	if d.cfg.Mode.controller() {
		csi.RegisterControllerServer(srv, d)
	}
	if d.cfg.Mode.node() {
		csi.RegisterNodeServer(srv, d)
	} else {
		// external-resizer asks NodeGetCapabilities on the controller's
		// socket to choose node-only ("trivial") expansion, so a
		// controller answers for the node plugin's capabilities.
		csi.RegisterNodeServer(srv, nodeCapabilities{d: d})
	}
	return srv
}

// nodeCapabilities is the Node service of a controller-only process: it
// describes the node plugin and serves nothing else.
type nodeCapabilities struct {
	csi.UnimplementedNodeServer
	d *Driver
}

func (n nodeCapabilities) NodeGetCapabilities(ctx context.Context, req *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return n.d.NodeGetCapabilities(ctx, req)
}

// mapErrors is the error edge: handlers return classed errors
// (internal/errdefs) and this turns them into status errors, the one place
// that does (through toStatus and its one table). Handlers never call
// toStatus themselves, so a direct Go call (internal/driver's own tests)
// sees the classed error; those tests ask atEdge, which runs this
// function, for the code a client would get. No second mapping exists.
func mapErrors(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	if err != nil {
		// A failed call carries no response: the handlers' empty
		// response values beside an error are not sent.
		return nil, toStatus(err)
	}
	return resp, nil
}

// logCalls logs every call. Requests pass through redacted: protosanitizer
// blanks every field marked csi_secret, and credential-like keys of string
// maps (volume_context's service-account tokens) are blanked too, so
// secrets never reach the log.
func (d *Driver) logCalls(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	// Rendering a message is most of a small call's CPU (and for a page of
	// ListVolumes, megabytes): only when debug logging will print it.
	debug := d.log.Enabled(ctx, slog.LevelDebug)
	if debug {
		d.log.Debug("call", "method", info.FullMethod, "request", redacted(req))
	}
	resp, err := handler(ctx, req)
	attrs := []any{"method", info.FullMethod, "duration", time.Since(start)}
	if err != nil {
		st, _ := status.FromError(err)
		attrs = append(attrs, "code", st.Code().String(), "err", st.Message(), "request", redacted(req))
		d.log.Log(ctx, levelFor(st.Code().String()), "call failed", attrs...)
		return resp, err
	}
	if debug {
		d.log.Debug("call done", append(attrs, "response", redacted(resp))...)
	}
	return resp, nil
}

// levelFor keeps expected outcomes (a retry finding the volume gone, a
// busy volume) out of the error level.
func levelFor(code string) slog.Level {
	switch code {
	case "Internal", "Unknown", "DataLoss", "Unavailable":
		return slog.LevelError
	}
	return slog.LevelWarn
}
