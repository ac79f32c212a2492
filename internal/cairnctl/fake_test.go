package cairnctl

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// minimalDriver is a CSI driver that serves only what the spec makes
// mandatory: Identity, and a Controller with CREATE_DELETE_VOLUME,
// LIST_VOLUMES and LIST_SNAPSHOTS; no node service, no GET_VOLUME, no
// GET_SNAPSHOT, no expansion. It pages ListVolumes one entry at a time
// unless asked otherwise. Cairn serves far more, so this is what tests
// cairnctl's tolerance of other drivers.
type minimalDriver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	ready bool

	mu      sync.Mutex
	volumes map[string]int64 // id -> bytes
	asked   []int32          // max_entries of every ListVolumes
}

func (d *minimalDriver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: "minimal.example.com", VendorVersion: "0.1", Manifest: map[string]string{"commit": "abc"}}, nil
}

func (d *minimalDriver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{Capabilities: []*csi.PluginCapability{{Type: &csi.PluginCapability_Service_{
		Service: &csi.PluginCapability_Service{Type: csi.PluginCapability_Service_CONTROLLER_SERVICE}}}}}, nil
}

func (d *minimalDriver) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(d.ready)}, nil
}

func (d *minimalDriver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, t := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: t}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

func (d *minimalDriver) CreateVolume(_ context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	id := "id-" + req.GetName()
	d.volumes[id] = req.GetCapacityRange().GetRequiredBytes()
	return &csi.CreateVolumeResponse{Volume: &csi.Volume{VolumeId: id, CapacityBytes: d.volumes[id]}}, nil
}

func (d *minimalDriver) ListVolumes(_ context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var ids []string
	for id := range d.volumes {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	start := 0
	if t := req.GetStartingToken(); t != "" {
		n, err := strconv.Atoi(t)
		if err != nil || n > len(ids) {
			return nil, status.Error(codes.Aborted, "bad token")
		}
		start = n
	}
	d.asked = append(d.asked, req.GetMaxEntries())
	size := int(req.GetMaxEntries())
	if size == 0 {
		size = 1
	}
	end := min(start+size, len(ids))
	resp := &csi.ListVolumesResponse{}
	for _, id := range ids[start:end] {
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{Volume: &csi.Volume{VolumeId: id, CapacityBytes: d.volumes[id]}})
	}
	if end < len(ids) {
		resp.NextToken = strconv.Itoa(end)
	}
	return resp, nil
}

func (d *minimalDriver) ListSnapshots(_ context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	resp := &csi.ListSnapshotsResponse{}
	if req.GetSnapshotId() == "snap-1" || req.GetSnapshotId() == "" {
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: &csi.Snapshot{
			SnapshotId: "snap-1", SourceVolumeId: "id-a", SizeBytes: 1 << 20, ReadyToUse: true}})
	}
	return resp, nil
}

// startMinimal serves a minimalDriver on a Unix socket and returns its
// endpoint.
func startMinimal(t *testing.T, ready bool) string {
	t.Helper()
	_, ep := startMinimalDriver(t, ready)
	return ep
}

// startMinimalDriver is startMinimal that also returns the driver.
func startMinimalDriver(t *testing.T, ready bool) (*minimalDriver, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "csi.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	d := &minimalDriver{ready: ready, volumes: map[string]int64{}}
	csi.RegisterIdentityServer(srv, d)
	csi.RegisterControllerServer(srv, d)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return d, "unix://" + sock
}

// run runs cairnctl in-process and returns its exit code and output.
func run(t *testing.T, args ...string) (ExitCode, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := Run(context.Background(), args, &stdout, &stderr, func(string) string { return "" }, false)
	return code, stdout.String(), stderr.String()
}

func TestAgainstMinimalDriver(t *testing.T) {
	d, ep := startMinimalDriver(t, true)
	for _, name := range []string{"a", "b", "c"} {
		if code, _, stderr := run(t, "--endpoint", ep, "volume", "create", name, "--capacity", "1Mi"); code != ExitOK {
			t.Fatalf("create %s: exit %d: %s", name, code, stderr)
		}
	}

	t.Run("info tolerates missing services", func(t *testing.T) {
		code, out, stderr := run(t, "--endpoint", ep, "info", "-o", "json")
		if code != ExitOK {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		var v infoView
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatal(err)
		}
		if v.Name != "minimal.example.com" || !v.Controller.Served || v.Node.Served || v.GroupController.Served || v.NodeInfo != nil {
			t.Errorf("info = %+v", v)
		}
		if !strings.Contains(v.Node.Error, "Unimplemented") {
			t.Errorf("node error = %q, want the Unimplemented status", v.Node.Error)
		}
	})

	t.Run("list asks for pages by default", func(t *testing.T) {
		d.mu.Lock()
		d.asked = nil
		d.mu.Unlock()
		if code, _, stderr := run(t, "--endpoint", ep, "volume", "list", "-o", "json"); code != ExitOK {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		if len(d.asked) != 1 || d.asked[0] != defaultPageSize {
			t.Errorf("max_entries asked: %v, want one call with %d", d.asked, defaultPageSize)
		}
	})

	t.Run("list follows every page", func(t *testing.T) {
		code, out, stderr := run(t, "--endpoint", ep, "volume", "list", "--max-entries", "1", "-o", "json")
		if code != ExitOK {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		var vs []volumeView
		if err := json.Unmarshal([]byte(out), &vs); err != nil {
			t.Fatal(err)
		}
		if len(vs) != 3 {
			t.Errorf("listed %d volumes over pages of one, want 3", len(vs))
		}
	})

	tests := []struct {
		name     string
		args     []string
		want     ExitCode
		inStdout string
		inStderr string
	}{
		{"get falls back to ListVolumes", []string{"volume", "get", "id-b"}, ExitOK, "id-b", ""},
		{"get of an unknown volume", []string{"volume", "get", "id-z"}, ExitNotFound, "", `NotFound: volume "id-z" is not in ListVolumes`},
		{"snapshot get falls back to ListSnapshots", []string{"snapshot", "get", "snap-1"}, ExitOK, "snap-1", ""},
		{"snapshot get of an unknown snapshot", []string{"snapshot", "get", "snap-2"}, ExitNotFound, "", "NotFound"},
		{"expand without expansion", []string{"volume", "expand", "id-a", "--capacity", "2Mi"}, ExitUnimplemented, "", "advertises no controller EXPAND_VOLUME"},
		{"no node service", []string{"volume", "stats", "id-a", "--path", "/x"}, ExitUnimplemented, "", "unknown service csi.v1.Node"},
		{"unimplemented call", []string{"snapshot", "create", "s", "--source-volume", "id-a"}, ExitUnimplemented, "", "Unimplemented: "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out, stderr := run(t, append([]string{"--endpoint", ep}, tc.args...)...)
			if code != tc.want {
				t.Errorf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.want, out, stderr)
			}
			if !strings.Contains(out, tc.inStdout) || !strings.Contains(stderr, tc.inStderr) {
				t.Errorf("stdout %q, stderr %q; want %q and %q in them", out, stderr, tc.inStdout, tc.inStderr)
			}
		})
	}
}

func TestProbeNotReady(t *testing.T) {
	ep := startMinimal(t, false)
	code, out, _ := run(t, "--endpoint", ep, "probe")
	if code != ExitNotReady || !strings.Contains(out, "false") {
		t.Errorf("probe of a driver that is not ready: exit %d, output %q; want %d", code, out, ExitNotReady)
	}
}

func TestUsageAndConnectErrors(t *testing.T) {
	missing := "unix://" + filepath.Join(t.TempDir(), "none.sock")
	tests := []struct {
		name     string
		args     []string
		want     ExitCode
		inStderr string
	}{
		{"unknown command", []string{"frobnicate"}, ExitUsage, "unknown command"},
		{"unknown flag", []string{"probe", "--frob"}, ExitUsage, "unknown flag"},
		{"missing argument", []string{"volume", "get"}, ExitUsage, "accepts 1 arg"},
		{"bad size", []string{"volume", "create", "x", "--capacity", "lots"}, ExitUsage, "--capacity"},
		{"bad output", []string{"-o", "xml", "probe"}, ExitUsage, "want one of"},
		{"required flag", []string{"volume", "stage", "v"}, ExitUsage, "staging-path"},
		{"bad endpoint", []string{"--endpoint", "http://x", "probe"}, ExitUsage, "scheme must be unix or tcp"},
		{"no socket", []string{"--endpoint", missing, "probe"}, ExitConnect, "cannot connect to " + missing},
		{"tcp refused", []string{"--endpoint", "tcp://127.0.0.1:1", "--insecure", "probe"}, ExitConnect, "connection refused"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := run(t, tc.args...)
			if code != tc.want || !strings.Contains(stderr, tc.inStderr) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, stderr, tc.want, tc.inStderr)
			}
			if !strings.HasPrefix(stderr, "cairnctl: ") {
				t.Errorf("stderr %q does not start with \"cairnctl: \"", stderr)
			}
		})
	}
}

func TestEndpointFromEnvironment(t *testing.T) {
	ep := startMinimal(t, true)
	var stdout, stderr bytes.Buffer
	env := func(k string) string {
		if k == EndpointEnv {
			return ep
		}
		return ""
	}
	if code := Run(context.Background(), []string{"probe"}, &stdout, &stderr, env, false); code != ExitOK {
		t.Errorf("probe via $%s: exit %d: %s", EndpointEnv, code, stderr.String())
	}
}
