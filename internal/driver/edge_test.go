package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	"github.com/cairn-csi/cairn/internal/errdefs"
)

// atEdge is what a gRPC client would get for err, a handler's error: it
// runs err through mapErrors, the same interceptor NewServer installs, so
// tests that call handlers directly check the mapping that really runs.
func atEdge(err error) error {
	_, out := mapErrors(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/test"},
		func(context.Context, any) (any, error) { return nil, err })
	return out
}

func TestMapErrors(t *testing.T) {
	made := status.Error(codes.Aborted, "made by hand")
	tests := []struct {
		name string
		err  error
		code codes.Code
	}{
		{"nil", nil, codes.OK},
		{"classed", fmt.Errorf("volume x: %w", errdefs.ErrNotFound), codes.NotFound},
		{"unclassed", errors.New("boom"), codes.Internal},
		{"status already", made, codes.Aborted},
		{"deadline", fmt.Errorf("waiting: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, got := mapErrors(context.Background(), nil, &grpc.UnaryServerInfo{},
				func(context.Context, any) (any, error) { return "resp", tt.err })
			if c := status.Code(got); c != tt.code {
				t.Errorf("code = %v (%v), want %v", c, got, tt.code)
			}
			if tt.err == nil {
				if resp != "resp" {
					t.Errorf("response = %v, want it passed through", resp)
				}
				return
			}
			if resp != nil {
				t.Errorf("response = %v beside an error, want nil", resp)
			}
			if _, ok := status.FromError(got); !ok {
				t.Errorf("%v is not a status error", got)
			}
		})
	}
	// A status made upstream passes through as the very same error.
	if got := atEdge(made); got != made {
		t.Errorf("status error was rebuilt: %v", got)
	}
}

// TestServerMapsErrors calls handlers through NewServer's real gRPC chain
// (in memory), so the interceptor is proved to be installed: handlers
// return classed errors and the client still sees codes without details.
func TestServerMapsErrors(t *testing.T) {
	d, _, _ := newTestDriver(t)
	lis := bufconn.Listen(1 << 20)
	srv := NewServer(d, nil)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctl, node := csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	ctx := context.Background()
	tests := []struct {
		name string
		call func() error
		code codes.Code
	}{
		{"delete: empty ID", func() error { _, err := ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{}); return err }, codes.InvalidArgument},
		{"controller get: unknown", func() error {
			_, err := ctl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: "vol-0000000000000000"})
			return err
		}, codes.NotFound},
		{"list: foreign token", func() error {
			_, err := ctl.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: "page-2"})
			return err
		}, codes.Aborted},
		{"stage: relative path", func() error {
			_, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "vol-0000000000000000", StagingTargetPath: "rel",
				VolumeCapability: &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
					AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}})
			return err
		}, codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			st, ok := status.FromError(err)
			if !ok || st.Code() != tt.code {
				t.Fatalf("err = %v, want code %v", err, tt.code)
			}
			if len(st.Proto().GetDetails()) != 0 {
				t.Errorf("status carries details: %v", st.Proto().GetDetails())
			}
		})
	}
}
