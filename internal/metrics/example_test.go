package metrics_test

import (
	"context"
	"fmt"
	"io"
	"net/http/httptest"
	"strings"

	"github.com/cairn-csi/cairn/internal/metrics"
)

// staticSource is a metrics.Source with fixed answers; internal/app adapts
// the driver instead.
type staticSource struct{}

func (staticSource) Pools(context.Context) ([]metrics.Pool, error) {
	return []metrics.Pool{{Name: "default", Type: "dir", Counted: true, Volumes: 3,
		CapacityKnown: true, TotalBytes: 100 << 30, AvailableBytes: 60 << 30}}, nil
}

func (staticSource) Reconcile() []metrics.Reconcile { return nil }

// New builds the registry; Handler serves it, and the interceptor from
// UnaryServerInterceptor goes into the gRPC server's chain.
func ExampleNew() {
	m := metrics.New(metrics.Options{Source: staticSource{}, Build: metrics.BuildInfo{Version: "v0.1.0", GoVersion: "go1.26"}})
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()

	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		panic(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, "cairn_pool_volumes") || strings.HasPrefix(line, "cairn_build_info") {
			fmt.Println(line)
		}
	}
	// Output:
	// cairn_build_info{goversion="go1.26",version="v0.1.0"} 1
	// cairn_pool_volumes{pool="default",type="dir"} 3
}
