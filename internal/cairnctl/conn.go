package cairnctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cairn-csi/cairn/internal/endpoint"
)

// connOptions are the global flags that say how to reach a driver.
type connOptions struct {
	TLSCert, TLSKey, TLSCA string
	Insecure               bool // plaintext on tcp://
	Timeout                time.Duration
}

func (o connOptions) tlsGiven() bool { return o.TLSCert != "" || o.TLSKey != "" || o.TLSCA != "" }

// clients are the CSI service clients of one driver. With a separate
// controller endpoint, Controller (and Identity calls about it) go there.
type clients struct {
	Identity        csi.IdentityClient
	Controller      csi.ControllerClient
	Node            csi.NodeClient
	GroupController csi.GroupControllerClient
	conns           []*grpc.ClientConn
}

func (c *clients) Close() {
	for _, cc := range c.conns {
		cc.Close()
	}
}

// dial connects to the node endpoint and, if it differs, the controller
// endpoint, and waits until both are connected, so that "cannot connect"
// is told apart from an error the driver returns.
func dial(ctx context.Context, nodeEP, ctlEP string, o connOptions) (*clients, error) {
	cc, err := dialOne(ctx, nodeEP, o)
	if err != nil {
		return nil, err
	}
	cl := &clients{conns: []*grpc.ClientConn{cc}}
	ctl := cc
	if ctlEP != "" && ctlEP != nodeEP {
		if ctl, err = dialOne(ctx, ctlEP, o); err != nil {
			cl.Close()
			return nil, err
		}
		cl.conns = append(cl.conns, ctl)
	}
	cl.Identity = csi.NewIdentityClient(ctl)
	cl.Controller = csi.NewControllerClient(ctl)
	cl.GroupController = csi.NewGroupControllerClient(ctl)
	cl.Node = csi.NewNodeClient(cc)
	return cl, nil
}

// dialOne connects to one endpoint and waits for the connection, at most
// o.Timeout. The first failure is final: a missing socket is reported at
// once rather than retried until the timeout.
func dialOne(ctx context.Context, raw string, o connOptions) (*grpc.ClientConn, error) {
	ep, err := endpoint.Parse(raw)
	if err != nil {
		return nil, usageError{err}
	}
	if ep.Network == "tcp" && o.Insecure && o.tlsGiven() {
		return nil, usagef("--insecure and --tls-* contradict each other")
	}
	rec := &failureRecorder{}
	creds := credentials.TransportCredentials(insecure.NewCredentials())
	if o.tlsGiven() || (ep.Network == "tcp" && !o.Insecure) {
		c, err := endpoint.ClientCredentials(o.TLSCert, o.TLSKey, o.TLSCA)
		if err != nil {
			return nil, usageError{fmt.Errorf("TLS: %w", err)}
		}
		creds = recordingCreds{TransportCredentials: c, rec: rec}
	}
	const maxReplyBytes = 64 << 20
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, ep.Network, addr)
			rec.set(err)
			return c, err
		}),
	}
	// A driver that ignores max_entries may still answer a listing in one
	// big reply; accept up to 64 MiB rather than fail on gRPC's 4 MiB.
	opts = append(opts, grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxReplyBytes)))
	if ep.Network == "unix" {
		// The socket path is no host name; gRPC would send it as :authority.
		opts = append(opts, grpc.WithAuthority("localhost"))
	}
	// passthrough: the address goes to the dialer unresolved, so the Unix
	// path and a host:port are both dialled exactly as given.
	cc, err := grpc.NewClient("passthrough:///"+ep.Address, opts...)
	if err != nil {
		return nil, connectError{ep.String(), err}
	}
	wctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	if err := waitConnected(wctx, cc, rec); err != nil {
		cc.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, connectError{ep.String(), err}
	}
	return cc, nil
}

// waitConnected drives cc to READY. TRANSIENT_FAILURE ends the wait with
// the recorded cause: gRPC itself would retry with backoff until the
// deadline, which for a missing socket only makes the user wait.
func waitConnected(ctx context.Context, cc *grpc.ClientConn, rec *failureRecorder) error {
	cc.Connect()
	for {
		s := cc.GetState()
		switch s {
		case connectivity.Ready:
			return nil
		case connectivity.TransientFailure, connectivity.Shutdown:
			if err := rec.get(); err != nil {
				return err
			}
			// Dialled, no TLS error, yet no gRPC: the far end hung up.
			return errors.New("the server closed the connection before speaking gRPC (does it expect TLS? is it a gRPC server?)")
		case connectivity.Idle:
			cc.Connect()
		}
		if !cc.WaitForStateChange(ctx, s) {
			if err := rec.get(); err != nil {
				return err
			}
			return errors.New("not connected within --timeout")
		}
	}
}

// failureRecorder keeps the last dial or handshake error, which gRPC's
// connectivity states do not carry.
type failureRecorder struct {
	mu  sync.Mutex
	err error
}

func (r *failureRecorder) set(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.err = err
}

func (r *failureRecorder) get() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// recordingCreds records TLS handshake failures (a bad CA, a refused
// client certificate) so that they can be reported as the cause.
type recordingCreds struct {
	credentials.TransportCredentials
	rec *failureRecorder
}

func (c recordingCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ClientHandshake(ctx, authority, raw)
	if err != nil {
		c.rec.set(fmt.Errorf("TLS handshake: %w", err))
		return conn, info, err
	}
	return recordingConn{Conn: conn, rec: c.rec}, info, nil
}

// recordingConn records read errors on a TLS connection. In TLS 1.3 the
// server checks the client's certificate after the client's handshake has
// returned, so a refused certificate shows up as the first read failing
// (while gRPC waits for the server's preface) with the server's alert.
type recordingConn struct {
	net.Conn
	rec *failureRecorder
}

func (c recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		c.rec.set(fmt.Errorf("TLS: %w", err))
	}
	return n, err
}

func (c recordingCreds) Clone() credentials.TransportCredentials {
	return recordingCreds{TransportCredentials: c.TransportCredentials.Clone(), rec: c.rec}
}
