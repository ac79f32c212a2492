// Package snapbench measures what a user waits for when snapshotting,
// restoring, cloning and deleting a volume holding 1 GiB of random data,
// through CSI calls to the real cairn binary (internal/testdriver), so
// that the figures include the driver's locking, store transactions and
// mount checks, not only the pool's disk work.
//
// Each pool configuration gets its own throwaway filesystem (internal/
// testfs) and driver:
//
//   - btrfs: the btrfs pool; every operation is a subvolume snapshot or
//     delete, whatever the data.
//   - dir-ext4: the dir pool on ext4; snapshots, restores and clones are
//     sparse copies of the data.
//   - dir-btrfs: the dir pool on btrfs; copies are per-file reflinks.
//
// Sub-benchmarks time one CSI call each: CreateSnapshot, CreateVolume from
// the snapshot (Restore), CreateVolume from the volume (Clone) and
// DeleteVolume (of a clone: on the dir pools a full copy, on btrfs a
// snapshot sharing all extents). Whatever each iteration creates is deleted,
// and DeleteVolume's clone made, outside the timer. Needs root; run with
//
//	go test -run '^$' -bench . -benchtime 5x ./test/snapbench/
//
// -benchtime Nx keeps the untimed 1 GiB copies of the dir-ext4 DeleteVolume
// runs from multiplying while the timed part is quick.
package snapbench

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/cairn-csi/cairn/internal/testdriver"
	"github.com/cairn-csi/cairn/internal/testfs"
)

const (
	gib      = 1 << 30
	dataSize = 1 * gib
	// volumeSize leaves the btrfs qgroup room for metadata above the data.
	volumeSize = 2 * gib
	// fsSize holds the volume, a snapshot and a copy on ext4, with room
	// for the driver's free-space check of a 2 GiB volume.
	fsSize = 8 * gib
)

var configs = []struct {
	name, fs, pool string
}{
	{"btrfs", "btrfs", "btrfs"},
	{"dir-ext4", "ext4", "dir"},
	{"dir-btrfs", "btrfs", "dir"},
}

// env is one driver with a published source volume full of data.
type env struct {
	b      *testing.B
	ctx    context.Context
	ctrl   csi.ControllerClient
	node   csi.NodeClient
	root   string // the pool path
	srcID  string
	sample []byte // the first and last MiB written, to check copies
	n      int    // names issued
}

var mountCap = &csi.VolumeCapability{
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
}

func newEnv(b *testing.B, fsType, pool string) *env {
	b.Helper()
	testfs.RequireRoot(b)
	root := filepath.Join(testfs.New(b, fsType, fsSize), "pool")
	tmp := b.TempDir()
	p := testdriver.Start(b, testdriver.Options{DataDir: filepath.Join(tmp, "data"), Pools: []string{"default=" + pool + ":" + root}})
	conn := p.Dial()
	e := &env{b: b, ctx: context.Background(), ctrl: csi.NewControllerClient(conn), node: csi.NewNodeClient(conn), root: root}

	e.srcID = e.createVolume(nil)
	staging, target := filepath.Join(tmp, "staging"), filepath.Join(tmp, "target")
	if err := os.Mkdir(staging, 0o755); err != nil {
		b.Fatal(err)
	}
	if _, err := e.node.NodeStageVolume(e.ctx, &csi.NodeStageVolumeRequest{VolumeId: e.srcID, StagingTargetPath: staging, VolumeCapability: mountCap}); err != nil {
		b.Fatal(err)
	}
	if _, err := e.node.NodePublishVolume(e.ctx, &csi.NodePublishVolumeRequest{VolumeId: e.srcID, StagingTargetPath: staging, TargetPath: target, VolumeCapability: mountCap}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		e.node.NodeUnpublishVolume(e.ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: e.srcID, TargetPath: target})
		e.node.NodeUnstageVolume(e.ctx, &csi.NodeUnstageVolumeRequest{VolumeId: e.srcID, StagingTargetPath: staging})
	})
	start := time.Now()
	e.sample = writeRandom(b, filepath.Join(target, "data"), dataSize)
	b.Logf("%s pool on %s: wrote and synced %d MiB through the published volume in %v", pool, fsType, dataSize>>20, time.Since(start).Round(time.Millisecond))
	return e
}

// writeRandom fills path with n bytes that neither compress nor dedupe,
// fsyncs it, and returns its first and last MiB.
func writeRandom(b *testing.B, path string, n int64) []byte {
	b.Helper()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	rng := rand.NewChaCha8([32]byte{'c', 'a', 'i', 'r', 'n'})
	buf := make([]byte, 4<<20)
	var sample []byte
	for off := int64(0); off < n; off += int64(len(buf)) {
		rng.Read(buf)
		if off == 0 {
			sample = append(sample, buf[:1<<20]...)
		}
		if off+int64(len(buf)) >= n {
			sample = append(sample, buf[len(buf)-1<<20:]...)
		}
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	return sample
}

func (e *env) name(kind string) string {
	e.n++
	return fmt.Sprintf("bench-%s-%d", kind, e.n)
}

func (e *env) createVolume(src *csi.VolumeContentSource) string {
	e.b.Helper()
	resp, err := e.ctrl.CreateVolume(e.ctx, &csi.CreateVolumeRequest{
		Name:                e.name("vol"),
		CapacityRange:       &csi.CapacityRange{RequiredBytes: volumeSize},
		VolumeCapabilities:  []*csi.VolumeCapability{mountCap},
		VolumeContentSource: src,
	})
	if err != nil {
		e.b.Fatal(err)
	}
	return resp.GetVolume().GetVolumeId()
}

func (e *env) deleteVolume(id string) {
	e.b.Helper()
	if _, err := e.ctrl.DeleteVolume(e.ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		e.b.Fatal(err)
	}
}

func (e *env) createSnapshot() string {
	e.b.Helper()
	resp, err := e.ctrl.CreateSnapshot(e.ctx, &csi.CreateSnapshotRequest{Name: e.name("snap"), SourceVolumeId: e.srcID})
	if err != nil {
		e.b.Fatal(err)
	}
	return resp.GetSnapshot().GetSnapshotId()
}

func (e *env) deleteSnapshot(id string) {
	e.b.Helper()
	if _, err := e.ctrl.DeleteSnapshot(e.ctx, &csi.DeleteSnapshotRequest{SnapshotId: id}); err != nil {
		e.b.Fatal(err)
	}
}

// checkCopy checks, untimed, that a volume made from the source holds its
// data: the same size and the same first and last MiB. Both pool types
// keep a volume at <pool>/volumes/<id>.
func (e *env) checkCopy(id string) {
	e.b.Helper()
	f, err := os.Open(filepath.Join(e.root, "volumes", id, "data"))
	if err != nil {
		e.b.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Size() != dataSize {
		e.b.Fatalf("copy %s: size %v, %v; want %d", id, fi.Size(), err, dataSize)
	}
	got := make([]byte, 2<<20)
	if _, err := f.ReadAt(got[:1<<20], 0); err != nil {
		e.b.Fatal(err)
	}
	if _, err := f.ReadAt(got[1<<20:], dataSize-1<<20); err != nil {
		e.b.Fatal(err)
	}
	if !bytes.Equal(got, e.sample) {
		e.b.Fatalf("copy %s does not hold the source's data", id)
	}
}

func snapshotSource(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
}

func volumeSource(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}}
}

// BenchmarkSnapshot1GiB: see the package comment.
func BenchmarkSnapshot1GiB(b *testing.B) {
	for _, cfg := range configs {
		b.Run(cfg.name, func(b *testing.B) {
			e := newEnv(b, cfg.fs, cfg.pool)
			b.Run("CreateSnapshot", func(b *testing.B) {
				e.b = b
				for range b.N {
					id := e.createSnapshot()
					b.StopTimer()
					e.deleteSnapshot(id)
					b.StartTimer()
				}
			})
			b.Run("Restore", func(b *testing.B) {
				e.b = b
				b.StopTimer()
				snap := e.createSnapshot()
				defer e.deleteSnapshot(snap)
				for i := range b.N {
					b.StartTimer()
					id := e.createVolume(snapshotSource(snap))
					b.StopTimer()
					if i == 0 {
						e.checkCopy(id)
					}
					e.deleteVolume(id)
				}
			})
			b.Run("Clone", func(b *testing.B) {
				e.b = b
				for i := range b.N {
					id := e.createVolume(volumeSource(e.srcID))
					b.StopTimer()
					if i == 0 {
						e.checkCopy(id)
					}
					e.deleteVolume(id)
					b.StartTimer()
				}
			})
			b.Run("DeleteVolume", func(b *testing.B) {
				e.b = b
				for range b.N {
					b.StopTimer()
					id := e.createVolume(volumeSource(e.srcID))
					b.StartTimer()
					e.deleteVolume(id)
				}
			})
		})
	}
}
