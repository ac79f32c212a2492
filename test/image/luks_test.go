package image

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-csi/cairn/internal/luks"
	"github.com/cairn-csi/cairn/internal/testfs"
)

// TestLUKSRefusedWithoutDeviceMapper: where the node cannot run dm-crypt,
// an encrypted image volume is refused at CreateVolume, with the reason,
// not at stage time (issue 14).
func TestLUKSRefusedWithoutDeviceMapper(t *testing.T) {
	if luks.Supported() == nil {
		t.Skip("this kernel has device-mapper; TestLUKSVolumes covers the pool")
	}
	e := newEnv(t, "ext4", 1<<30)
	_, err := e.ctl.CreateVolume(e.ctx(), &csi.CreateVolumeRequest{Name: "enc", VolumeCapabilities: []*csi.VolumeCapability{mountCap("ext4")},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 64 * mib},
		Parameters:    map[string]string{"encryption": "true"}, Secrets: map[string]string{"encryptionPassphrase": "a-long-enough-passphrase"}})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "device-mapper") {
		t.Fatalf("CreateVolume with encryption on a node without device-mapper: %v, want FailedPrecondition naming device-mapper", err)
	}
}

// TestLUKSVolumes (issue 14): image volumes encrypted with LUKS2, a key per
// volume from the CSI secret. At rest the image is ciphertext; a wrong
// secret opens nothing; unstage closes the mapping; snapshots, restores and
// clones keep the data and each volume has its own key; block volumes are
// published as the opened mapping; a new passphrase is rotated in at stage.
func TestLUKSVolumes(t *testing.T) {
	if err := luks.Supported(); err != nil {
		testfs.SkipKernel(t, "%v", err)
	}
	e := newEnv(t, "xfs-noquota", 2<<30)
	secret := map[string]string{"encryptionPassphrase": "luks-claim-secret-0123456789"}
	e.secrets = secret
	enc := map[string]string{"encryption": "true"}
	marker := bytes.Repeat([]byte("CAIRN-LUKS-PLAINTEXT-MARKER!"), 512)

	v := e.create("enc", 64*mib, mountCap("ext4"), enc, nil)
	if got := v.GetCapacityBytes(); got < 64*mib {
		t.Fatalf("capacity %d", got)
	}
	if ok, err := luks.IsLUKS(e.image(v)); err != nil || !ok {
		t.Fatalf("the image has no LUKS header: %v", err)
	}

	// A wrong secret: PERMISSION_DENIED, nothing mounted, nothing open.
	e.secrets = map[string]string{"encryptionPassphrase": "not-the-claim-secret-at-all"}
	_, err := e.node.NodeStageVolume(e.ctx(), &csi.NodeStageVolumeRequest{VolumeId: v.GetVolumeId(), StagingTargetPath: v.staging,
		VolumeCapability: v.cap, Secrets: e.secrets})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("stage with a wrong secret: %v, want PermissionDenied", err)
	}
	if _, err := os.Stat(luks.MappingPath(luks.MappingName(v.GetVolumeId()))); err == nil {
		t.Fatal("a mapping is open after a refused stage")
	}
	if l := e.loops(); len(l) != 0 {
		t.Fatalf("a refused stage left loop devices: %v", l)
	}
	e.secrets = secret

	e.stagePublish(v)
	if err := os.WriteFile(filepath.Join(v.target, "marker"), marker, 0o600); err != nil {
		t.Fatal(err)
	}
	e.unpublishUnstage(v)
	if _, err := os.Stat(luks.MappingPath(luks.MappingName(v.GetVolumeId()))); err == nil {
		t.Fatal("the mapping is still open after unstage")
	}
	img, err := os.ReadFile(e.image(v))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(img, marker[:64]) {
		t.Fatal("the image holds the plaintext marker at rest")
	}

	// Snapshot (no key needed: ciphertext), restore and clone.
	snap, err := e.ctl.CreateSnapshot(e.ctx(), &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: v.GetVolumeId()})
	if err != nil {
		t.Fatal(err)
	}
	restored := e.create("restored", 64*mib, mountCap("ext4"), enc, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshot().GetSnapshotId()}}})
	clone := e.create("clone", 64*mib, mountCap("ext4"), enc, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: v.GetVolumeId()}}})
	for _, c := range []*volume{v, restored, clone} {
		e.stagePublish(c)
		if b, err := os.ReadFile(filepath.Join(c.target, "marker")); err != nil || !bytes.Equal(b, marker) {
			t.Fatalf("%s: marker: %v", c.GetVolumeId(), err)
		}
		e.unpublishUnstage(c)
	}

	// Block access: the published device is the opened mapping.
	b := e.create("blk", 64*mib, blockCap(), enc, nil)
	e.stagePublish(b)
	var pub, mapped unix.Stat_t
	if err := unix.Stat(b.target, &pub); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(luks.MappingPath(luks.MappingName(b.GetVolumeId())), &mapped); err != nil || pub.Rdev != mapped.Rdev {
		t.Fatalf("the published block device is not the LUKS mapping: %v", err)
	}
	f, err := os.OpenFile(b.target, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(marker)
	f.Sync()
	f.Close()
	e.unpublishUnstage(b)
	if img, _ := os.ReadFile(e.image(b)); bytes.Contains(img, marker[:64]) {
		t.Fatal("the block volume's image holds the plaintext marker")
	}

	// Rotation: the Secret gets a new passphrase and keeps the old one as
	// previousEncryptionPassphrase; the next stage moves the volume over.
	e.secrets = map[string]string{"encryptionPassphrase": "the-rotated-claim-secret-xyz", "previousEncryptionPassphrase": secret["encryptionPassphrase"]}
	e.stagePublish(v)
	e.unpublishUnstage(v)
	e.secrets = map[string]string{"encryptionPassphrase": secret["encryptionPassphrase"]}
	_, err = e.node.NodeStageVolume(e.ctx(), &csi.NodeStageVolumeRequest{VolumeId: v.GetVolumeId(), StagingTargetPath: v.staging,
		VolumeCapability: v.cap, Secrets: e.secrets})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("stage with the passphrase rotated away: %v, want PermissionDenied", err)
	}

	for _, c := range []*volume{v, restored, clone, b} {
		if _, err := e.ctl.DeleteVolume(e.ctx(), &csi.DeleteVolumeRequest{VolumeId: c.GetVolumeId()}); err != nil {
			t.Fatal(err)
		}
	}
	if l := e.loops(); len(l) != 0 {
		t.Fatalf("loop devices left: %v", l)
	}
	matches, _ := filepath.Glob("/dev/mapper/cairn-*")
	if len(matches) != 0 {
		t.Fatalf("mappings left: %v", matches)
	}
}

// TestLUKSMappingsReconciled (issue 14): a crash between opening a volume's
// LUKS mapping and mounting it (kill point stage:luks-opened) leaves the
// volume's key in the kernel with nothing staged, and the start-up
// reconcile closes that mapping. It leaves alone the mapping of a mounted
// volume (its workload runs on across a driver restart) and of a staged
// block volume, whose open mapping is its staged state.
func TestLUKSMappingsReconciled(t *testing.T) {
	if err := luks.Supported(); err != nil {
		testfs.SkipKernel(t, "%v", err)
	}
	e := newEnv(t, "ext4", 1<<30)
	e.secrets = map[string]string{"encryptionPassphrase": "luks-claim-secret-0123456789"}
	enc := map[string]string{"encryption": "true"}
	mounted := e.create("mounted", 64*mib, mountCap("ext4"), enc, nil)
	e.stagePublish(mounted)
	blk := e.create("blk", 64*mib, blockCap(), enc, nil)
	e.stage(blk)
	orphan := e.create("orphan", 64*mib, mountCap("ext4"), enc, nil)
	open := func(v *volume) bool {
		_, err := os.Stat(luks.MappingPath(luks.MappingName(v.GetVolumeId())))
		return err == nil
	}

	e.proc.Kill()
	e.proc.Env = []string{"CAIRN_LUKS_FAST_KDF=1", "CAIRN_CRASHPOINT=stage:luks-opened"}
	e.proc.Restart(true)
	e.redial()
	_, err := e.node.NodeStageVolume(e.ctx(), &csi.NodeStageVolumeRequest{VolumeId: orphan.GetVolumeId(), StagingTargetPath: orphan.staging,
		VolumeCapability: orphan.cap, VolumeContext: orphan.GetVolumeContext(), Secrets: e.secrets})
	if err == nil {
		t.Fatal("the stage succeeded: kill point stage:luks-opened was never reached")
	}
	e.proc.Wait(10 * time.Second)
	if !strings.Contains(e.proc.Log(), "crashpoint: reached stage:luks-opened") {
		t.Fatalf("the stage failed without reaching stage:luks-opened: %v", err)
	}
	if !open(orphan) {
		t.Fatal("the crash left no mapping open: nothing for reconcile to do")
	}

	e.proc.Kill() // reaps it
	e.proc.Env = []string{"CAIRN_LUKS_FAST_KDF=1"}
	e.proc.Restart(true)
	e.redial()
	if open(orphan) {
		t.Fatalf("after restart the mapping of %s, which nothing mounts, is still open\nlog tail:\n%s", orphan.GetVolumeId(), tail(e.proc.Log(), 20))
	}
	if !open(mounted) || !open(blk) {
		t.Fatalf("reconcile closed a mapping in use: mounted volume's open=%v, staged block volume's open=%v", open(mounted), open(blk))
	}
	if !strings.Contains(e.proc.Log(), "reconcile: closed the mapping of an encrypted volume that nothing mounts") {
		t.Errorf("reconcile did not log the mapping it closed")
	}

	// Everything still works: the orphan stages again from its secret, the
	// block volume publishes from its staged mapping.
	e.stagePublish(orphan)
	e.unpublishUnstage(orphan)
	e.publish(blk)
	e.unpublishUnstage(blk)
	e.unpublishUnstage(mounted)
	for _, v := range []*volume{orphan, blk, mounted} {
		if open(v) {
			t.Errorf("the mapping of %s is open after unstage", v.GetVolumeId())
		}
		if _, err := e.ctl.DeleteVolume(e.ctx(), &csi.DeleteVolumeRequest{VolumeId: v.GetVolumeId()}); err != nil {
			t.Fatal(err)
		}
	}
	if l := e.loops(); len(l) != 0 {
		t.Fatalf("loop devices left: %v", l)
	}
}
