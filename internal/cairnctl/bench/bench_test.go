package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

func TestPercentile(t *testing.T) {
	ms := func(ns ...int) []time.Duration {
		var out []time.Duration
		for _, n := range ns {
			out = append(out, time.Duration(n)*time.Millisecond)
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = i + 1
	}
	tests := []struct {
		name    string
		samples []time.Duration
		p       float64
		want    time.Duration
	}{
		{"one sample", ms(7), 0.99, 7 * time.Millisecond},
		{"median of odd", ms(1, 2, 3), 0.5, 2 * time.Millisecond},
		{"median of even is the lower", ms(1, 2, 3, 4), 0.5, 2 * time.Millisecond},
		{"p99 of 100", ms(hundred...), 0.99, 99 * time.Millisecond},
		{"p50 of 100", ms(hundred...), 0.5, 50 * time.Millisecond},
		{"p99 of 10 is the max", ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 0.99, 10 * time.Millisecond},
	}
	for _, tc := range tests {
		if got := percentile(tc.samples, tc.p); got != tc.want {
			t.Errorf("%s: percentile(%v) = %v, want %v", tc.name, tc.p, got, tc.want)
		}
	}
}

func TestSummarizeIgnoresOrder(t *testing.T) {
	l := summarize([]time.Duration{3 * time.Second, time.Second, 2 * time.Second})
	want := Latency{Min: 1, Mean: 2, P50: 2, P90: 3, P99: 3, Max: 3}
	if l != want {
		t.Errorf("summarize = %+v, want %+v", l, want)
	}
	if (summarize(nil) != Latency{}) {
		t.Error("summarize(nil) is not zero")
	}
}

func TestSamplerCountsErrorsApart(t *testing.T) {
	var s sampler
	s.add(time.Second, nil)
	s.add(time.Millisecond, status.Error(codes.Internal, "boom"))
	s.add(3*time.Second, nil)
	p := s.phase("x", 2, 4*time.Second)
	if p.Ops != 2 || p.Errors != 1 || p.OpsPerSecond != 0.5 || p.Latency.Min != 1 {
		t.Errorf("phase = %+v", p)
	}
	if p.FirstError != "Internal: boom" {
		t.Errorf("first error = %q, want the code and message", p.FirstError)
	}
}

func TestErrString(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{errors.New("plain"), "plain"},
		{status.Error(codes.NotFound, "gone"), "NotFound: gone"},
		{fmt.Errorf("NodeStageVolume: %w", status.Error(codes.Aborted, "busy")), "NodeStageVolume: Aborted: busy"},
	}
	for _, tc := range tests {
		if got := errString(tc.err); got != tc.want {
			t.Errorf("errString(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

func TestRenderBar(t *testing.T) {
	tests := []struct {
		done, total int64
		bytes       bool
		want        string
	}{
		{0, 10, false, "p [>         ] 0/10 1.5s"},
		{5, 10, false, "p [=====>    ] 5/10 1.5s"},
		{10, 10, false, "p [==========] 10/10 1.5s"},
		{12, 10, false, "p [==========] 10/10 1.5s"},
		{3 << 20, 8 << 20, true, "p [===>      ] 3/8 MiB 1.5s"},
	}
	for _, tc := range tests {
		if got := renderBar("p", tc.done, tc.total, tc.bytes, 1500*time.Millisecond, 10); got != tc.want {
			t.Errorf("renderBar(%d/%d) = %q, want %q", tc.done, tc.total, got, tc.want)
		}
	}
	if startProgress(nil, "p", 10, false) != nil {
		t.Error("a progress bar without a terminal")
	}
}

func TestFmtDuration(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{0, "0s"},
		{850 * time.Nanosecond, "850ns"},
		{4821 * time.Microsecond, "4.82ms"},
		{12 * time.Millisecond, "12ms"},
		{123456 * time.Microsecond, "123ms"},
		{1230 * time.Millisecond, "1.23s"},
		{75 * time.Second, "1m15s"},
	}
	for _, tc := range tests {
		if got := fmtDuration(tc.d); got != tc.want {
			t.Errorf("fmtDuration(%v) = %q, want %q", tc.d, got, tc.want)
		}
	}
}

func TestUndoOrderAndRetry(t *testing.T) {
	var s undoStack
	var order []string
	add := func(name string) *undoEntry {
		return s.push(name, func(context.Context) error { order = append(order, name); return nil })
	}
	add("volume")
	m := s.mark()
	add("stage")
	done := add("publish")
	busy := 0
	s.push("busy", func(context.Context) error {
		busy++
		if busy < 3 {
			return status.Error(codes.Aborted, "in progress")
		}
		order = append(order, "busy")
		return nil
	})
	s.push("broken", func(context.Context) error { return status.Error(codes.Internal, "no") })
	done.finish()

	n, errs := s.unwindTo(context.Background(), m)
	if n != 3 || len(errs) != 1 || !strings.Contains(errs[0].Error(), "broken: ") {
		t.Errorf("unwindTo ran %d with errors %v; want 3 and the broken one", n, errs)
	}
	if got := strings.Join(order, ","); got != "busy,stage" {
		t.Errorf("undo order = %s, want busy,stage (newest first, done ones skipped, Aborted retried)", got)
	}
	if n, _ := s.unwindTo(context.Background(), 0); n != 1 || order[len(order)-1] != "volume" {
		t.Errorf("the rest: ran %d, order %v", n, order)
	}
}

// fakeController is a controller-only driver whose CreateVolume can lose
// its answer: it makes the volume and then reports UNAVAILABLE, as a
// connection cut at the wrong moment would.
type fakeController struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer

	mu      sync.Mutex
	volumes map[string]string        // name -> id
	lose    map[string]bool          // names whose first answer is lost
	refuse  map[string]bool          // names refused with RESOURCE_EXHAUSTED
	slow    map[string]time.Duration // names whose first create takes this long; ABORTED meanwhile
	busy    map[string]bool
	created int
}

func (f *fakeController) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: "fake", VendorVersion: "1"}, nil
}

func (f *fakeController) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{}, nil
}

func (f *fakeController) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: []*csi.ControllerServiceCapability{{Type: &csi.ControllerServiceCapability_Rpc{
		Rpc: &csi.ControllerServiceCapability_RPC{Type: csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME}}}}}, nil
}

func (f *fakeController) CreateVolume(_ context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if d := f.slow[req.GetName()]; d > 0 {
		// A copy that outlives the caller's timeout: the volume appears
		// when it ends, and the name is busy until then.
		delete(f.slow, req.GetName())
		f.busy[req.GetName()] = true
		f.mu.Unlock()
		time.Sleep(d)
		f.mu.Lock()
		delete(f.busy, req.GetName())
	} else if f.busy[req.GetName()] {
		return nil, status.Error(codes.Aborted, "an operation on this name is in progress")
	}
	if f.refuse[req.GetName()] {
		return nil, status.Error(codes.ResourceExhausted, "full")
	}
	id, ok := f.volumes[req.GetName()]
	if !ok {
		f.created++
		id = fmt.Sprintf("vol-%d", f.created)
		f.volumes[req.GetName()] = id
	}
	if f.lose[req.GetName()] {
		delete(f.lose, req.GetName())
		return nil, status.Error(codes.Unavailable, "connection reset")
	}
	return &csi.CreateVolumeResponse{Volume: &csi.Volume{VolumeId: id, CapacityBytes: req.GetCapacityRange().GetRequiredBytes()}}, nil
}

func (f *fakeController) DeleteVolume(_ context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for name, id := range f.volumes {
		if id == req.GetVolumeId() {
			delete(f.volumes, name)
		}
	}
	return &csi.DeleteVolumeResponse{}, nil
}

func TestRunCleansUpLostCreates(t *testing.T) {
	prefix := "t"
	f := &fakeController{
		volumes: map[string]string{},
		lose:    map[string]bool{prefix + "-seq-1": true, prefix + "-par-3": true},
		refuse:  map[string]bool{prefix + "-seq-4": true},
	}
	cc, sock := serveFake(t, func(srv *grpc.Server) {
		csi.RegisterIdentityServer(srv, f)
		csi.RegisterControllerServer(srv, f)
	})

	res, err := Run(context.Background(), Clients{
		Identity: csi.NewIdentityClient(cc), Controller: csi.NewControllerClient(cc), Node: csi.NewNodeClient(cc),
	}, Config{Volumes: 5, Concurrency: 2, LifecycleRuns: 1, DataBytes: 1 << 20, Prefix: prefix, SocketPath: sock, RSSVolumes: 4})
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	left := len(f.volumes)
	f.mu.Unlock()
	if left != 0 {
		t.Errorf("%d volumes left behind: %v", left, f.volumes)
	}
	if len(res.Cleanup.Errors) != 0 {
		t.Errorf("cleanup errors: %v", res.Cleanup.Errors)
	}
	phases := map[string]Phase{}
	for _, p := range res.Phases {
		phases[p.Name] = p
	}
	if p := phases[PhaseCreateSequential]; p.Ops != 3 || p.Errors != 2 {
		t.Errorf("%s: %d ok, %d errors; want 3 and 2 (one lost answer, one refusal)", p.Name, p.Ops, p.Errors)
	}
	if p := phases[PhaseCreateConcurrent]; p.Ops != 4 || p.Errors != 1 || p.Concurrency != 2 {
		t.Errorf("%s: %+v", p.Name, p)
	}
	if res.OK() {
		t.Error("Result.OK with failed calls")
	}
	// No node service: its phases are skipped with a reason, not failed.
	skipped := map[string]string{}
	for _, s := range res.Skipped {
		skipped[s.Phase] = s.Reason
	}
	for _, ph := range []string{PhaseLifecycle, "data"} {
		if !strings.Contains(skipped[ph], "no node service") {
			t.Errorf("%s skipped for %q, want the missing node service", ph, skipped[ph])
		}
	}
	// This test process holds the socket, so the lookup finds it.
	if !res.RSS.Known || res.RSS.AfterBytes <= 0 {
		t.Errorf("RSS = %+v, want it measured", res.RSS)
	}
}

func TestRunRefusesDriverWithoutCreate(t *testing.T) {
	cc, _ := serveFake(t, func(srv *grpc.Server) { csi.RegisterIdentityServer(srv, &fakeController{}) })
	_, err := Run(context.Background(), Clients{Identity: csi.NewIdentityClient(cc), Controller: csi.NewControllerClient(cc), Node: csi.NewNodeClient(cc)},
		Config{Volumes: 1, Concurrency: 1})
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("Run against an identity-only plugin: %v, want Unimplemented", err)
	}
}

// TestDataTimeout: a copy slower than its call timeout fails naming the
// flag, and cleanup still finds and deletes the volume the driver went on
// to make (it used to be LEFT BEHIND).
func TestDataTimeout(t *testing.T) {
	f := &fakeController{volumes: map[string]string{}, slow: map[string]time.Duration{"clone": 300 * time.Millisecond}, busy: map[string]bool{}}
	cc, _ := serveFake(t, func(srv *grpc.Server) { csi.RegisterControllerServer(srv, f) })
	r := &runner{cl: Clients{Controller: csi.NewControllerClient(cc)}, cfg: Config{CallTimeout: time.Minute}}
	ctx := withCallTimeout(context.Background(), callTimeout{50 * time.Millisecond, "--data-timeout"})
	_, _, err := r.createVolume(ctx, &csi.CreateVolumeRequest{Name: "clone"})
	if status.Code(err) != codes.DeadlineExceeded || !strings.Contains(err.Error(), "--data-timeout") {
		t.Fatalf("err = %v, want DEADLINE_EXCEEDED naming --data-timeout", err)
	}
	n, errs := r.undo.unwindTo(context.Background(), 0)
	if n != 1 || len(errs) != 0 {
		t.Fatalf("cleanup: %d actions, errors %v", n, errs)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.volumes) != 0 {
		t.Fatalf("left behind: %v", f.volumes)
	}
}

// serveFake serves what register registers on a Unix socket in a temporary
// directory until the test ends, and returns a client connection to it and
// the socket's path.
func serveFake(t *testing.T, register func(*grpc.Server)) (*grpc.ClientConn, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "csi.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	register(srv)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc, sock
}
