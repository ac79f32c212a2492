package metrics

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type fakeSource struct {
	pools     []Pool
	err       error
	reconcile []Reconcile
}

func (f fakeSource) Pools(ctx context.Context) ([]Pool, error) { return f.pools, f.err }
func (f fakeSource) Reconcile() []Reconcile                    { return f.reconcile }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestPoolCollector(t *testing.T) {
	tests := []struct {
		name string
		src  fakeSource
		want string
	}{
		{
			name: "store and capacity",
			src: fakeSource{
				pools: []Pool{
					{Name: "default", Type: "dir", CapacityKnown: true, TotalBytes: 1000, AvailableBytes: 400, Counted: true, Volumes: 3, Snapshots: 1},
					{Name: "fast", Type: "btrfs", CapacityKnown: true, TotalBytes: 2000, AvailableBytes: 2000, Enforced: true, Counted: true},
				},
				reconcile: []Reconcile{{Pool: "default", OrphansFound: 2, OrphansRemoved: 1, MissingData: 1}},
			},
			want: `
# HELP cairn_pool_available_bytes Bytes the pool can still give to new volumes.
# TYPE cairn_pool_available_bytes gauge
cairn_pool_available_bytes{pool="default",type="dir"} 400
cairn_pool_available_bytes{pool="fast",type="btrfs"} 2000
# HELP cairn_pool_capacity_bytes Total size of the filesystem (or quota) holding the pool.
# TYPE cairn_pool_capacity_bytes gauge
cairn_pool_capacity_bytes{pool="default",type="dir"} 1000
cairn_pool_capacity_bytes{pool="fast",type="btrfs"} 2000
# HELP cairn_pool_capacity_enforced 1 when the pool enforces volume sizes as hard limits (quota, qgroup, image size), 0 when a volume can outgrow its capacity.
# TYPE cairn_pool_capacity_enforced gauge
cairn_pool_capacity_enforced{pool="default",type="dir"} 0
cairn_pool_capacity_enforced{pool="fast",type="btrfs"} 1
# HELP cairn_pool_snapshots Snapshots the metadata store records in the pool.
# TYPE cairn_pool_snapshots gauge
cairn_pool_snapshots{pool="default",type="dir"} 1
cairn_pool_snapshots{pool="fast",type="btrfs"} 0
# HELP cairn_pool_volumes Volumes the metadata store records in the pool.
# TYPE cairn_pool_volumes gauge
cairn_pool_volumes{pool="default",type="dir"} 3
cairn_pool_volumes{pool="fast",type="btrfs"} 0
# HELP cairn_reconcile_missing_data_records Store records with no data on disk at the last reconcile: volumes ControllerGetVolume reports abnormal.
# TYPE cairn_reconcile_missing_data_records gauge
cairn_reconcile_missing_data_records{pool="default"} 1
# HELP cairn_reconcile_orphans_found_total Entries found on disk that the metadata store did not know (staged leftovers, unknown IDs), summed over reconciles.
# TYPE cairn_reconcile_orphans_found_total counter
cairn_reconcile_orphans_found_total{pool="default"} 2
# HELP cairn_reconcile_orphans_removed_total Orphan entries reconcile removed; found minus removed failed and were logged.
# TYPE cairn_reconcile_orphans_removed_total counter
cairn_reconcile_orphans_removed_total{pool="default"} 1
`,
		},
		{
			// Node mode: no store, so no counts; an unreadable pool has no
			// capacity series rather than a misleading zero.
			name: "node mode, one pool unreadable",
			src: fakeSource{pools: []Pool{
				{Name: "a", Type: "dir", CapacityKnown: true, TotalBytes: 10, AvailableBytes: 5},
				{Name: "b", Type: "image"},
			}},
			want: `
# HELP cairn_pool_available_bytes Bytes the pool can still give to new volumes.
# TYPE cairn_pool_available_bytes gauge
cairn_pool_available_bytes{pool="a",type="dir"} 5
# HELP cairn_pool_capacity_bytes Total size of the filesystem (or quota) holding the pool.
# TYPE cairn_pool_capacity_bytes gauge
cairn_pool_capacity_bytes{pool="a",type="dir"} 10
# HELP cairn_pool_capacity_enforced 1 when the pool enforces volume sizes as hard limits (quota, qgroup, image size), 0 when a volume can outgrow its capacity.
# TYPE cairn_pool_capacity_enforced gauge
cairn_pool_capacity_enforced{pool="a",type="dir"} 0
`,
		},
		{
			name: "source error drops pool metrics but keeps reconcile",
			src:  fakeSource{err: errors.New("store closed"), reconcile: []Reconcile{{Pool: "a"}}},
			want: `
# HELP cairn_reconcile_missing_data_records Store records with no data on disk at the last reconcile: volumes ControllerGetVolume reports abnormal.
# TYPE cairn_reconcile_missing_data_records gauge
cairn_reconcile_missing_data_records{pool="a"} 0
# HELP cairn_reconcile_orphans_found_total Entries found on disk that the metadata store did not know (staged leftovers, unknown IDs), summed over reconciles.
# TYPE cairn_reconcile_orphans_found_total counter
cairn_reconcile_orphans_found_total{pool="a"} 0
# HELP cairn_reconcile_orphans_removed_total Orphan entries reconcile removed; found minus removed failed and were logged.
# TYPE cairn_reconcile_orphans_removed_total counter
cairn_reconcile_orphans_removed_total{pool="a"} 0
`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newPoolCollector(tc.src, quiet, time.Second)
			if err := testutil.CollectAndCompare(c, strings.NewReader(tc.want)); err != nil {
				t.Error(err)
			}
			problems, err := testutil.CollectAndLint(c)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range problems {
				t.Errorf("lint: %s: %s", p.Metric, p.Text)
			}
		})
	}
}

func TestInterceptorCountsByMethodAndCode(t *testing.T) {
	m := New(Options{Logger: quiet, Build: BuildInfo{Version: "v1.2.3", GoVersion: "go1.26"}})
	icpt := m.UnaryServerInterceptor()
	calls := []struct {
		method string
		err    error
	}{
		{"/csi.v1.Controller/CreateVolume", nil},
		{"/csi.v1.Controller/CreateVolume", nil},
		{"/csi.v1.Controller/CreateVolume", status.Error(codes.AlreadyExists, "taken")},
		{"/csi.v1.Node/NodePublishVolume", errors.New("not a status")},
	}
	for _, c := range calls {
		_, err := icpt(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: c.method},
			func(ctx context.Context, req any) (any, error) { return nil, c.err })
		if err != c.err {
			t.Fatalf("interceptor changed the error: %v, want %v", err, c.err)
		}
	}
	want := `
# HELP cairn_csi_operations_total CSI calls served, by method and gRPC status code.
# TYPE cairn_csi_operations_total counter
cairn_csi_operations_total{code="AlreadyExists",method="CreateVolume"} 1
cairn_csi_operations_total{code="OK",method="CreateVolume"} 2
cairn_csi_operations_total{code="Unknown",method="NodePublishVolume"} 1
# HELP cairn_build_info Always 1; the labels say which build is running.
# TYPE cairn_build_info gauge
cairn_build_info{goversion="go1.26",version="v1.2.3"} 1
`
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), "cairn_csi_operations_total", "cairn_build_info"); err != nil {
		t.Error(err)
	}
	if n, err := testutil.GatherAndCount(m.Registry(), "cairn_csi_operation_duration_seconds"); err != nil || n != 3 {
		t.Errorf("duration series = %d (%v), want 3 (one per method and code)", n, err)
	}
	problems, err := testutil.GatherAndLint(m.Registry())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

func TestHandlerServesExposition(t *testing.T) {
	m := New(Options{Logger: quiet, Source: fakeSource{pools: []Pool{{Name: "default", Type: "dir", Counted: true, Volumes: 7}}}})
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	want := `
# HELP cairn_pool_volumes Volumes the metadata store records in the pool.
# TYPE cairn_pool_volumes gauge
cairn_pool_volumes{pool="default",type="dir"} 7
`
	if err := testutil.ScrapeAndCompare(srv.URL, strings.NewReader(want), "cairn_pool_volumes"); err != nil {
		t.Error(err)
	}
}
