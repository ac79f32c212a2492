package lvm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/cairn-csi/cairn/internal/testdriver"
	"github.com/cairn-csi/cairn/internal/testfs"
	"github.com/cairn-csi/cairn/internal/testlvm"
)

// TestSnapshotWhileWriting takes a snapshot and a clone of a mounted ext4
// thin volume while a writer creates, fsyncs and deletes files in it, then
// restores the snapshot, and checks the restored volume and the clone
// before anything mounts them: e2fsck -fn finds nothing and the journal
// needs no recovery. A thin snapshot of a mounted ext4 taken without a
// freeze has needs_recovery set; lvm2 suspends the origin with lockfs,
// which freezes the filesystem, and this checks that it did. Then both
// are staged and hold the writer's files. VM lane.
func TestSnapshotWhileWriting(t *testing.T) {
	if err := testlvm.Available(); err != nil {
		testfs.SkipKernel(t, "%v", err)
	}
	for _, tool := range []string{"e2fsck", "dumpe2fs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
	}
	vg := testlvm.NewVG(t, 2*gib, 1536*mib)
	tmp := t.TempDir()
	p := testdriver.Start(t, testdriver.Options{DataDir: filepath.Join(tmp, "data"), Pools: []string{"lvm=lvm:" + vg + "/" + testlvm.ThinPool}})
	conn := p.Dial()
	e := &env{t: t, ctx: context.Background(), ctrl: csi.NewControllerClient(conn), node: csi.NewNodeClient(conn), tmp: tmp}

	const size = 320 * mib
	create := func(src *csi.VolumeContentSource) string {
		resp, err := e.ctrl.CreateVolume(e.ctx, &csi.CreateVolumeRequest{
			Name: e.name("vol"), CapacityRange: &csi.CapacityRange{RequiredBytes: size},
			VolumeCapabilities: []*csi.VolumeCapability{mountCap}, VolumeContentSource: src,
		})
		e.must("CreateVolume", err)
		return resp.GetVolume().GetVolumeId()
	}
	v := create(nil)
	staging, target := e.stagePublish(v)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var files atomic.Int64
	wg.Go(func() { files.Add(writer(t, target, stop)) })
	for writtenFiles(target) < 20 { // under load
		time.Sleep(10 * time.Millisecond)
	}
	snap, err := e.ctrl.CreateSnapshot(e.ctx, &csi.CreateSnapshotRequest{Name: "snap-busy", SourceVolumeId: v})
	e.must("CreateSnapshot", err)
	clone := create(&csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: v}}})
	close(stop)
	wg.Wait()
	restored := create(&csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshot().GetSnapshotId()}}})
	t.Logf("writer made %d files", files.Load())

	for _, id := range []string{restored, clone} {
		checkExt4Quiesced(t, "/dev/"+vg+"/"+id)
		s, tg := e.stagePublish(id)
		if n := writtenFiles(tg); n == 0 {
			t.Errorf("%s holds none of the writer's files", id)
		}
		e.unpublishUnstage(id, s, tg)
		e.deleteVolume(id)
	}
	e.unpublishUnstage(v, staging, target)
	_, err = e.ctrl.DeleteSnapshot(e.ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshot().GetSnapshotId()})
	e.must("DeleteSnapshot", err)
	e.deleteVolume(v)
}

func checkExt4Quiesced(t *testing.T, dev string) {
	t.Helper()
	if out, err := exec.Command("e2fsck", "-fn", dev).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn %s: %v\n%s", dev, err, out)
	}
	out, err := exec.Command("dumpe2fs", "-h", dev).Output()
	if err != nil {
		t.Fatalf("dumpe2fs -h %s: %v", dev, err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "Filesystem features:") && strings.Contains(l, "needs_recovery") {
			t.Errorf("%s: the journal needs recovery; the snapshot was not taken frozen\n%s", dev, l)
		}
	}
}

// writer creates, writes, fsyncs and deletes files in dir until stop is
// closed, and returns how many it made.
func writer(t testing.TB, dir string, stop <-chan struct{}) int64 {
	buf := make([]byte, 256<<10)
	var n int64
	for {
		select {
		case <-stop:
			return n
		default:
		}
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("f-%06d", n)))
		if err != nil {
			t.Errorf("writer: %v", err)
			return n
		}
		f.Write(buf)
		if n%4 == 0 {
			f.Sync()
		}
		f.Close()
		if n >= 64 {
			os.Remove(filepath.Join(dir, fmt.Sprintf("f-%06d", n-64)))
		}
		n++
	}
}

func writtenFiles(dir string) int {
	entries, _ := os.ReadDir(dir)
	n := 0
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "f-") {
			n++
		}
	}
	return n
}
