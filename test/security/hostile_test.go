package security

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	mount "k8s.io/mount-utils"

	"github.com/cairn-csi/cairn/internal/loopdev"
	"github.com/cairn-csi/cairn/internal/testdriver"
)

// The regression tests of issue 10: hostile input at the node's edges.
// Each names the hole it closes; each fails on the code before the fix.

// hostile is a running cairn with a dir pool and an image pool, and the
// clients to drive it.
type hostile struct {
	dir, dirPool, imgPool string
	ctl                   csi.ControllerClient
	node                  csi.NodeClient
	proc                  *testdriver.Process
}

func startHostile(t *testing.T) *hostile {
	t.Helper()
	requireRoot(t)
	dir := shortTemp(t, "hostile-")
	h := &hostile{dir: dir, dirPool: filepath.Join(dir, "pool"), imgPool: filepath.Join(dir, "images")}
	h.start(t, "default=dir:"+h.dirPool, "img=image:"+h.imgPool)
	return h
}

// start runs cairn with pools (data under h.dir) and connects the clients.
func (h *hostile) start(t *testing.T, pools ...string) {
	t.Helper()
	h.proc = testdriver.Start(t, testdriver.Options{DataDir: filepath.Join(h.dir, "data"), Pools: pools})
	t.Cleanup(func() { unmountUnder(h.dir) })
	conn, err := grpc.NewClient("unix://"+h.proc.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	h.ctl, h.node = csi.NewControllerClient(conn), csi.NewNodeClient(conn)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func (h *hostile) create(t *testing.T, name string, params map[string]string, c *csi.VolumeCapability) string {
	t.Helper()
	resp, err := h.ctl.CreateVolume(ctxT(t), &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{c},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20}, Parameters: params})
	if err != nil {
		t.Fatalf("CreateVolume %s: %v", name, err)
	}
	return resp.GetVolume().GetVolumeId()
}

func (h *hostile) mkdir(t *testing.T, rel string) string {
	t.Helper()
	p := filepath.Join(h.dir, rel)
	if err := os.MkdirAll(p, 0o750); err != nil {
		t.Fatal(err)
	}
	return p
}

func wantCode(t *testing.T, what string, err error, code codes.Code, mention string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("%s: %v, want %s", what, err, code)
	}
	if mention != "" && !strings.Contains(status.Convert(err).Message(), mention) {
		t.Fatalf("%s: message %q does not name %q", what, status.Convert(err).Message(), mention)
	}
}

func isMountPoint(t *testing.T, p string) bool {
	t.Helper()
	infos, err := mount.ParseMountInfo("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, mi := range infos {
		if mi.MountPoint == p {
			return true
		}
	}
	return false
}

func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	infos, err := mount.ParseMountInfo("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, mi := range infos {
		if mi.MountPoint == dir || strings.HasPrefix(mi.MountPoint, dir+"/") {
			out = append(out, mi.MountPoint)
		}
	}
	return out
}

var blockCap = &csi.VolumeCapability{
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
}

// TestMkfsOptionsAllowListed closes hole 1: mkfsOptions reached mkfs
// unchecked, so "-d /etc" copied the node's /etc (shadow included) into a
// volume, and pods could choose it through inline volume attributes.
func TestMkfsOptionsAllowListed(t *testing.T) {
	h := startHostile(t)
	ctx := ctxT(t)
	for _, opts := range []string{"-b 4096 -d /etc", "-d /root", "-E root_owner=0:0", "-O journal_dev", "-J device=/dev/vda"} {
		_, err := h.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "leak", VolumeCapabilities: []*csi.VolumeCapability{mountCap},
			CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20}, Parameters: map[string]string{"pool": "img", "mkfsOptions": opts}})
		wantCode(t, "StorageClass mkfsOptions "+opts, err, codes.InvalidArgument, "mkfsOptions")
	}
	// Options on the list still work, and are formatted with.
	if id := h.create(t, "fine", map[string]string{"pool": "img", "mkfsOptions": "-b 4096 -E lazy_itable_init=0"}, mountCap); id == "" {
		t.Fatal("no volume ID")
	}
	// A directory pool formats nothing: the parameter is refused, not ignored.
	_, err := h.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "dirmkfs", VolumeCapabilities: []*csi.VolumeCapability{mountCap},
		Parameters: map[string]string{"mkfsOptions": "-m 0"}})
	wantCode(t, "mkfsOptions on a dir pool", err, codes.InvalidArgument, "mkfsOptions")

	// Pods choose inline volume attributes: formatting is not theirs to choose.
	target := filepath.Join(h.dir, "pod", "inline")
	_, err = h.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "csi-inline-1", TargetPath: target, VolumeCapability: mountCap,
		VolumeContext: map[string]string{"csi.storage.k8s.io/ephemeral": "true", "size": "64Mi", "pool": "img", "mkfsOptions": "-b 4096 -d /etc"}})
	wantCode(t, "inline mkfsOptions", err, codes.InvalidArgument, "mkfsOptions")
	if isMountPoint(t, target) {
		t.Fatal("the refused inline volume was mounted")
	}
	list, err := h.ctl.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(list.GetEntries()); n != 1 {
		t.Fatalf("%d volumes exist, want only the one with allowed options", n)
	}
}

// TestUnpublishLeavesForeignMounts closes hole 2: NodeUnpublishVolume
// unmounted whatever was at target_path, for any volume_id, and removed it;
// aimed at a pool it deleted a volume's data directory.
func TestUnpublishLeavesForeignMounts(t *testing.T) {
	h := startHostile(t)
	ctx := ctxT(t)
	id := h.create(t, "a", nil, mountCap)
	foreign := h.mkdir(t, "someone-elses-tmpfs")
	if err := unix.Mount("tmpfs", foreign, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(foreign, unix.MNT_DETACH) })
	if err := os.WriteFile(filepath.Join(foreign, "data"), []byte("theirs"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, volID := range []string{id, "vol-00000000deadbeef"} {
		if _, err := h.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: volID, TargetPath: foreign}); err != nil {
			t.Fatalf("unpublish of %s at a foreign mount: %v, want OK (left untouched)", volID, err)
		}
		if !isMountPoint(t, foreign) {
			t.Fatalf("unpublish of %s unmounted someone else's tmpfs", volID)
		}
		if b, err := os.ReadFile(filepath.Join(foreign, "data")); err != nil || string(b) != "theirs" {
			t.Fatalf("the foreign mount's data: %q, %v", b, err)
		}
	}
	// Aimed at a volume's own directory in the pool: refused, and the
	// volume can still be staged.
	volDir := filepath.Join(h.dirPool, "volumes", id)
	_, err := h.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: volDir})
	wantCode(t, "unpublish inside the pool", err, codes.InvalidArgument, "target_path")
	if _, err := os.Stat(volDir); err != nil {
		t.Fatalf("the volume's directory is gone: %v", err)
	}
	staging := h.mkdir(t, "staging-a")
	if _, err := h.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: mountCap}); err != nil {
		t.Fatalf("stage after the refused unpublish: %v", err)
	}
	// A published volume is still unpublished by its own ID, and removed.
	target := filepath.Join(h.dir, "pod-a", "mount")
	if _, err := h.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: mountCap}); err != nil {
		t.Fatal(err)
	}
	// Another volume's ID does not unmount it.
	other := h.create(t, "b", nil, mountCap)
	if _, err := h.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: other, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if !isMountPoint(t, target) {
		t.Fatal("unpublish with another volume's ID unmounted this volume")
	}
	if _, err := h.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(target); !os.IsNotExist(err) {
		t.Fatalf("target not removed: %v", err)
	}
}

// TestNodePathsRefuseSymlinksAndPools closes hole 3: a symlink in a parent
// of target_path or staging_target_path was followed, so a volume could be
// mounted over /etc/x; and paths inside a pool mounted one volume over
// another's data.
func TestNodePathsRefuseSymlinksAndPools(t *testing.T) {
	h := startHostile(t)
	ctx := ctxT(t)
	id := h.create(t, "a", nil, mountCap)
	victim := h.create(t, "victim", nil, mountCap)
	outside := h.mkdir(t, "outside")
	h.mkdir(t, "outside/st")
	link := filepath.Join(h.dir, "kubelet", "link-to-outside")
	h.mkdir(t, "kubelet")
	if err := os.Symlink(outside, link); err != nil {
		t.Fatal(err)
	}

	_, err := h.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: filepath.Join(link, "st"), VolumeCapability: mountCap})
	wantCode(t, "stage through a symlinked parent", err, codes.InvalidArgument, "symbolic link")

	staging := h.mkdir(t, "kubelet/staging")
	if _, err := h.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: mountCap}); err != nil {
		t.Fatal(err)
	}
	_, err = h.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging,
		TargetPath: filepath.Join(link, "x"), VolumeCapability: mountCap})
	wantCode(t, "publish through a symlinked parent", err, codes.InvalidArgument, "symbolic link")
	if _, err := os.Lstat(filepath.Join(outside, "x")); !os.IsNotExist(err) {
		t.Fatalf("publish created %s through the symlink: %v", filepath.Join(outside, "x"), err)
	}
	if m := mountsUnder(t, outside); len(m) > 0 {
		t.Fatalf("mounts under the symlink's destination: %v", m)
	}

	// Paths inside a pool, or the pool itself.
	victimDir := filepath.Join(h.dirPool, "volumes", victim)
	for _, p := range []string{victimDir, h.dirPool, h.imgPool, filepath.Join(h.dir, "data")} {
		_, err := h.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: p, VolumeCapability: mountCap})
		wantCode(t, "stage at "+p, err, codes.InvalidArgument, "staging_target_path")
		_, err = h.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging,
			TargetPath: filepath.Join(p, "t"), VolumeCapability: mountCap})
		wantCode(t, "publish under "+p, err, codes.InvalidArgument, "target_path")
	}
	if m := mountsUnder(t, h.dirPool); len(m) > 0 {
		t.Fatalf("mounts left over the pool: %v", m)
	}
}

// TestNodeExpandPathMustBeTheVolumes closes hole 9 (first item):
// NodeExpandVolume with volume_path=/etc answered OK.
func TestNodeExpandPathMustBeTheVolumes(t *testing.T) {
	h := startHostile(t)
	ctx := ctxT(t)
	id := h.create(t, "a", nil, mountCap)
	for _, p := range []string{"/etc", h.dir} {
		_, err := h.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: p,
			CapacityRange: &csi.CapacityRange{RequiredBytes: 128 << 20}})
		wantCode(t, "NodeExpandVolume at "+p, err, codes.NotFound, "volume_path")
	}
}

// TestDirSnapshotSizeIsCapacity closes hole 9 (second item): a dir-pool
// snapshot reported the bytes in use, so a 1 MiB restore of a 64 MiB
// volume's snapshot was accepted.
func TestDirSnapshotSizeIsCapacity(t *testing.T) {
	h := startHostile(t)
	ctx := ctxT(t)
	id := h.create(t, "a", nil, mountCap)
	if err := os.WriteFile(filepath.Join(h.dirPool, "volumes", id, "f"), make([]byte, 1024), 0o600); err != nil {
		t.Fatal(err)
	}
	snap, err := h.ctl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: id})
	if err != nil {
		t.Fatal(err)
	}
	if got := snap.GetSnapshot().GetSizeBytes(); got != 64<<20 {
		t.Fatalf("snapshot size_bytes = %d, want the source's capacity %d", got, 64<<20)
	}
	_, err = h.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "small", VolumeCapabilities: []*csi.VolumeCapability{mountCap},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20},
		VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshot().GetSnapshotId()}}}})
	wantCode(t, "restore into 1 MiB", err, codes.OutOfRange, "")
}

// TestDeleteDetachesStagedImage closes hole 7: DeleteVolume succeeded while
// the image was still attached to a loop device (a staged, unpublished
// block volume), and the device kept the deleted image's space.
func TestDeleteDetachesStagedImage(t *testing.T) {
	h := startHostile(t)
	ctx := ctxT(t)
	id := h.create(t, "blk", map[string]string{"pool": "img"}, blockCap)
	staging := h.mkdir(t, "staging-blk")
	if _, err := h.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: blockCap}); err != nil {
		t.Fatal(err)
	}
	if n := loopsInto(t, h.imgPool); n != 1 {
		t.Fatalf("%d loop devices point into the pool after stage, want 1", n)
	}
	if _, err := h.ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatalf("DeleteVolume of a staged, unpublished block volume: %v", err)
	}
	if n := loopsInto(t, h.imgPool); n != 0 {
		t.Fatalf("%d loop devices still point into the pool after DeleteVolume returned", n)
	}
	// Unstage still converges afterwards.
	if _, err := h.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
}

func loopsInto(t *testing.T, dir string) int {
	t.Helper()
	devs, err := loopdev.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, d := range devs {
		if strings.HasPrefix(d.BackingFile, dir+"/") {
			n++
		}
	}
	return n
}
