package cairnctl

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestParseBytes(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{"10Gi", 10 << 30, false},
		{"500M", 500_000_000, false},
		{"1048576", 1 << 20, false},
		{"1.5Ki", 1536, false},
		{"0", 0, false},
		{"1.5", 2, false}, // a fraction of a byte rounds up
		{"-1Gi", 0, true},
		{"ten", 0, true},
		{"", 0, true},
	}
	for _, tc := range tests {
		got, err := parseBytes(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d, error %t", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestMapFlag(t *testing.T) {
	tests := []struct {
		sets    []string
		want    map[string]string
		wantErr bool
	}{
		{[]string{"pool=fast", "mkfsOptions=-m 0"}, map[string]string{"pool": "fast", "mkfsOptions": "-m 0"}, false},
		{[]string{"a=b=c"}, map[string]string{"a": "b=c"}, false}, // only the first = splits
		{[]string{"empty="}, map[string]string{"empty": ""}, false},
		{[]string{"novalue"}, nil, true},
		{[]string{"=v"}, nil, true},
		{[]string{"a=1", "a=2"}, nil, true},
	}
	for _, tc := range tests {
		var f mapFlag
		var err error
		for _, s := range tc.sets {
			if err = f.Set(s); err != nil {
				break
			}
		}
		if (err != nil) != tc.wantErr {
			t.Errorf("Set(%q): err = %v, want error %t", tc.sets, err, tc.wantErr)
			continue
		}
		if !tc.wantErr && !maps.Equal(f.m, tc.want) {
			t.Errorf("Set(%q) = %v, want %v", tc.sets, f.m, tc.want)
		}
	}
}

func TestTopologyFlag(t *testing.T) {
	var f topologyFlag
	for _, v := range []string{"zone=a,rack=1", "zone=b"} {
		if err := f.Set(v); err != nil {
			t.Fatal(err)
		}
	}
	ts := f.topologies()
	if len(ts) != 2 || ts[0].GetSegments()["rack"] != "1" || ts[1].GetSegments()["zone"] != "b" {
		t.Errorf("topologies = %v", ts)
	}
	for _, bad := range []string{"zone", "zone=a,zone=b", "=a", "zone=a,"} {
		if err := (&topologyFlag{}).Set(bad); err == nil {
			t.Errorf("Set(%q) succeeded", bad)
		}
	}
}

func TestCapabilityFlags(t *testing.T) {
	tests := []struct {
		name       string
		accessType string
		mode       string
		fsType     string
		flags      []string
		wantBlock  bool
		wantMode   csi.VolumeCapability_AccessMode_Mode
		wantErr    bool
	}{
		{name: "defaults", accessType: "mount", mode: "single-node-writer", wantMode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		{name: "mount with fs", accessType: "mount", mode: "single-node-single-writer", fsType: "xfs", flags: []string{"noatime"},
			wantMode: csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER},
		{name: "block", accessType: "block", mode: "multi-node-multi-writer", wantBlock: true,
			wantMode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER},
		{name: "block refuses fs type", accessType: "block", mode: "single-node-writer", fsType: "ext4", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &capabilityFlags{accessType: newEnum("", "mount", "mount", "block"), accessMode: newEnum("mode", "single-node-writer", accessModeWords()...)}
			if err := c.accessType.Set(tc.accessType); err != nil {
				t.Fatal(err)
			}
			if err := c.accessMode.Set(tc.mode); err != nil {
				t.Fatal(err)
			}
			c.fsType, c.mountFlags = tc.fsType, tc.flags
			vc, err := c.capability()
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %t", err, tc.wantErr)
			}
			if err != nil {
				if exitCodeOf(err) != ExitUsage {
					t.Errorf("exit code %d, want usage", exitCodeOf(err))
				}
				return
			}
			if (vc.GetBlock() != nil) != tc.wantBlock || vc.GetAccessMode().GetMode() != tc.wantMode {
				t.Errorf("capability = %v", vc)
			}
			if !tc.wantBlock && (vc.GetMount().GetFsType() != tc.fsType || len(vc.GetMount().GetMountFlags()) != len(tc.flags)) {
				t.Errorf("mount = %v", vc.GetMount())
			}
		})
	}
	if err := newEnum("mode", "single-node-writer", accessModeWords()...).Set("unknown"); err == nil {
		t.Error("the UNKNOWN access mode is offered")
	}
}

func TestExitCodeOf(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want ExitCode
	}{
		{"nil", nil, ExitOK},
		{"usage", usagef("bad"), ExitUsage},
		{"wrapped usage", fmt.Errorf("x: %w", usagef("bad")), ExitUsage},
		{"connect", connectError{"unix:///x", errors.New("refused")}, ExitConnect},
		{"not found", fromRPC(status.Error(codes.NotFound, "gone")), ExitNotFound},
		{"wrapped rpc", fmt.Errorf("volume x: %w", fromRPC(status.Error(codes.AlreadyExists, "taken"))), ExitAlreadyExists},
		{"raw status wrapped", fmt.Errorf("GetPluginInfo: %w", status.Error(codes.Unimplemented, "no")), ExitUnimplemented},
		{"out of range", fromRPC(status.Error(codes.OutOfRange, "big")), ExitInvalidArgument},
		{"aborted", fromRPC(status.Error(codes.Aborted, "busy")), ExitAborted},
		{"deadline", fromRPC(status.Error(codes.DeadlineExceeded, "slow")), ExitDeadlineExceeded},
		{"internal", fromRPC(status.Error(codes.Internal, "boom")), ExitError},
		{"unavailable", fromRPC(status.Error(codes.Unavailable, "starting")), ExitError},
		{"not ready", errNotReady, ExitNotReady},
		{"interrupted", fmt.Errorf("bench: %w", context.Canceled), ExitInterrupted},
		{"local", errors.New("disk full"), ExitError},
	}
	for _, tc := range tests {
		if got := exitCodeOf(tc.err); got != tc.want {
			t.Errorf("%s: exitCodeOf(%v) = %d, want %d", tc.name, tc.err, got, tc.want)
		}
	}
}

func TestRPCErrorFormat(t *testing.T) {
	err := fromRPC(status.Error(codes.NotFound, `volume "x": not found`))
	if got, want := err.Error(), `NotFound: volume "x": not found`; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if status.Code(err) != codes.NotFound {
		t.Errorf("status.Code = %v, want NotFound", status.Code(err))
	}
}

func TestHumanBytes(t *testing.T) {
	tests := []struct {
		in   int64
		want string
	}{
		{0, "0 B"},
		{512, "512 B"},
		{1024, "1 KiB"},
		{64 << 20, "64 MiB"},
		{1536 << 20, "1.5 GiB"},
		{10523000000, "9.8 GiB"},
		{(1 << 30) - 1, "1024 MiB"}, // 1023.999... rounds to one decimal
		{-5, "-5"},
	}
	for _, tc := range tests {
		if got := humanBytes(tc.in); got != tc.want {
			t.Errorf("humanBytes(%d) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
