package lvm

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-csi/cairn/internal/driver"
	"github.com/cairn-csi/cairn/internal/luks"
	"github.com/cairn-csi/cairn/internal/testdriver"
	"github.com/cairn-csi/cairn/internal/testfs"
	"github.com/cairn-csi/cairn/internal/testlvm"
)

var blockCap = &csi.VolumeCapability{
	AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
}

// lvmEnv is a driver on a fresh thin pool, with the calls these tests
// make, each with the secrets of the moment.
type lvmEnv struct {
	*env
	vg      string
	secrets map[string]string
	proc    *testdriver.Process
}

func newLVMEnv(t *testing.T, vgBytes, thinBytes int64) *lvmEnv {
	if err := testlvm.Available(); err != nil {
		testfs.SkipKernel(t, "%v", err)
	}
	vg := testlvm.NewVG(t, vgBytes, thinBytes)
	spec := vg
	if thinBytes > 0 {
		spec += "/" + testlvm.ThinPool
	}
	tmp := t.TempDir()
	p := testdriver.Start(t, testdriver.Options{DataDir: filepath.Join(tmp, "data"),
		Pools: []string{"lvm=lvm:" + spec}, Env: []string{"CAIRN_LUKS_FAST_KDF=1"}})
	conn := p.Dial()
	return &lvmEnv{env: &env{t: t, ctx: context.Background(), ctrl: csi.NewControllerClient(conn), node: csi.NewNodeClient(conn), tmp: tmp}, vg: vg, proc: p}
}

// redial connects the clients to a restarted driver.
func (e *lvmEnv) redial() {
	conn := e.proc.Dial()
	e.ctrl, e.node = csi.NewControllerClient(conn), csi.NewNodeClient(conn)
}

type vol struct {
	id, staging, target string
	cap                 *csi.VolumeCapability
}

func (e *lvmEnv) create(size int64, c *csi.VolumeCapability, params map[string]string, src *csi.VolumeContentSource) *vol {
	e.t.Helper()
	resp, err := e.ctrl.CreateVolume(e.ctx, &csi.CreateVolumeRequest{
		Name: e.name("vol"), CapacityRange: &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{c}, Parameters: params, Secrets: e.secrets, VolumeContentSource: src,
	})
	e.must("CreateVolume", err)
	id := resp.GetVolume().GetVolumeId()
	if got := resp.GetVolume().GetCapacityBytes(); got < size {
		e.t.Fatalf("CreateVolume: capacity %d, want at least %d", got, size)
	}
	v := &vol{id: id, staging: filepath.Join(e.tmp, "staging-"+id), target: filepath.Join(e.tmp, "target-"+id), cap: c}
	e.must("mkdir staging", os.Mkdir(v.staging, 0o755))
	return v
}

func (e *lvmEnv) stage(v *vol) error {
	_, err := e.node.NodeStageVolume(e.ctx, &csi.NodeStageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging,
		VolumeCapability: v.cap, Secrets: e.secrets})
	return err
}

func (e *lvmEnv) stagePublish(v *vol) {
	e.t.Helper()
	e.must("NodeStageVolume "+v.id, e.stage(v))
	_, err := e.node.NodePublishVolume(e.ctx, &csi.NodePublishVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging,
		TargetPath: v.target, VolumeCapability: v.cap})
	e.must("NodePublishVolume "+v.id, err)
}

func (e *lvmEnv) unpublishUnstage(v *vol) {
	e.t.Helper()
	_, err := e.node.NodeUnpublishVolume(e.ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.id, TargetPath: v.target})
	e.must("NodeUnpublishVolume "+v.id, err)
	_, err = e.node.NodeUnstageVolume(e.ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging})
	e.must("NodeUnstageVolume "+v.id, err)
}

func (e *lvmEnv) lv(v *vol) string { return "/dev/" + e.vg + "/" + v.id }

// lvBytes is the LV's size as lvm2 reports it.
func (e *lvmEnv) lvBytes(v *vol) int64 {
	e.t.Helper()
	out := testlvm.Run(e.t, "lvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "lv_size", e.vg+"/"+v.id)
	n, err := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
	if err != nil {
		e.t.Fatalf("lvs size of %s: %q", v.id, out)
	}
	return n
}

func mappingOpen(id string) bool {
	_, err := os.Stat(luks.MappingPath(luks.MappingName(id)))
	return err == nil
}

// rawHolds reports whether the device holds needle anywhere.
func rawHolds(t *testing.T, dev string, needle []byte) bool {
	t.Helper()
	b, err := os.ReadFile(dev)
	if err != nil {
		t.Fatalf("read %s: %v", dev, err)
	}
	return bytes.Contains(b, needle)
}

func deviceBytes(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestEncryptedLVMVolumes (issues 14, 15): LVM thin volumes encrypted
// with LUKS2 as image volumes are, through CSI calls to the real binary.
// The LV is the capacity plus the 16 MiB header and starts with it; at rest
// it is ciphertext; a wrong secret opens nothing; unstage closes the
// mapping; a thin snapshot, its restore and a clone hold the data, and the
// restore and clone have their own key slot (the source's key opens
// neither); block volumes are published as the mapping; expansion grows
// the LV, the mapping and the filesystem (mount) or the device (block);
// a new passphrase is rotated in at stage; DeleteVolume of a block volume
// still staged closes its mapping first. VM lane.
func TestEncryptedLVMVolumes(t *testing.T) {
	if err := luks.Supported(); err != nil {
		testfs.SkipKernel(t, "%v", err)
	}
	e := newLVMEnv(t, 1<<30, 768*mib)
	secret := "lvm-claim-secret-0123456789abcdef"
	e.secrets = map[string]string{"encryptionPassphrase": secret}
	enc := map[string]string{"encryption": "true"}
	marker := bytes.Repeat([]byte("CAIRN-LVM-LUKS-PLAINTEXT-MARKER!"), 512)

	v := e.create(64*mib, mountCap, enc, nil)
	if got := e.lvBytes(v); got != 64*mib+luks.HeaderBytes {
		t.Errorf("LV of a 64 MiB encrypted volume is %d bytes, want 64 MiB + the %d-byte header", got, luks.HeaderBytes)
	}
	if ok, err := luks.IsLUKS(e.lv(v)); err != nil || !ok {
		t.Fatalf("the LV has no LUKS header: %v", err)
	}

	// A wrong secret: PERMISSION_DENIED, nothing open.
	e.secrets = map[string]string{"encryptionPassphrase": "not-the-claim-secret-at-all"}
	if err := e.stage(v); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("stage with a wrong secret: %v, want PermissionDenied", err)
	}
	if mappingOpen(v.id) {
		t.Fatal("a mapping is open after a refused stage")
	}
	e.secrets = map[string]string{"encryptionPassphrase": secret}

	e.stagePublish(v)
	e.must("write marker", os.WriteFile(filepath.Join(v.target, "marker"), marker, 0o600))
	e.unpublishUnstage(v)
	if mappingOpen(v.id) {
		t.Fatal("the mapping is still open after unstage")
	}
	if rawHolds(t, e.lv(v), marker[:64]) {
		t.Fatal("the LV holds the plaintext marker at rest")
	}

	// Snapshot (no secret: a thin snapshot of the ciphertext), restore and
	// clone, each moved to its own key.
	snap, err := e.ctrl.CreateSnapshot(e.ctx, &csi.CreateSnapshotRequest{Name: "enc-snap", SourceVolumeId: v.id})
	e.must("CreateSnapshot", err)
	if got := snap.GetSnapshot().GetSizeBytes(); got != 64*mib {
		t.Errorf("snapshot size %d, want the volume's 64 MiB (not the LV's)", got)
	}
	restored := e.create(64*mib, mountCap, enc, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshot().GetSnapshotId()}}})
	clone := e.create(96*mib, mountCap, enc, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: v.id}}})
	if got := e.lvBytes(clone); got != 96*mib+luks.HeaderBytes {
		t.Errorf("LV of a 96 MiB clone is %d bytes, want 96 MiB + header", got)
	}
	srcKey, err := driver.LUKSKey([]byte(secret), v.id)
	e.must("LUKSKey", err)
	for _, c := range []*vol{restored, clone} {
		if err := luks.Check(e.ctx, e.lv(c), srcKey); !strings.Contains(errString(err), "opens no LUKS key slot") {
			t.Errorf("%s: the source volume's key opens it (%v); it must have only its own", c.id, err)
		}
		own, _ := driver.LUKSKey([]byte(secret), c.id)
		if err := luks.Check(e.ctx, e.lv(c), own); err != nil {
			t.Errorf("%s: its own key does not open it: %v", c.id, err)
		}
	}
	for _, c := range []*vol{v, restored, clone} {
		e.stagePublish(c)
		if b, err := os.ReadFile(filepath.Join(c.target, "marker")); err != nil || !bytes.Equal(b, marker) {
			t.Fatalf("%s: marker: %v", c.id, err)
		}
		e.unpublishUnstage(c)
	}

	// Expansion of a published mount volume: LV, mapping, then ext4 online.
	e.stagePublish(v)
	var before unix.Statfs_t
	e.must("statfs", unix.Statfs(v.target, &before))
	resp, err := e.node.NodeExpandVolume(e.ctx, &csi.NodeExpandVolumeRequest{VolumeId: v.id, VolumePath: v.target,
		StagingTargetPath: v.staging, CapacityRange: &csi.CapacityRange{RequiredBytes: 128 * mib}, VolumeCapability: mountCap})
	e.must("NodeExpandVolume", err)
	if resp.GetCapacityBytes() != 128*mib || e.lvBytes(v) != 128*mib+luks.HeaderBytes {
		t.Errorf("expanded to %d bytes, LV %d; want 128 MiB and 128 MiB + header", resp.GetCapacityBytes(), e.lvBytes(v))
	}
	if got := deviceBytes(t, luks.MappingPath(luks.MappingName(v.id))); got != 128*mib {
		t.Errorf("the mapping is %d bytes after expansion, want 128 MiB", got)
	}
	var after unix.Statfs_t
	e.must("statfs", unix.Statfs(v.target, &after))
	if after.Blocks*uint64(after.Bsize) <= before.Blocks*uint64(before.Bsize)+32*mib {
		t.Errorf("the filesystem did not grow: %d -> %d bytes", before.Blocks*uint64(before.Bsize), after.Blocks*uint64(after.Bsize))
	}
	if b, err := os.ReadFile(filepath.Join(v.target, "marker")); err != nil || !bytes.Equal(b, marker) {
		t.Fatalf("marker after expansion: %v", err)
	}
	e.unpublishUnstage(v)

	// Block access: the published device is the mapping, and grows with it.
	b := e.create(64*mib, blockCap, enc, nil)
	e.stagePublish(b)
	var pub, mapped unix.Stat_t
	e.must("stat target", unix.Stat(b.target, &pub))
	if err := unix.Stat(luks.MappingPath(luks.MappingName(b.id)), &mapped); err != nil || pub.Rdev != mapped.Rdev {
		t.Fatalf("the published block device is not the LUKS mapping: %v", err)
	}
	f, err := os.OpenFile(b.target, os.O_WRONLY, 0)
	e.must("open block target", err)
	_, err = f.Write(marker)
	e.must("write block target", err)
	e.must("sync block target", f.Sync())
	f.Close()
	_, err = e.node.NodeExpandVolume(e.ctx, &csi.NodeExpandVolumeRequest{VolumeId: b.id, VolumePath: b.target,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 96 * mib}, VolumeCapability: blockCap})
	e.must("NodeExpandVolume (block)", err)
	if got := deviceBytes(t, b.target); got != 96*mib {
		t.Errorf("the published block device is %d bytes after expansion, want 96 MiB", got)
	}
	e.unpublishUnstage(b)
	if mappingOpen(b.id) {
		t.Fatal("the block volume's mapping is open after unstage")
	}
	if rawHolds(t, e.lv(b), marker[:64]) {
		t.Fatal("the block volume's LV holds the plaintext marker")
	}

	// Rotation: the Secret gets a new passphrase and keeps the old one as
	// previousEncryptionPassphrase; the next stage moves the volume over.
	e.secrets = map[string]string{"encryptionPassphrase": "the-rotated-lvm-claim-secret-xyz", "previousEncryptionPassphrase": secret}
	e.stagePublish(v)
	e.unpublishUnstage(v)
	e.secrets = map[string]string{"encryptionPassphrase": secret}
	if err := e.stage(v); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("stage with the passphrase rotated away: %v, want PermissionDenied", err)
	}

	// A block volume staged (mapping open) and not published is deleted:
	// the mapping is closed first, and the LV goes.
	e.must("NodeStageVolume (block)", e.stage(b))
	if !mappingOpen(b.id) {
		t.Fatal("block stage opened no mapping")
	}
	for _, c := range []*vol{b, v, restored, clone} {
		e.deleteVolume(c.id)
	}
	_, err = e.ctrl.DeleteSnapshot(e.ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshot().GetSnapshotId()})
	e.must("DeleteSnapshot", err)
	if m, _ := filepath.Glob("/dev/mapper/cairn-*"); len(m) != 0 {
		t.Fatalf("mappings left: %v", m)
	}
	for _, l := range strings.Split(testlvm.Run(t, "lvs", "--noheadings", "-o", "lv_name,lv_tags", e.vg), "\n") {
		if strings.Contains(l, "cairn.csi.dev") {
			t.Errorf("Cairn LV left: %s", strings.TrimSpace(l))
		}
	}
}

// TestEncryptedThickVolume: on a thick (linear) pool, an encrypted volume
// is an LV of the capacity plus the header, ciphertext at rest, and grows
// with its mapping and filesystem. VM lane.
func TestEncryptedThickVolume(t *testing.T) {
	if err := luks.Supported(); err != nil {
		testfs.SkipKernel(t, "%v", err)
	}
	e := newLVMEnv(t, 512*mib, 0)
	e.secrets = map[string]string{"encryptionPassphrase": "thick-claim-secret-0123456789"}
	marker := bytes.Repeat([]byte("CAIRN-THICK-LUKS-PLAINTEXT-MARK!"), 512)
	v := e.create(64*mib, mountCap, map[string]string{"encryption": "true"}, nil)
	if got := e.lvBytes(v); got != 64*mib+luks.HeaderBytes {
		t.Errorf("LV of a 64 MiB encrypted thick volume is %d bytes, want 64 MiB + header", got)
	}
	e.stagePublish(v)
	e.must("write marker", os.WriteFile(filepath.Join(v.target, "marker"), marker, 0o600))
	_, err := e.node.NodeExpandVolume(e.ctx, &csi.NodeExpandVolumeRequest{VolumeId: v.id, VolumePath: v.target,
		StagingTargetPath: v.staging, CapacityRange: &csi.CapacityRange{RequiredBytes: 96 * mib}, VolumeCapability: mountCap})
	e.must("NodeExpandVolume", err)
	if got := deviceBytes(t, luks.MappingPath(luks.MappingName(v.id))); got != 96*mib {
		t.Errorf("the mapping is %d bytes after expansion, want 96 MiB", got)
	}
	e.unpublishUnstage(v)
	if mappingOpen(v.id) {
		t.Fatal("the mapping is still open after unstage")
	}
	if rawHolds(t, e.lv(v), marker[:64]) {
		t.Fatal("the thick LV holds the plaintext marker at rest")
	}
	e.stagePublish(v)
	if b, err := os.ReadFile(filepath.Join(v.target, "marker")); err != nil || !bytes.Equal(b, marker) {
		t.Fatalf("marker after restage: %v", err)
	}
	e.unpublishUnstage(v)
	e.deleteVolume(v.id)
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// TestLVHealth (issue 15): an LV that is inactive or missing is abnormal
// in ControllerGetVolumeHealth, ControllerListVolumeHealth and
// NodeGetVolumeHealth, with a message naming the LV. None of these, nor
// ListVolumes or ControllerGetVolume, activates it; NodeStageVolume does,
// and the volume is healthy again. VM lane.
func TestLVHealth(t *testing.T) {
	e := newLVMEnv(t, 512*mib, 256*mib)
	v := e.create(32*mib, mountCap, nil, nil)
	lvName := e.vg + "/" + v.id
	e.stagePublish(v)
	e.must("write", os.WriteFile(filepath.Join(v.target, "data"), []byte("kept"), 0o600))
	e.unpublishUnstage(v)

	health := func() (ctrl, list, node []*csi.VolumeHealth_VolumeHealthEntry) {
		t.Helper()
		c, err := e.ctrl.ControllerGetVolumeHealth(e.ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: v.id})
		e.must("ControllerGetVolumeHealth", err)
		l, err := e.ctrl.ControllerListVolumeHealth(e.ctx, &csi.ControllerListVolumeHealthRequest{})
		e.must("ControllerListVolumeHealth", err)
		for _, h := range l.GetEntries() {
			if h.GetVolumeId() == v.id {
				list = h.GetHealthStatuses()
			}
		}
		n, err := e.node.NodeGetVolumeHealth(e.ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: v.id})
		e.must("NodeGetVolumeHealth", err)
		return c.GetVolumeHealth().GetHealthStatuses(), list, n.GetVolumeHealth().GetHealthStatuses()
	}
	wantAbnormal := func(state, reason string) {
		t.Helper()
		c, l, n := health()
		for _, got := range []struct {
			rpc string
			hs  []*csi.VolumeHealth_VolumeHealthEntry
		}{{"ControllerGetVolumeHealth", c}, {"ControllerListVolumeHealth", l}, {"NodeGetVolumeHealth", n}} {
			if len(got.hs) != 1 || got.hs[0].GetStatus() != csi.VolumeHealthErrorType_INACCESSIBLE || got.hs[0].GetReason() != reason ||
				!strings.Contains(got.hs[0].GetMessage(), lvName) {
				t.Errorf("%s of a %s LV = %v, want one INACCESSIBLE %s entry naming %s", got.rpc, state, got.hs, reason, lvName)
			}
		}
	}
	active := func() bool {
		out := testlvm.Run(t, "lvs", "--noheadings", "-o", "lv_active", lvName)
		return strings.TrimSpace(out) == "active"
	}

	if c, l, n := health(); len(c)+len(l)+len(n) != 0 {
		t.Fatalf("a healthy volume is reported abnormal: %v %v %v", c, l, n)
	}

	// Deactivated underneath: abnormal, and it stays inactive whatever
	// reads its state.
	testlvm.Run(t, "lvchange", "--quiet", "--activate", "n", lvName)
	wantAbnormal("inactive", "Inactive")
	_, err := e.ctrl.ListVolumes(e.ctx, &csi.ListVolumesRequest{})
	e.must("ListVolumes", err)
	_, err = e.ctrl.ControllerGetVolume(e.ctx, &csi.ControllerGetVolumeRequest{VolumeId: v.id})
	e.must("ControllerGetVolume", err)
	if active() {
		t.Fatal("a health check or listing activated the LV")
	}

	// NodeStageVolume activates it (a reboot with auto-activation off).
	e.stagePublish(v)
	if !active() {
		t.Fatal("NodeStageVolume did not activate the LV")
	}
	if b, err := os.ReadFile(filepath.Join(v.target, "data")); err != nil || string(b) != "kept" {
		t.Fatalf("data after reactivation: %q, %v", b, err)
	}
	if c, l, n := health(); len(c)+len(l)+len(n) != 0 {
		t.Fatalf("the reactivated volume is reported abnormal: %v %v %v", c, l, n)
	}
	e.unpublishUnstage(v)

	// Removed underneath: abnormal, not unknown.
	testlvm.Run(t, "lvremove", "--quiet", "--yes", lvName)
	wantAbnormal("missing", "DataMissing")
	e.deleteVolume(v.id)
}

// TestLVMLUKSMappingsReconciled: a crash between opening an encrypted LV's
// mapping and mounting it leaves the mapping (and so the key) in the
// kernel with nothing staged; the restarted driver closes it, and keeps
// the mappings of a mounted volume and of a staged block volume.
func TestLVMLUKSMappingsReconciled(t *testing.T) {
	if err := luks.Supported(); err != nil {
		testfs.SkipKernel(t, "%v", err)
	}
	e := newLVMEnv(t, 1<<30, 768*mib)
	e.secrets = map[string]string{"encryptionPassphrase": "lvm-claim-secret-0123456789abcdef"}
	enc := map[string]string{"encryption": "true"}
	mounted := e.create(64*mib, mountCap, enc, nil)
	e.stagePublish(mounted)
	blk := e.create(64*mib, blockCap, enc, nil)
	e.must("NodeStageVolume (block)", e.stage(blk))
	orphan := e.create(64*mib, mountCap, enc, nil)

	e.proc.Kill()
	e.proc.Env = []string{"CAIRN_LUKS_FAST_KDF=1", "CAIRN_CRASHPOINT=stage:luks-opened"}
	e.proc.Restart(true)
	e.redial()
	if err := e.stage(orphan); err == nil {
		t.Fatal("the stage succeeded: kill point stage:luks-opened was never reached")
	}
	e.proc.Wait(10 * time.Second)
	if !strings.Contains(e.proc.Log(), "crashpoint: reached stage:luks-opened") {
		t.Fatal("the stage failed without reaching stage:luks-opened")
	}
	if !mappingOpen(orphan.id) {
		t.Fatal("the crash left no mapping open: nothing for reconcile to do")
	}

	e.proc.Kill()
	e.proc.Env = []string{"CAIRN_LUKS_FAST_KDF=1"}
	e.proc.Restart(true)
	e.redial()
	if mappingOpen(orphan.id) {
		t.Fatalf("after restart the mapping of %s, which nothing mounts, is still open", orphan.id)
	}
	if !mappingOpen(mounted.id) || !mappingOpen(blk.id) {
		t.Fatalf("reconcile closed a mapping in use: mounted volume's open=%v, staged block volume's open=%v", mappingOpen(mounted.id), mappingOpen(blk.id))
	}
	if !strings.Contains(e.proc.Log(), "reconcile: closed the mapping of an encrypted volume that nothing mounts") {
		t.Error("reconcile did not log the mapping it closed")
	}

	// The orphan stages again from its secret; everything unstages clean.
	e.stagePublish(orphan)
	e.unpublishUnstage(orphan)
	_, err := e.node.NodeUnstageVolume(e.ctx, &csi.NodeUnstageVolumeRequest{VolumeId: blk.id, StagingTargetPath: blk.staging})
	e.must("NodeUnstageVolume (block)", err)
	e.unpublishUnstage(mounted)
	for _, v := range []*vol{orphan, blk, mounted} {
		if mappingOpen(v.id) {
			t.Errorf("the mapping of %s is open after unstage", v.id)
		}
		e.deleteVolume(v.id)
	}
}
