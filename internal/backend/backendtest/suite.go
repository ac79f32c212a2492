// Package backendtest owns the one test suite every pool type must pass.
// A pool's test file is essentially one call:
//
//	func TestSuite(t *testing.T) {
//		backendtest.Run(t, func(t *testing.T) backend.Backend { ... })
//	}
//
// The suite exercises the Backend contract and, by type assertion, every
// optional capability the pool implements: snapshots, restore and clone,
// expansion, block access. It checks the crash-safety protocol directly:
// a failing commit leaves nothing behind, a crash leftover is removed by
// Reconcile, and nothing outside the pool's path is touched.
package backendtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/errdefs"
)

// Factory makes a fresh, empty pool for one subtest, and returns it with
// its root path (so the suite can check that nothing escapes it).
type Factory func(t *testing.T) (b backend.Backend, root string)

const mib = 1 << 20

var errCommit = errors.New("injected commit failure")

// Options adapt the suite to pools whose entries are not files in a
// directory (LVM: logical volumes, whose device nodes the root lists).
type Options struct {
	// Leftover makes what a crash leaves of an in-flight create or delete:
	// an entry called name (staging.NewPrefix or staging.RmPrefix and an
	// ID) beside the pool's volumes, which must appear in
	// filepath.Dir(volumeSource) under that name until Reconcile removes
	// it. nil: an empty directory there.
	Leftover func(t *testing.T, b backend.Backend, name string)
}

// Run runs the suite.
func Run(t *testing.T, newPool Factory) { RunWith(t, newPool, Options{}) }

// RunWith runs the suite with options.
func RunWith(t *testing.T, newPool Factory, opts Options) {
	tests := []struct {
		name string
		fn   func(t *testing.T, b backend.Backend, root string)
	}{
		{"CreateSourceDelete", testCreateSourceDelete},
		{"CreateIdempotent", testCreateIdempotent},
		{"DeleteMissing", testDeleteMissing},
		{"CommitFailureRollsBack", testCommitFailure},
		{"ReconcileRemovesLeftovers", func(t *testing.T, b backend.Backend, root string) { testReconcile(t, b, root, opts) }},
		{"CapacityAndUsage", testCapacity},
		{"Snapshots", testSnapshots},
		{"RestoreAndClone", testRestoreAndClone},
		{"DeleteVolumeKeepsSnapshots", testDeleteKeepsSnapshots},
		{"Expand", testExpand},
		{"BlockAccess", testBlock},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, root := newPool(t)
			outside := guardOutside(t, root)
			tc.fn(t, b, root)
			outside(t)
		})
	}
}

// guardOutside plants a sentinel next to the pool and checks afterwards
// that it is untouched: a pool must never reach outside its path.
func guardOutside(t *testing.T, root string) func(*testing.T) {
	sentinel := filepath.Join(filepath.Dir(root), "outside-sentinel")
	if err := os.WriteFile(sentinel, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	return func(t *testing.T) {
		b, err := os.ReadFile(sentinel)
		if err != nil || string(b) != "keep" {
			t.Errorf("file outside the pool was touched: %v %q", err, b)
		}
		os.Remove(sentinel)
	}
}

func commitOK(backend.Volume) error { return nil }

func create(t *testing.T, b backend.Backend, id string, size int64) backend.Volume {
	t.Helper()
	v, err := b.CreateVolume(context.Background(), id, backend.Spec{CapacityBytes: size}, commitOK)
	if err != nil {
		t.Fatalf("CreateVolume(%s): %v", id, err)
	}
	if v.ID != id || v.CapacityBytes < size {
		t.Fatalf("CreateVolume(%s, %d) = %+v", id, size, v)
	}
	return v
}

// writeData puts data into a volume in the way its source kind allows:
// a file in a directory, or raw bytes at the start of an image.
func writeData(t *testing.T, b backend.Backend, id string, data []byte) {
	t.Helper()
	src, err := b.Source(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	switch src.Kind {
	case backend.SourceDirectory:
		if err := os.WriteFile(filepath.Join(src.Path, "data"), data, 0o644); err != nil {
			t.Fatal(err)
		}
	default:
		f, err := os.OpenFile(src.Path, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(data, 0); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func readData(t *testing.T, src backend.Source, n int) []byte {
	t.Helper()
	if src.Kind == backend.SourceDirectory {
		b, err := os.ReadFile(filepath.Join(src.Path, "data"))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	f, err := os.Open(src.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	return buf
}

func randomData(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// entries lists everything under root's first two levels, for "nothing
// left behind" checks.
func entries(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	top, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range top {
		out = append(out, e.Name())
		if e.IsDir() {
			sub, err := os.ReadDir(filepath.Join(root, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range sub {
				if s.Name()[0] == '.' {
					continue
				}
				out = append(out, e.Name()+"/"+s.Name())
			}
		}
	}
	sort.Strings(out)
	return out
}

func testCreateSourceDelete(t *testing.T, b backend.Backend, root string) {
	ctx := context.Background()
	before := entries(t, root)
	create(t, b, "vol-a", 16*mib)
	src, err := b.Source(ctx, "vol-a")
	if err != nil {
		t.Fatal(err)
	}
	if rel, err := filepath.Rel(root, src.Path); err != nil || rel == ".." || filepath.IsAbs(rel) || len(rel) > 1 && rel[:2] == ".." {
		t.Fatalf("source %s is outside the pool %s", src.Path, root)
	}
	data := randomData(t, 64*1024)
	writeData(t, b, "vol-a", data)
	if got := readData(t, src, len(data)); !bytes.Equal(got, data) {
		t.Fatal("data read back differs")
	}
	committed := false
	if err := b.DeleteVolume(ctx, "vol-a", func() error { committed = true; return nil }); err != nil {
		t.Fatal(err)
	}
	if !committed {
		t.Fatal("DeleteVolume did not commit")
	}
	if _, err := b.Source(ctx, "vol-a"); !errdefs.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Source after delete: %v, want ErrNotFound", err)
	}
	if after := entries(t, root); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("pool not back to its state before create:\nbefore %v\nafter  %v", before, after)
	}
}

func testCreateIdempotent(t *testing.T, b backend.Backend, root string) {
	ctx := context.Background()
	create(t, b, "vol-a", 16*mib)
	data := randomData(t, 4096)
	writeData(t, b, "vol-a", data)
	// A retry (after a crash between rename and commit, say) must commit
	// again and keep the data.
	commits := 0
	v, err := b.CreateVolume(ctx, "vol-a", backend.Spec{CapacityBytes: 16 * mib}, func(backend.Volume) error { commits++; return nil })
	if err != nil || commits != 1 || v.ID != "vol-a" {
		t.Fatalf("repeated CreateVolume = %+v, %v, commits %d", v, err, commits)
	}
	src, _ := b.Source(ctx, "vol-a")
	if !bytes.Equal(readData(t, src, len(data)), data) {
		t.Fatal("repeated CreateVolume lost the data")
	}
}

func testDeleteMissing(t *testing.T, b backend.Backend, root string) {
	committed := false
	if err := b.DeleteVolume(context.Background(), "vol-missing", func() error { committed = true; return nil }); err != nil {
		t.Fatalf("DeleteVolume(missing) = %v, want nil", err)
	}
	if !committed {
		t.Fatal("DeleteVolume(missing) must still commit, so the store converges")
	}
}

func testCommitFailure(t *testing.T, b backend.Backend, root string) {
	ctx := context.Background()
	before := entries(t, root)
	_, err := b.CreateVolume(ctx, "vol-a", backend.Spec{CapacityBytes: 16 * mib}, func(backend.Volume) error { return errCommit })
	if !errors.Is(err, errCommit) {
		t.Fatalf("CreateVolume with failing commit = %v, want the commit error", err)
	}
	if _, err := b.Source(ctx, "vol-a"); !errdefs.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("a volume whose commit failed still exists: %v", err)
	}
	if after := entries(t, root); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("failed create left something behind:\nbefore %v\nafter  %v", before, after)
	}

	create(t, b, "vol-b", 16*mib)
	data := randomData(t, 4096)
	writeData(t, b, "vol-b", data)
	if err := b.DeleteVolume(ctx, "vol-b", func() error { return errCommit }); !errors.Is(err, errCommit) {
		t.Fatalf("DeleteVolume with failing commit = %v, want the commit error", err)
	}
	src, err := b.Source(ctx, "vol-b")
	if err != nil {
		t.Fatalf("a volume whose delete did not commit is gone: %v", err)
	}
	if !bytes.Equal(readData(t, src, len(data)), data) {
		t.Fatal("a volume whose delete did not commit lost its data")
	}
}

func testReconcile(t *testing.T, b backend.Backend, root string, opts Options) {
	ctx := context.Background()
	create(t, b, "vol-keep", 16*mib)
	create(t, b, "vol-unknown", 16*mib)
	keep := randomData(t, 4096)
	writeData(t, b, "vol-keep", keep)
	// Simulate crash leftovers next to the real entries.
	src, _ := b.Source(ctx, "vol-keep")
	dir := filepath.Dir(src.Path)
	for _, name := range []string{"new-vol-x", "rm-vol-y"} {
		if opts.Leftover != nil {
			opts.Leftover(t, b, name)
			continue
		}
		if err := os.Mkdir(filepath.Join(dir, name), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := b.Reconcile(ctx, backend.Inventory{
		Volumes:   map[string]bool{"vol-keep": true, "vol-gone": true},
		Snapshots: map[string]bool{},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Errors) > 0 {
		t.Fatalf("reconcile errors: %v", rep.Errors)
	}
	for _, name := range []string{"new-vol-x", "rm-vol-y"} {
		if _, err := os.Lstat(filepath.Join(dir, name)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("leftover %s survived reconcile", name)
		}
	}
	if _, err := b.Source(ctx, "vol-unknown"); !errdefs.Is(err, errdefs.ErrNotFound) {
		t.Errorf("volume unknown to the store survived reconcile: %v", err)
	}
	if src, err := b.Source(ctx, "vol-keep"); err != nil || !bytes.Equal(readData(t, src, len(keep)), keep) {
		t.Errorf("known volume damaged by reconcile: %v", err)
	}
	if fmt.Sprint(rep.Missing) != "[vol-gone]" {
		t.Errorf("reconcile Missing = %v, want [vol-gone]", rep.Missing)
	}
	if len(rep.Removed) < 3 {
		t.Errorf("reconcile Removed = %v, want the two leftovers and the unknown volume", rep.Removed)
	}
}

func testCapacity(t *testing.T, b backend.Backend, root string) {
	ctx := context.Background()
	c, err := b.Capacity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c.TotalBytes <= 0 || c.AvailableBytes <= 0 || c.AvailableBytes > c.TotalBytes || c.MaxVolumeBytes <= 0 {
		t.Fatalf("implausible capacity %+v", c)
	}
	if err := b.Check(ctx); err != nil {
		t.Fatalf("Check on a fresh pool: %v", err)
	}
	create(t, b, "vol-a", 16*mib)
	writeData(t, b, "vol-a", randomData(t, 2*mib))
	u, err := b.Usage(ctx, "vol-a")
	if err != nil {
		t.Fatal(err)
	}
	if u.TotalBytes <= 0 || u.UsedBytes < 0 || u.AvailableBytes < 0 {
		t.Fatalf("implausible usage %+v", u)
	}
	if c.Enforced && u.TotalBytes > 64*mib {
		t.Errorf("pool enforces sizes but reports %d total bytes for a 16 MiB volume", u.TotalBytes)
	}
	if _, err := b.Usage(ctx, "vol-missing"); !errdefs.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Usage(missing) = %v, want ErrNotFound", err)
	}
}

func snapshotter(t *testing.T, b backend.Backend) backend.Snapshotter {
	sn, ok := b.(backend.Snapshotter)
	if !ok {
		t.Skipf("pool type %s does not implement backend.Snapshotter", b.Type())
	}
	return sn
}

func snapshot(t *testing.T, sn backend.Snapshotter, snapID, volID string) backend.Snapshot {
	t.Helper()
	committed := false
	s, err := sn.CreateSnapshot(context.Background(), snapID, volID, func(backend.Snapshot) error { committed = true; return nil })
	if err != nil || !committed {
		t.Fatalf("CreateSnapshot(%s of %s) = %v, committed %t", snapID, volID, err, committed)
	}
	return s
}

func testSnapshots(t *testing.T, b backend.Backend, root string) {
	sn := snapshotter(t, b)
	ctx := context.Background()
	create(t, b, "vol-a", 16*mib)
	before := randomData(t, 64*1024)
	writeData(t, b, "vol-a", before)
	s := snapshot(t, sn, "snap-1", "vol-a")
	if s.SizeBytes < 0 {
		t.Fatalf("snapshot size %d", s.SizeBytes)
	}
	// Changing the volume must not change the snapshot.
	writeData(t, b, "vol-a", randomData(t, 64*1024))
	if _, err := sn.CreateSnapshot(ctx, "snap-2", "vol-missing", func(backend.Snapshot) error { return nil }); !errdefs.Is(err, errdefs.ErrNotFound) {
		t.Errorf("snapshot of a missing volume = %v, want ErrNotFound", err)
	}
	// Restore shows the old data (checked through ContentCreator when
	// available; otherwise the snapshot must at least delete cleanly).
	if cc, ok := b.(backend.ContentCreator); ok {
		if _, err := cc.CreateVolumeFrom(ctx, "vol-r", backend.Spec{CapacityBytes: 16 * mib}, backend.ContentSource{SnapshotID: "snap-1"}, commitOK); err != nil {
			t.Fatal(err)
		}
		src, _ := b.Source(ctx, "vol-r")
		if !bytes.Equal(readData(t, src, len(before)), before) {
			t.Fatal("restored volume does not hold the data at snapshot time")
		}
	}
	// A failed commit leaves no snapshot.
	if _, err := sn.CreateSnapshot(ctx, "snap-3", "vol-a", func(backend.Snapshot) error { return errCommit }); !errors.Is(err, errCommit) {
		t.Fatalf("CreateSnapshot with failing commit = %v", err)
	}
	rep, err := b.Reconcile(ctx, backend.Inventory{
		Volumes:   map[string]bool{"vol-a": true, "vol-r": true},
		Snapshots: map[string]bool{"snap-1": true},
	})
	if err != nil || len(rep.Removed) != 0 || len(rep.Missing) != 0 {
		t.Fatalf("reconcile after a failed snapshot commit: %+v %v (want nothing to do)", rep, err)
	}
	committed := false
	if err := sn.DeleteSnapshot(ctx, "snap-1", func() error { committed = true; return nil }); err != nil || !committed {
		t.Fatalf("DeleteSnapshot = %v, committed %t", err, committed)
	}
	if err := sn.DeleteSnapshot(ctx, "snap-1", func() error { return nil }); err != nil {
		t.Fatalf("DeleteSnapshot(missing) = %v, want nil", err)
	}
}

func testRestoreAndClone(t *testing.T, b backend.Backend, root string) {
	cc, isCC := b.(backend.ContentCreator)
	if !isCC {
		t.Skipf("pool type %s does not implement backend.ContentCreator", b.Type())
	}
	ctx := context.Background()
	create(t, b, "vol-a", 16*mib)
	data := randomData(t, 256*1024)
	writeData(t, b, "vol-a", data)
	c, err := cc.CreateVolumeFrom(ctx, "vol-c", backend.Spec{CapacityBytes: 32 * mib}, backend.ContentSource{VolumeID: "vol-a"}, commitOK)
	if err != nil {
		t.Fatal(err)
	}
	if c.CapacityBytes < 32*mib {
		t.Errorf("clone capacity %d, want at least the requested 32 MiB", c.CapacityBytes)
	}
	src, _ := b.Source(ctx, "vol-c")
	if !bytes.Equal(readData(t, src, len(data)), data) {
		t.Fatal("clone does not hold the source's data")
	}
	// The clone is independent of its source.
	writeData(t, b, "vol-c", randomData(t, len(data)))
	srcA, _ := b.Source(ctx, "vol-a")
	if !bytes.Equal(readData(t, srcA, len(data)), data) {
		t.Fatal("writing the clone changed the source")
	}
	if _, err := cc.CreateVolumeFrom(ctx, "vol-d", backend.Spec{CapacityBytes: 16 * mib}, backend.ContentSource{VolumeID: "vol-missing"}, commitOK); !errdefs.Is(err, errdefs.ErrNotFound) {
		t.Errorf("clone of a missing volume = %v, want ErrNotFound", err)
	}
	if _, err := cc.CreateVolumeFrom(ctx, "vol-e", backend.Spec{CapacityBytes: 16 * mib}, backend.ContentSource{SnapshotID: "snap-missing"}, commitOK); !errdefs.Is(err, errdefs.ErrNotFound) {
		t.Errorf("restore of a missing snapshot = %v, want ErrNotFound", err)
	}
}

func testDeleteKeepsSnapshots(t *testing.T, b backend.Backend, root string) {
	sn := snapshotter(t, b)
	cc, isCC := b.(backend.ContentCreator)
	ctx := context.Background()
	create(t, b, "vol-a", 16*mib)
	data := randomData(t, 64*1024)
	writeData(t, b, "vol-a", data)
	snapshot(t, sn, "snap-1", "vol-a")
	if err := b.DeleteVolume(ctx, "vol-a", func() error { return nil }); err != nil {
		t.Fatalf("deleting a volume that has snapshots: %v", err)
	}
	if !isCC {
		return
	}
	if _, err := cc.CreateVolumeFrom(ctx, "vol-r", backend.Spec{CapacityBytes: 16 * mib}, backend.ContentSource{SnapshotID: "snap-1"}, commitOK); err != nil {
		t.Fatalf("restore after the source volume was deleted: %v", err)
	}
	src, _ := b.Source(ctx, "vol-r")
	if !bytes.Equal(readData(t, src, len(data)), data) {
		t.Fatal("snapshot lost its data when its source volume was deleted")
	}
}

func testExpand(t *testing.T, b backend.Backend, root string) {
	ex, isEx := b.(backend.Expander)
	if !isEx {
		t.Skipf("pool type %s does not implement backend.Expander", b.Type())
	}
	ctx := context.Background()
	create(t, b, "vol-a", 16*mib)
	data := randomData(t, 64*1024)
	writeData(t, b, "vol-a", data)
	got, err := ex.ExpandVolume(ctx, "vol-a", 48*mib)
	if err != nil || got < 48*mib {
		t.Fatalf("ExpandVolume(48 MiB) = %d, %v", got, err)
	}
	again, err := ex.ExpandVolume(ctx, "vol-a", 16*mib)
	if err != nil || again < 48*mib {
		t.Fatalf("ExpandVolume to a smaller size = %d, %v; volumes never shrink", again, err)
	}
	src, _ := b.Source(ctx, "vol-a")
	if !bytes.Equal(readData(t, src, len(data)), data) {
		t.Fatal("expansion lost data")
	}
	if _, err := ex.ExpandVolume(ctx, "vol-missing", 48*mib); !errdefs.Is(err, errdefs.ErrNotFound) {
		t.Errorf("ExpandVolume(missing) = %v, want ErrNotFound", err)
	}
}

func testBlock(t *testing.T, b backend.Backend, root string) {
	ctx := context.Background()
	spec := backend.Spec{CapacityBytes: 16 * mib, AccessType: backend.AccessBlock}
	if !backend.SupportsBlock(b) {
		_, err := b.CreateVolume(ctx, "vol-blk", spec, commitOK)
		if !errdefs.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("block volume on a pool without block support = %v, want ErrInvalidArgument", err)
		}
		return
	}
	v, err := b.CreateVolume(ctx, "vol-blk", spec, commitOK)
	if err != nil || v.CapacityBytes < spec.CapacityBytes {
		t.Fatalf("block CreateVolume = %+v, %v", v, err)
	}
	src, err := b.Source(ctx, "vol-blk")
	if err != nil || src.Kind == backend.SourceDirectory {
		t.Fatalf("block volume source = %+v, %v; want a device or image", src, err)
	}
}
