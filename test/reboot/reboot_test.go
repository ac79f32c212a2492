package reboot

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"sort"
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

	"github.com/cairn-csi/cairn/internal/testdriver"
	"github.com/cairn-csi/cairn/internal/testfs"
)

var mountCap = &csi.VolumeCapability{
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
}

// node is a cairn process on a dir pool, and the directories a CO would use.
type node struct {
	t    *testing.T
	proc *testdriver.Process
	conn *grpc.ClientConn
	ctl  csi.ControllerClient
	node csi.NodeClient
	root string
	ctx  context.Context
}

func start(t *testing.T) *node {
	t.Helper()
	testfs.RequireRoot(t)
	return startOn(t, filepath.Join(testfs.New(t, "ext4", 256<<20), "pool"))
}

// startOn is start with a dir pool at pool.
func startOn(t *testing.T, pool string) *node {
	t.Helper()
	root, err := os.MkdirTemp("", "reboot-")
	if err != nil {
		t.Fatal(err)
	}
	n := &node{t: t, root: root}
	t.Cleanup(func() { unmountUnder(root); os.RemoveAll(root) })
	n.proc = testdriver.Start(t, testdriver.Options{DataDir: filepath.Join(root, "data"), Pools: []string{"default=dir:" + pool}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	n.ctx = ctx
	n.dial()
	return n
}

func (n *node) dial() {
	if n.conn != nil {
		n.conn.Close()
	}
	conn, err := grpc.NewClient("unix://"+n.proc.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() { conn.Close() })
	n.conn, n.ctl, n.node = conn, csi.NewControllerClient(conn), csi.NewNodeClient(conn)
}

// restart is the node coming back: cairn killed and started again.
func (n *node) restart() {
	n.proc.Kill()
	n.proc.Restart(true)
	n.dial()
}

func (n *node) staging(id string) string { return filepath.Join(n.root, "plugins", id, "globalmount") }
func (n *node) target(id string) string  { return filepath.Join(n.root, "pods", id, "mount") }

func (n *node) create(name string) string {
	n.t.Helper()
	resp, err := n.ctl.CreateVolume(n.ctx, &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{mountCap},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}})
	if err != nil {
		n.t.Fatalf("CreateVolume %s: %v", name, err)
	}
	return resp.GetVolume().GetVolumeId()
}

func (n *node) stage(id, staging string) error {
	os.MkdirAll(staging, 0o750) // the CO makes it
	_, err := n.node.NodeStageVolume(n.ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: mountCap})
	return err
}

func (n *node) publish(id, staging, target string) error {
	_, err := n.node.NodePublishVolume(n.ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging,
		TargetPath: target, VolumeCapability: mountCap})
	return err
}

func (n *node) unpublish(id, target string) error {
	_, err := n.node.NodeUnpublishVolume(n.ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
	return err
}

func (n *node) unstage(id, staging string) error {
	_, err := n.node.NodeUnstageVolume(n.ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
	return err
}

func must(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// mounts counts the mount table's entries at path.
func mounts(path string) int {
	infos, _ := mount.ParseMountInfo("/proc/self/mountinfo")
	n := 0
	for _, mi := range infos {
		if mi.MountPoint == path {
			n++
		}
	}
	return n
}

func unmountUnder(dir string) {
	infos, _ := mount.ParseMountInfo("/proc/self/mountinfo")
	var mps []string
	for _, mi := range infos {
		if mi.MountPoint == dir || strings.HasPrefix(mi.MountPoint, dir+"/") {
			mps = append(mps, mi.MountPoint)
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(mps)))
	for _, mp := range mps {
		unix.Unmount(mp, unix.MNT_DETACH)
	}
}

func randomData(t *testing.T) []byte {
	b := make([]byte, 64<<10)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRebootRestoresMounts: volumes staged, published and written; every
// mount disappears behind the driver's back and cairn restarts, as after
// a reboot; kubelet's NodeStage and NodePublish bring each volume back
// with its data, with exactly one mount at each path, however often they
// are repeated.
func TestRebootRestoresMounts(t *testing.T) {
	n := start(t)
	ids := []string{n.create("r-1"), n.create("r-2"), n.create("r-3")}
	data := map[string][]byte{}
	for _, id := range ids {
		must(t, "stage", n.stage(id, n.staging(id)))
		must(t, "publish", n.publish(id, n.staging(id), n.target(id)))
		data[id] = randomData(t)
		must(t, "write", os.WriteFile(filepath.Join(n.target(id), "data"), data[id], 0o644))
	}

	// The reboot: mounts gone (targets first, as the kernel does not
	// care about order but a bind of a bind would), and the process gone.
	for _, id := range ids {
		must(t, "unmount target", unix.Unmount(n.target(id), 0))
		must(t, "unmount staging", unix.Unmount(n.staging(id), 0))
	}
	n.restart()

	for _, id := range ids {
		if mounts(n.staging(id)) != 0 || mounts(n.target(id)) != 0 {
			t.Fatalf("%s: mounts came back by themselves", id)
		}
		must(t, "stage after reboot", n.stage(id, n.staging(id)))
		must(t, "publish after reboot", n.publish(id, n.staging(id), n.target(id)))
		got, err := os.ReadFile(filepath.Join(n.target(id), "data"))
		if err != nil || !bytes.Equal(got, data[id]) {
			t.Errorf("%s: data after reboot: %d bytes, err %v; want the %d bytes written", id, len(got), err, len(data[id]))
		}
	}

	// kubelet restarts and repeats everything: no stacking.
	for round := range 3 {
		for _, id := range ids {
			must(t, "repeated stage", n.stage(id, n.staging(id)))
			must(t, "repeated publish", n.publish(id, n.staging(id), n.target(id)))
		}
		if round == 1 {
			n.restart() // and cairn restarts in the middle of it
		}
	}
	for _, id := range ids {
		if s, tg := mounts(n.staging(id)), mounts(n.target(id)); s != 1 || tg != 1 {
			t.Errorf("%s: %d mounts at staging and %d at target after repeated calls, want 1 and 1", id, s, tg)
		}
	}

	// And everything comes down cleanly.
	for _, id := range ids {
		must(t, "unpublish", n.unpublish(id, n.target(id)))
		must(t, "unstage", n.unstage(id, n.staging(id)))
		if mounts(n.staging(id)) != 0 || mounts(n.target(id)) != 0 {
			t.Errorf("%s: still mounted after unpublish and unstage", id)
		}
		if _, err := os.Lstat(n.target(id)); !os.IsNotExist(err) {
			t.Errorf("%s: target %s still exists after unpublish: %v", id, n.target(id), err)
		}
		_, err := n.ctl.DeleteVolume(n.ctx, &csi.DeleteVolumeRequest{VolumeId: id})
		must(t, "delete", err)
	}
}

// TestCleanupAfterMountsGone: after a reboot the CO may instead tear the
// volumes down: NodeUnpublish and NodeUnstage of paths whose mounts are
// gone succeed and clean up, and the volume can then be deleted.
func TestCleanupAfterMountsGone(t *testing.T) {
	n := start(t)
	id := n.create("gone")
	must(t, "stage", n.stage(id, n.staging(id)))
	must(t, "publish", n.publish(id, n.staging(id), n.target(id)))
	must(t, "unmount target", unix.Unmount(n.target(id), 0))
	must(t, "unmount staging", unix.Unmount(n.staging(id), 0))
	n.restart()

	must(t, "unpublish of an unmounted target", n.unpublish(id, n.target(id)))
	if _, err := os.Lstat(n.target(id)); !os.IsNotExist(err) {
		t.Errorf("target %s still exists: %v", n.target(id), err)
	}
	must(t, "unstage of an unmounted staging path", n.unstage(id, n.staging(id)))
	// Again, as a retrying CO would, and for paths that never existed.
	must(t, "repeated unpublish", n.unpublish(id, n.target(id)))
	must(t, "repeated unstage", n.unstage(id, n.staging(id)))
	must(t, "unpublish of a missing path", n.unpublish(id, filepath.Join(n.root, "never", "existed")))
	must(t, "unstage of a missing path", n.unstage(id, filepath.Join(n.root, "never", "staged")))
	_, err := n.ctl.DeleteVolume(n.ctx, &csi.DeleteVolumeRequest{VolumeId: id})
	must(t, "delete after cleanup", err)
	// Unpublish and unstage still work once the volume itself is gone.
	must(t, "unpublish of a deleted volume", n.unpublish(id, n.target(id)))
	must(t, "unstage of a deleted volume", n.unstage(id, n.staging(id)))
}

// mountTmpfs mounts a tmpfs at dir with a marker file in it.
func mountTmpfs(t *testing.T, dir string) []byte {
	t.Helper()
	must(t, "mkdir", os.MkdirAll(dir, 0o755))
	must(t, "mount tmpfs", unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"))
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	marker := randomData(t)[:64]
	must(t, "marker", os.WriteFile(filepath.Join(dir, "marker"), marker, 0o600))
	return marker
}

func checkUntouched(t *testing.T, dir string, marker []byte, wantMounts int) {
	t.Helper()
	if got := mounts(dir); got != wantMounts {
		t.Errorf("%s has %d mounts, want %d: it was touched", dir, got, wantMounts)
	}
	got, err := os.ReadFile(filepath.Join(dir, "marker"))
	if err != nil || !bytes.Equal(got, marker) {
		t.Errorf("the marker in %s changed or vanished: %v", dir, err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("%s holds %d entries, want only the marker", dir, len(entries))
	}
}

// TestSymlinkTargetRefused: a target or staging path that is a symlink to
// somewhere else is refused, and nothing at the other end is mounted,
// unmounted or removed.
func TestSymlinkTargetRefused(t *testing.T) {
	n := start(t)
	id := n.create("link")
	must(t, "stage", n.stage(id, n.staging(id)))

	outside := filepath.Join(n.root, "outside")
	marker := mountTmpfs(t, outside)
	link := n.target(id)
	must(t, "mkdir", os.MkdirAll(filepath.Dir(link), 0o750))
	must(t, "symlink", os.Symlink(outside, link))

	err := n.publish(id, n.staging(id), link)
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("publish at a symlink: %v, want INVALID_ARGUMENT", err)
	}
	checkUntouched(t, outside, marker, 1)

	// Unpublish must not follow it either: a naive one would unmount the
	// tmpfs at the other end.
	err = n.unpublish(id, link)
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("unpublish at a symlink: %v, want INVALID_ARGUMENT", err)
	}
	checkUntouched(t, outside, marker, 1)
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the symlink itself was changed: %v", err)
	}

	// A staging path that is a symlink: refused for stage and unstage.
	stagingLink := filepath.Join(n.root, "plugins", "linked", "globalmount")
	must(t, "mkdir", os.MkdirAll(filepath.Dir(stagingLink), 0o750))
	must(t, "symlink", os.Symlink(outside, stagingLink))
	id2 := n.create("link-2")
	_, err = n.node.NodeStageVolume(n.ctx, &csi.NodeStageVolumeRequest{VolumeId: id2, StagingTargetPath: stagingLink, VolumeCapability: mountCap})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("stage at a symlink: %v, want INVALID_ARGUMENT", err)
	}
	checkUntouched(t, outside, marker, 1)
	// Unstage must not follow it: a naive one unmounts the tmpfs.
	err = n.unstage(id2, stagingLink)
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("unstage at a symlink: %v, want INVALID_ARGUMENT", err)
	}
	checkUntouched(t, outside, marker, 1)
}

// TestTargetIsForeignMount: a target that is already a mount of something
// else (a tmpfs) gives ALREADY_EXISTS, and the tmpfs is left exactly as
// it was; the same for a staging path.
func TestTargetIsForeignMount(t *testing.T) {
	n := start(t)
	id := n.create("foreign")
	must(t, "stage", n.stage(id, n.staging(id)))

	target := n.target(id)
	marker := mountTmpfs(t, target)
	err := n.publish(id, n.staging(id), target)
	if status.Code(err) != codes.AlreadyExists {
		t.Errorf("publish over a foreign mount: %v, want ALREADY_EXISTS", err)
	}
	checkUntouched(t, target, marker, 1)
	// Repeated, as kubelet would: still refused, still untouched.
	err = n.publish(id, n.staging(id), target)
	if status.Code(err) != codes.AlreadyExists {
		t.Errorf("repeated publish over a foreign mount: %v, want ALREADY_EXISTS", err)
	}
	checkUntouched(t, target, marker, 1)

	id2 := n.create("foreign-2")
	staging := n.staging(id2)
	smarker := mountTmpfs(t, staging)
	err = n.stage(id2, staging)
	if status.Code(err) != codes.AlreadyExists {
		t.Errorf("stage over a foreign mount: %v, want ALREADY_EXISTS", err)
	}
	checkUntouched(t, staging, smarker, 1)
}
