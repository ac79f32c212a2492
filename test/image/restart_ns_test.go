//go:build linux

package image

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/loopdev"
)

// TestRestartInNewMountNamespace: cairn in a container sees the pool
// through the container's bind mount; killed and replaced by a new
// container, the loop devices it attached report their image from the old
// mount's root ("/pools/images/volumes/<id>"), a path that names nothing
// in the new one. The new cairn must still know the staged and published
// mounts for the volume's, and unpublish and unstage them (TestChartDynamic,
// kill-mid-provisioning: pods stuck Terminating, NodePublish "not staged").
// Here the first cairn serves the pool through a bind mount that is lazily
// unmounted after it is killed, as the container's mount namespace goes.
func TestRestartInNewMountNamespace(t *testing.T) {
	e := newEnv(t, "ext4", 256*mib)
	view := filepath.Join(e.dir, "container-view")
	if err := os.Mkdir(view, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(e.mnt, view, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount the pool's filesystem: %v", err)
	}
	mounted := true
	t.Cleanup(func() {
		if mounted {
			unix.Unmount(view, unix.MNT_DETACH)
		}
	})
	poolArg := func(path string) {
		i := slices.Index(e.proc.Args, "default=image:"+e.pool)
		if i < 0 {
			i = slices.Index(e.proc.Args, "default=image:"+filepath.Join(view, "pool"))
		}
		if i < 0 {
			t.Fatalf("no --pool default=image: in %v", e.proc.Args)
		}
		e.proc.Args[i] = "default=image:" + path
	}
	restart := func() { // a fresh connection: the old one may be backing off
		e.proc.Restart(true)
		conn := e.proc.Dial()
		e.ctl, e.node = csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	}

	// the first cairn: the pool seen through the bind mount
	e.proc.Kill()
	poolArg(filepath.Join(view, "pool"))
	restart()
	v := e.create("v", 64*mib, mountCap("ext4"), nil, nil)
	e.stagePublish(v)
	if err := os.WriteFile(filepath.Join(v.target, "f"), []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}

	// killed; its mount namespace (here: the bind mount) goes
	e.proc.Kill()
	if err := unix.Unmount(view, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	mounted = false
	// what the kernel reports now (read from sysfs directly: the point is
	// what the driver makes of it)
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil && strings.Contains(string(b), v.GetVolumeId()) {
			t.Logf("%s reports its image as %q (the image is %s)", strings.Split(f, "/")[3], strings.TrimSpace(string(b)), e.image(v))
		}
	}

	// the new cairn sees the pool at its real path
	poolArg(e.pool)
	restart()
	// ListVolumes sees the volume published on this node
	lv, err := e.ctl.ListVolumes(e.ctx(), &csi.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range lv.GetEntries() {
		if en.GetVolume().GetVolumeId() == v.GetVolumeId() && len(en.GetStatus().GetPublishedNodeIds()) == 0 {
			t.Errorf("ListVolumes: %s is published here but lists no published node", v.GetVolumeId())
		}
	}
	e.unpublish(v)
	if _, err := os.Lstat(v.target); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("after NodeUnpublishVolume the target %s is still there (%v): the mount was taken for someone else's", v.target, err)
	}
	e.unstage(v)
	for _, mp := range e.mountsUnder() {
		if mp == v.staging || mp == v.target {
			t.Errorf("still mounted after unpublish and unstage: %s", mp)
		}
	}
	if devs, err := loopdev.FindByBackingFile(context.Background(), e.image(v)); err != nil || len(devs) != 0 {
		t.Errorf("loop devices of %s after NodeUnstageVolume: %v, %v; want none", e.image(v), devs, err)
	}
	// and the volume is whole: stage and publish again, read the file
	e.stagePublish(v)
	if b, err := os.ReadFile(filepath.Join(v.target, "f")); err != nil || string(b) != "data" {
		t.Errorf("after restaging: %q, %v", b, err)
	}
	e.unpublishUnstage(v)
}
