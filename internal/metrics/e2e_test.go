package metrics_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/cairn-csi/cairn/internal/testdriver"
)

// metricsAddress finds the address cairn bound for --metrics-address
// 127.0.0.1:0 in its log line `msg="serving /healthz and /metrics" address=...`.
var metricsAddress = regexp.MustCompile(`msg="serving /healthz[^"]*" address=(\S+)`)

func scrape(t *testing.T, addr string) (map[string]*dto.MetricFamily, []byte) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s\n%s", resp.Status, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, body)
	}
	return fams, body
}

// value returns the value of the series of family name whose labels include
// want, or -1 when there is none.
func value(fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	f, ok := fams[name]
	if !ok {
		return -1
	}
series:
	for _, m := range f.GetMetric() {
		got := map[string]string{}
		for _, lp := range m.GetLabel() {
			got[lp.GetName()] = lp.GetValue()
		}
		for k, v := range want {
			if got[k] != v {
				continue series
			}
		}
		switch f.GetType() {
		case dto.MetricType_COUNTER:
			return m.GetCounter().GetValue()
		case dto.MetricType_GAUGE:
			return m.GetGauge().GetValue()
		case dto.MetricType_HISTOGRAM:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	return -1
}

// TestScrapeRealDriver runs the cairn binary with --metrics-address on port
// 0, finds the port in its log, and checks the exposition: names, types,
// lint, and that the RPC counters and pool gauges follow real calls.
func TestScrapeRealDriver(t *testing.T) {
	tmp := t.TempDir()
	pool := filepath.Join(tmp, "pool")
	// A leftover of an interrupted create: reconcile must find and remove it.
	if err := os.MkdirAll(filepath.Join(pool, "volumes", "new-vol-0000000000000001"), 0o755); err != nil {
		t.Fatal(err)
	}
	p := testdriver.Start(t, testdriver.Options{
		DataDir: filepath.Join(tmp, "data"),
		Pools:   []string{"default=dir:" + pool},
		Extra:   []string{"--metrics-address", "127.0.0.1:0"},
	})
	m := metricsAddress.FindStringSubmatch(p.Log())
	if m == nil {
		t.Fatalf("no metrics address in the log:\n%s", p.Log())
	}
	addr := m[1]

	before, _ := scrape(t, addr)
	wantTypes := map[string]dto.MetricType{
		"cairn_build_info":                      dto.MetricType_GAUGE,
		"cairn_pool_volumes":                    dto.MetricType_GAUGE,
		"cairn_pool_snapshots":                  dto.MetricType_GAUGE,
		"cairn_pool_capacity_bytes":             dto.MetricType_GAUGE,
		"cairn_pool_available_bytes":            dto.MetricType_GAUGE,
		"cairn_pool_capacity_enforced":          dto.MetricType_GAUGE,
		"cairn_reconcile_orphans_found_total":   dto.MetricType_COUNTER,
		"cairn_reconcile_orphans_removed_total": dto.MetricType_COUNTER,
		"cairn_reconcile_missing_data_records":  dto.MetricType_GAUGE,
		// testdriver's readiness Probe calls were counted already.
		"cairn_csi_operations_total":           dto.MetricType_COUNTER,
		"cairn_csi_operation_duration_seconds": dto.MetricType_HISTOGRAM,
		"process_resident_memory_bytes":        dto.MetricType_GAUGE,
		"go_goroutines":                        dto.MetricType_GAUGE,
	}
	for name, typ := range wantTypes {
		f, ok := before[name]
		if !ok {
			t.Errorf("metric %s missing", name)
			continue
		}
		if f.GetType() != typ {
			t.Errorf("metric %s has type %s, want %s", name, f.GetType(), typ)
		}
	}
	if v := value(before, "cairn_build_info", nil); v != 1 {
		t.Errorf("cairn_build_info = %v, want 1", v)
	}
	if v := value(before, "cairn_reconcile_orphans_found_total", map[string]string{"pool": "default"}); v != 1 {
		t.Errorf("orphans found = %v, want 1 (the new-* leftover)", v)
	}
	if v := value(before, "cairn_reconcile_orphans_removed_total", map[string]string{"pool": "default"}); v != 1 {
		t.Errorf("orphans removed = %v, want 1", v)
	}
	dirPool := map[string]string{"pool": "default", "type": "dir"}
	if v := value(before, "cairn_pool_volumes", dirPool); v != 0 {
		t.Errorf("cairn_pool_volumes = %v before any create, want 0", v)
	}
	if v := value(before, "cairn_pool_capacity_bytes", dirPool); v <= 0 {
		t.Errorf("cairn_pool_capacity_bytes = %v, want > 0", v)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctl := csi.NewControllerClient(p.Dial())
	mountCap := []*csi.VolumeCapability{{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}}
	var ids []string
	for i := range 3 {
		r, err := ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: fmt.Sprintf("metrics-%d", i), VolumeCapabilities: mountCap,
			CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.GetVolume().GetVolumeId())
	}
	if _, err := ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: ids[0]}); err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: "vol-00000000000000ff"}); err == nil {
		t.Fatal("ControllerGetVolume of an unknown volume succeeded")
	}

	after, body := scrape(t, addr)
	checks := []struct {
		name   string
		labels map[string]string
		delta  float64
	}{
		{"cairn_csi_operations_total", map[string]string{"method": "CreateVolume", "code": "OK"}, 3},
		{"cairn_csi_operation_duration_seconds", map[string]string{"method": "CreateVolume", "code": "OK"}, 3},
		{"cairn_csi_operations_total", map[string]string{"method": "DeleteVolume", "code": "OK"}, 1},
		{"cairn_csi_operations_total", map[string]string{"method": "ControllerGetVolume", "code": "NotFound"}, 1},
		{"cairn_pool_volumes", dirPool, 2},
	}
	for _, c := range checks {
		b, a := value(before, c.name, c.labels), value(after, c.name, c.labels)
		if b < 0 {
			b = 0 // the series did not exist yet
		}
		if a-b != c.delta {
			t.Errorf("%s%v moved by %v (from %v to %v), want %v", c.name, c.labels, a-b, b, a, c.delta)
		}
	}

	// promtool's lint, over what the real endpoint serves.
	problems, err := promlint.New(bytes.NewReader(body)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, pr := range problems {
		t.Errorf("lint: %s: %s", pr.Metric, pr.Text)
	}

	// Every Cairn metric is documented for operators.
	doc, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	for name := range after {
		if strings.HasPrefix(name, "cairn_") && !strings.Contains(string(doc), "`"+name+"`") {
			t.Errorf("docs/operations.md does not list %s", name)
		}
	}

	// /healthz still reflects Probe.
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz = %s, want 200", resp.Status)
	}
}
