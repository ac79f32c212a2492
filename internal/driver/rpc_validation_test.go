package driver

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestRPCValidation drives the service methods in-process with a fake
// pool and mounter: each malformed request is refused with the exact code,
// before any lock is left held or anything reaches the pool.
func TestRPCValidation(t *testing.T) {
	d, pool, _ := newTestDriver(t)
	ctx := context.Background()
	snw := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "")
	caps := []*csi.VolumeCapability{snw}
	long := strings.Repeat("x", 129)

	tests := []struct {
		name string
		call func() error
		code codes.Code
	}{
		// CreateVolume
		{"create: no name", func() error {
			_, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{VolumeCapabilities: caps})
			return err
		}, codes.InvalidArgument},
		{"create: name over 128 bytes", func() error {
			_, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: long, VolumeCapabilities: caps})
			return err
		}, codes.InvalidArgument},
		{"create: name with NUL", func() error {
			_, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "a\x00", VolumeCapabilities: caps})
			return err
		}, codes.InvalidArgument},
		{"create: no capabilities", func() error {
			_, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "a"})
			return err
		}, codes.InvalidArgument},
		{"create: unknown parameter", func() error {
			_, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: caps, Parameters: map[string]string{"x": "y"}})
			return err
		}, codes.InvalidArgument},
		{"create: unknown pool", func() error {
			_, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: caps, Parameters: map[string]string{"pool": "nope"}})
			return err
		}, codes.InvalidArgument},
		{"create: negative capacity", func() error {
			_, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: caps, CapacityRange: &csi.CapacityRange{RequiredBytes: -1}})
			return err
		}, codes.InvalidArgument},
		{"create: required over limit", func() error {
			_, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: caps, CapacityRange: &csi.CapacityRange{RequiredBytes: 10, LimitBytes: 5}})
			return err
		}, codes.OutOfRange},
		{"create: source snapshot with '..'", func() error {
			_, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: caps, VolumeContentSource: &csi.VolumeContentSource{
				Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: "../x"}}}})
			return err
		}, codes.InvalidArgument},
		{"create: source snapshot missing", func() error {
			_, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: caps, VolumeContentSource: &csi.VolumeContentSource{
				Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: "snap-0000000000000000"}}}})
			return err
		}, codes.NotFound},
		{"create: requisite topology excludes node", func() error {
			_, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: caps, AccessibilityRequirements: &csi.TopologyRequirement{
				Requisite: []*csi.Topology{{Segments: map[string]string{TopologyKey: "other-node"}}}}})
			return err
		}, codes.ResourceExhausted},
		{"create: mixed block and mount", func() error {
			_, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: []*csi.VolumeCapability{snw, blockCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)}})
			return err
		}, codes.InvalidArgument},

		// Delete and lookups
		{"delete: empty ID", func() error { _, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{}); return err }, codes.InvalidArgument},
		{"delete: ID with slash", func() error {
			_, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "../../etc"})
			return err
		}, codes.InvalidArgument},
		{"delete: unknown ID is success", func() error {
			_, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "vol-0000000000000000"})
			return err
		}, codes.OK},
		{"get volume: unknown", func() error {
			_, err := d.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: "vol-0000000000000000"})
			return err
		}, codes.NotFound},
		{"validate caps: unknown volume", func() error {
			_, err := d.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: "vol-0000000000000000", VolumeCapabilities: caps})
			return err
		}, codes.NotFound},
		{"validate caps: none", func() error {
			_, err := d.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: "vol-0000000000000000"})
			return err
		}, codes.InvalidArgument},

		// Lists
		{"list volumes: foreign token", func() error {
			_, err := d.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: "page-2"})
			return err
		}, codes.Aborted},
		{"list volumes: negative max", func() error {
			_, err := d.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: -1})
			return err
		}, codes.InvalidArgument},
		{"list volumes: issued-looking token", func() error {
			_, err := d.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: "vol-0123456789abcdef"})
			return err
		}, codes.OK},
		{"list snapshots: foreign token", func() error {
			_, err := d.ListSnapshots(ctx, &csi.ListSnapshotsRequest{StartingToken: "vol-0123456789abcdef"})
			return err
		}, codes.Aborted},
		{"list snapshots: negative max", func() error {
			_, err := d.ListSnapshots(ctx, &csi.ListSnapshotsRequest{MaxEntries: -5})
			return err
		}, codes.InvalidArgument},
		{"list health: foreign token", func() error {
			_, err := d.ControllerListVolumeHealth(ctx, &csi.ControllerListVolumeHealthRequest{StartingToken: "x"})
			return err
		}, codes.Aborted},

		// Node
		{"stage: relative staging path", func() error {
			_, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "vol-0000000000000000", StagingTargetPath: "rel", VolumeCapability: snw})
			return err
		}, codes.InvalidArgument},
		{"stage: staging path with '..'", func() error {
			_, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "vol-0000000000000000", StagingTargetPath: "/a/../b", VolumeCapability: snw})
			return err
		}, codes.InvalidArgument},
		{"stage: unknown volume", func() error {
			_, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "vol-0000000000000000", StagingTargetPath: "/s", VolumeCapability: snw})
			return err
		}, codes.NotFound},
		{"publish: no target", func() error {
			_, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "vol-0000000000000000", StagingTargetPath: "/s", VolumeCapability: snw})
			return err
		}, codes.InvalidArgument},
		{"publish: target with '..'", func() error {
			_, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "vol-0000000000000000", StagingTargetPath: "/s", TargetPath: "/t/../../etc", VolumeCapability: snw})
			return err
		}, codes.InvalidArgument},
		{"publish: target equals staging", func() error {
			_, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "vol-0000000000000000", StagingTargetPath: "/s", TargetPath: "/s/", VolumeCapability: snw})
			return err
		}, codes.InvalidArgument},
		{"publish: forbidden mount flag", func() error {
			_, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "vol-0000000000000000", StagingTargetPath: "/s", TargetPath: "/t",
				VolumeCapability: mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "", "remount")})
			return err
		}, codes.InvalidArgument},
		{"publish: unknown volume", func() error {
			_, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "vol-0000000000000000", StagingTargetPath: "/s", TargetPath: "/t", VolumeCapability: snw})
			return err
		}, codes.NotFound},
		{"unpublish: relative target", func() error {
			_, err := d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "vol-0000000000000000", TargetPath: "t"})
			return err
		}, codes.InvalidArgument},
		{"stats: relative volume path", func() error {
			_, err := d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "vol-0000000000000000", VolumePath: "rel"})
			return err
		}, codes.NotFound},
		{"stats: empty volume path", func() error {
			_, err := d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: "vol-0000000000000000"})
			return err
		}, codes.InvalidArgument},
		{"expand node: unclean path", func() error {
			_, err := d.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: "vol-0000000000000000", VolumePath: "/a/./b"})
			return err
		}, codes.NotFound},

		// Snapshots
		{"snapshot: parameters", func() error {
			_, err := d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: "vol-0000000000000000", Parameters: map[string]string{"a": "b"}})
			return err
		}, codes.InvalidArgument},
		{"snapshot: source ID '..'", func() error {
			_, err := d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: ".."})
			return err
		}, codes.InvalidArgument},
		{"snapshot: unknown source", func() error {
			_, err := d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: "vol-0000000000000000"})
			return err
		}, codes.NotFound},
		{"delete snapshot: unknown is success", func() error {
			_, err := d.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: "snap-0000000000000000"})
			return err
		}, codes.OK},
		{"get snapshot: unknown", func() error {
			_, err := d.GetSnapshot(ctx, &csi.GetSnapshotRequest{SnapshotId: "snap-0000000000000000"})
			return err
		}, codes.NotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if got := status.Code(atEdge(err)); got != tt.code {
				t.Errorf("code = %v (%v), want %v", got, err, tt.code)
			}
			if st, ok := status.FromError(atEdge(err)); ok && len(st.Proto().GetDetails()) != 0 {
				t.Errorf("status carries details: %v", st.Proto().GetDetails())
			}
			if n := d.locks.Len(); n != 0 {
				t.Errorf("%d locks held after the call returned", n)
			}
		})
	}
	if len(pool.creates) != 0 {
		t.Errorf("requests reached the pool: %v", pool.creates)
	}
}

// TestCreateReachesPoolWithSafeID: a valid request reaches the pool with
// an ID the driver made (never the CO's name), the spec it asked for, and
// no lock left behind when the pool fails.
func TestCreateReachesPoolWithSafeID(t *testing.T) {
	d, pool, _ := newTestDriver(t)
	_, err := d.CreateVolume(context.Background(), &csi.CreateVolumeRequest{
		Name:               "../../etc/passwd",
		VolumeCapabilities: []*csi.VolumeCapability{mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "")},
		CapacityRange:      &csi.CapacityRange{RequiredBytes: 5 << 20},
	})
	if status.Code(atEdge(err)) != codes.Internal {
		t.Fatalf("err = %v, want the fake pool's failure as Internal", err)
	}
	if len(pool.creates) != 1 || !volumeIDPattern.MatchString(pool.creates[0]) {
		t.Fatalf("pool got IDs %q, want one driver-made volume ID", pool.creates)
	}
	if pool.specs[0].CapacityBytes != 5<<20 {
		t.Errorf("pool got %d bytes, want %d", pool.specs[0].CapacityBytes, 5<<20)
	}
	if n := d.locks.Len(); n != 0 {
		t.Errorf("%d locks held after a failed create", n)
	}
}

// TestCreateBusyNameAborted: while one CreateVolume holds a name, another
// for the same name is ABORTED at once.
func TestCreateBusyNameAborted(t *testing.T) {
	d, _, _ := newTestDriver(t)
	unlock, err := d.lock("name/busy")
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.CreateVolume(context.Background(), &csi.CreateVolumeRequest{
		Name:               "busy",
		VolumeCapabilities: []*csi.VolumeCapability{mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "")},
	})
	if status.Code(atEdge(err)) != codes.Aborted {
		t.Errorf("create of a busy name: %v, want Aborted", err)
	}
	unlock()
	if n := d.locks.Len(); n != 0 {
		t.Errorf("%d locks held", n)
	}
}

// TestUnmountRefusesSymlinks: unstage and unpublish never follow a symlink
// at the path they are given; umount would, and unmount whatever is
// mounted where it points.
func TestUnmountRefusesSymlinks(t *testing.T) {
	d, _, _ := newTestDriver(t)
	dir := t.TempDir()
	outside := filepath.Join(dir, "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(outside, link); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	_, err := d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: "vol-0000000000000000", StagingTargetPath: link})
	if status.Code(atEdge(err)) != codes.InvalidArgument {
		t.Errorf("unstage at a symlink: %v, want InvalidArgument", err)
	}
	_, err = d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "vol-0000000000000000", TargetPath: link})
	if status.Code(atEdge(err)) != codes.InvalidArgument {
		t.Errorf("unpublish at a symlink: %v, want InvalidArgument", err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the symlink was changed: %v", err)
	}
}
