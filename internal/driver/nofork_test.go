package driver

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"
	testingexec "k8s.io/utils/exec/testing"

	"github.com/cairn-csi/cairn/internal/testdriver"
)

// TestMain runs the tests in a private mount namespace: the no-fork test
// makes real bind mounts.
func TestMain(m *testing.M) { testdriver.MainInPrivateMounts(m, "internal/driver") }

// forkingMounter fails the test on any call: every mount-utils operation
// that reaches it would fork mount(8), umount(8), blkid or mkfs.
type forkingMounter struct {
	mount.Interface
	t *testing.T
}

func (m forkingMounter) Mount(source, target, fstype string, options []string) error {
	m.t.Errorf("mount-utils Mount(%s, %s) called: that forks mount(8)", source, target)
	return nil
}

func (m forkingMounter) Unmount(target string) error {
	m.t.Errorf("mount-utils Unmount(%s) called: that forks umount(8)", target)
	return nil
}

func (m forkingMounter) IsLikelyNotMountPoint(file string) (bool, error) {
	m.t.Errorf("mount-utils IsLikelyNotMountPoint(%s) called", file)
	return true, nil
}

// TestDirVolumeNodePathForksNothing proves that staging, publishing
// (read-write and read-only), unpublishing and unstaging a directory volume
// make system calls only (issue 11): the mounter and the command runner
// the driver is given fail the test if anything reaches them.
func TestDirVolumeNodePathForksNothing(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: stage and publish make bind mounts")
	}
	ctx := context.Background()
	dir := t.TempDir()
	pool := newDirPool(t, filepath.Join(dir, "pool"))
	d, _ := newDriverOver(t, Config{NodeID: "n", StateDir: filepath.Join(dir, "data")},
		[]Pool{{Name: "default", Backend: pool, Root: filepath.Join(dir, "pool")}},
		&mount.SafeFormatAndMount{Interface: forkingMounter{t: t}, Exec: failingExec{t: t}})
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	mountCap := &csi.VolumeCapability{
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{MountFlags: []string{"noatime"}}},
	}
	vol, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "v", VolumeCapabilities: []*csi.VolumeCapability{mountCap},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	id := vol.GetVolume().GetVolumeId()
	staging := filepath.Join(dir, "kubelet", "staging")
	if err := os.MkdirAll(staging, 0o750); err != nil {
		t.Fatal(err)
	}
	if _, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: mountCap}); err != nil {
		t.Fatal(err)
	}
	for _, ro := range []bool{false, true} {
		target := filepath.Join(dir, "kubelet", "pods", "p", "mount")
		if _, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target,
			VolumeCapability: mountCap, Readonly: ro}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatal(err)
	}
}

// failingExec fails the test on any command.
type failingExec struct {
	utilexec.Interface
	t *testing.T
}

func (e failingExec) Command(cmd string, args ...string) utilexec.Cmd {
	e.t.Errorf("command %s %v run: that forks", cmd, args)
	return (&testingexec.FakeExec{}).Command(cmd, args...)
}

func (e failingExec) CommandContext(ctx context.Context, cmd string, args ...string) utilexec.Cmd {
	return e.Command(cmd, args...)
}

func (e failingExec) LookPath(file string) (string, error) {
	e.t.Errorf("LookPath(%s): a command is about to be run", file)
	return "", nil
}
