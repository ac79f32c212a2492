//go:build linux

package imagepool_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/backend/backendtest"
	"github.com/cairn-csi/cairn/internal/backend/imagepool"
	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/testfs"
)

const mib = 1 << 20

func newPool(t testing.TB, root string) *imagepool.Pool {
	t.Helper()
	p, err := imagepool.New(context.Background(), root, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// filesystems are the pool filesystems the root tests run on: two that
// share extents (snapshots are reflinks) and one that does not (sparse
// copies).
var filesystems = []struct {
	fstype   string
	mkfsArgs []string
	reflink  bool
}{
	{"ext4", nil, false},
	{"btrfs", nil, true},
	{"xfs-noquota", []string{"-m", "reflink=1"}, true},
}

// TestSuite runs the shared backend suite on a plain temporary directory
// and, as root, on each of the filesystems above.
func TestSuite(t *testing.T) {
	t.Run("tmpdir", func(t *testing.T) {
		backendtest.Run(t, func(t *testing.T) (backend.Backend, string) {
			root := filepath.Join(t.TempDir(), "pool")
			return newPool(t, root), root
		})
	})
	for _, fs := range filesystems {
		t.Run(fs.fstype, func(t *testing.T) {
			testfs.RequireRoot(t)
			mnt := testfs.New(t, fs.fstype, 512*mib, fs.mkfsArgs...)
			n := 0
			backendtest.Run(t, func(t *testing.T) (backend.Backend, string) {
				n++
				root := filepath.Join(mnt, "pool", fmt.Sprint(n))
				return newPool(t, root), root
			})
		})
	}
}

func commitOK(backend.Volume) error { return nil }

func TestCreateVolumeSizes(t *testing.T) {
	tests := []struct {
		name    string
		spec    backend.Spec
		want    int64
		wantErr error
	}{
		{"whole MiB kept", backend.Spec{CapacityBytes: 16 * mib}, 16 * mib, nil},
		{"rounded up to MiB", backend.Spec{CapacityBytes: 16*mib + 1}, 17 * mib, nil},
		{"zero is the minimum", backend.Spec{}, mib, nil},
		{"below the minimum", backend.Spec{CapacityBytes: 4096}, mib, nil},
		{"rounded within the limit", backend.Spec{CapacityBytes: 3*mib - 7, LimitBytes: 3 * mib}, 3 * mib, nil},
		{"rounding would pass the limit", backend.Spec{CapacityBytes: 3*mib - 7, LimitBytes: 3*mib - 1}, 0, errdefs.ErrOutOfRange},
		{"block access", backend.Spec{CapacityBytes: 8 * mib, AccessType: backend.AccessBlock}, 8 * mib, nil},
		{"too large for a file", backend.Spec{CapacityBytes: 1<<63 - 1}, 0, errdefs.ErrOutOfRange},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newPool(t, filepath.Join(t.TempDir(), "pool"))
			v, err := p.CreateVolume(context.Background(), "vol-1", tc.spec, commitOK)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("CreateVolume(%+v) error = %v, want %v", tc.spec, err, tc.wantErr)
			}
			if err != nil {
				if _, err := p.Source(context.Background(), "vol-1"); !errdefs.Is(err, errdefs.ErrNotFound) {
					t.Errorf("a refused create left a volume behind: %v", err)
				}
				return
			}
			if v.CapacityBytes != tc.want {
				t.Errorf("capacity = %d, want %d", v.CapacityBytes, tc.want)
			}
			src, err := p.Source(context.Background(), "vol-1")
			if err != nil || src.Kind != backend.SourceImageFile {
				t.Fatalf("Source = %+v, %v; want an image file", src, err)
			}
			var st unix.Stat_t
			if err := unix.Stat(src.Path, &st); err != nil {
				t.Fatal(err)
			}
			if st.Size != tc.want || st.Mode&0o777 != 0o600 {
				t.Errorf("image is %d bytes, mode %o; want %d bytes, mode 600", st.Size, st.Mode&0o777, tc.want)
			}
			if st.Blocks != 0 {
				t.Errorf("a new image has %d blocks allocated; want a sparse file", st.Blocks)
			}
		})
	}
}

func TestCreateVolumeRetry(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		retry   backend.Spec
		want    int64
		wantErr error
	}{
		{"same spec", backend.Spec{CapacityBytes: 16 * mib}, 16 * mib, nil},
		{"smaller request", backend.Spec{CapacityBytes: 8 * mib}, 16 * mib, nil},
		{"larger request", backend.Spec{CapacityBytes: 32 * mib}, 0, errdefs.ErrAlreadyExists},
		{"limit below the image", backend.Spec{CapacityBytes: 8 * mib, LimitBytes: 12 * mib}, 0, errdefs.ErrAlreadyExists},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newPool(t, filepath.Join(t.TempDir(), "pool"))
			if _, err := p.CreateVolume(ctx, "vol-1", backend.Spec{CapacityBytes: 16 * mib}, commitOK); err != nil {
				t.Fatal(err)
			}
			committed := false
			v, err := p.CreateVolume(ctx, "vol-1", tc.retry, func(backend.Volume) error { committed = true; return nil })
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("retried CreateVolume(%+v) = %v, want %v", tc.retry, err, tc.wantErr)
			}
			if err == nil && (v.CapacityBytes != tc.want || !committed) {
				t.Errorf("retried CreateVolume = %+v, committed %t; want %d bytes, committed", v, committed, tc.want)
			}
		})
	}
}

func TestExpandVolume(t *testing.T) {
	ctx := context.Background()
	p := newPool(t, filepath.Join(t.TempDir(), "pool"))
	if _, err := p.CreateVolume(ctx, "vol-1", backend.Spec{CapacityBytes: 16 * mib}, commitOK); err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		ask, want int64
	}{
		{20*mib + 1, 21 * mib}, // rounded up
		{21 * mib, 21 * mib},   // no change
		{4 * mib, 21 * mib},    // never shrinks
		{64 * mib, 64 * mib},
	} {
		got, err := p.ExpandVolume(ctx, "vol-1", step.ask)
		if err != nil || got != step.want {
			t.Fatalf("ExpandVolume(%d) = %d, %v; want %d", step.ask, got, err, step.want)
		}
		u, err := p.Usage(ctx, "vol-1")
		if err != nil || u.TotalBytes != step.want {
			t.Fatalf("after ExpandVolume(%d): usage %+v, %v; want %d total", step.ask, u, err, step.want)
		}
	}
}

func writeAt(t testing.TB, path string, off int64, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func readAt(t testing.TB, path string, off int64, n int) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, off); err != nil {
		t.Fatal(err)
	}
	return buf
}

func random(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestUsageIsAllocation checks that Usage reports the image's allocated
// blocks, not the filesystem inside, which only the node can see.
func TestUsageIsAllocation(t *testing.T) {
	ctx := context.Background()
	p := newPool(t, filepath.Join(t.TempDir(), "pool"))
	if _, err := p.CreateVolume(ctx, "vol-1", backend.Spec{CapacityBytes: 64 * mib}, commitOK); err != nil {
		t.Fatal(err)
	}
	src, _ := p.Source(ctx, "vol-1")
	writeAt(t, src.Path, 8*mib, random(t, 2*mib))
	u, err := p.Usage(ctx, "vol-1")
	if err != nil {
		t.Fatal(err)
	}
	// At least what was written; well below the size, since the rest is a
	// hole (a filesystem may round allocation up a little).
	if u.TotalBytes != 64*mib || u.UsedBytes < 2*mib || u.UsedBytes > 4*mib || u.AvailableBytes != u.TotalBytes-u.UsedBytes {
		t.Errorf("usage %+v; want 64 MiB total, 2-4 MiB used, the rest available", u)
	}
	c, err := p.Capacity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Enforced || c.MaxVolumeBytes != c.AvailableBytes {
		t.Errorf("capacity %+v; want enforced sizes, and the free space as the largest volume", c)
	}
}

func TestSnapshotIsReadOnlyAndOfOneVolume(t *testing.T) {
	ctx := context.Background()
	p := newPool(t, filepath.Join(t.TempDir(), "pool"))
	for _, id := range []string{"vol-1", "vol-2"} {
		if _, err := p.CreateVolume(ctx, id, backend.Spec{CapacityBytes: 8 * mib}, commitOK); err != nil {
			t.Fatal(err)
		}
	}
	snapOK := func(backend.Snapshot) error { return nil }
	s, err := p.CreateSnapshot(ctx, "snap-1", "vol-1", snapOK)
	if err != nil {
		t.Fatal(err)
	}
	if s.SizeBytes != 8*mib || s.VolumeID != "vol-1" || s.CreatedAt.IsZero() {
		t.Errorf("snapshot %+v; want 8 MiB of vol-1 with a creation time", s)
	}
	fi, err := os.Stat(filepath.Join(filepath.Dir(filepath.Dir(mustSource(t, p, "vol-1"))), "snapshots", "snap-1"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o400 {
		t.Errorf("snapshot mode %o, want 400", fi.Mode().Perm())
	}
	again, err := p.CreateSnapshot(ctx, "snap-1", "vol-1", snapOK)
	if err != nil || again.SizeBytes != s.SizeBytes || !again.CreatedAt.Equal(s.CreatedAt) {
		t.Errorf("retried CreateSnapshot = %+v, %v; want %+v", again, err, s)
	}
	if _, err := p.CreateSnapshot(ctx, "snap-1", "vol-2", snapOK); !errdefs.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("CreateSnapshot(snap-1 of another volume) = %v, want ErrAlreadyExists", err)
	}
}

func mustSource(t testing.TB, p *imagepool.Pool, id string) string {
	t.Helper()
	src, err := p.Source(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return src.Path
}

// TestRestoreGrowsAndIsWritable restores a snapshot (mode 0400) into a
// larger volume: the new image is writable, longer, and holds the data.
func TestRestoreGrowsAndIsWritable(t *testing.T) {
	ctx := context.Background()
	p := newPool(t, filepath.Join(t.TempDir(), "pool"))
	if _, err := p.CreateVolume(ctx, "vol-1", backend.Spec{CapacityBytes: 8 * mib}, commitOK); err != nil {
		t.Fatal(err)
	}
	data := random(t, 64<<10)
	writeAt(t, mustSource(t, p, "vol-1"), 7*mib, data)
	if _, err := p.CreateSnapshot(ctx, "snap-1", "vol-1", func(backend.Snapshot) error { return nil }); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		spec    backend.Spec
		src     backend.ContentSource
		want    int64
		wantErr error
	}{
		{"restore, same size", backend.Spec{CapacityBytes: 8 * mib}, backend.ContentSource{SnapshotID: "snap-1"}, 8 * mib, nil},
		{"restore, larger", backend.Spec{CapacityBytes: 20*mib + 1}, backend.ContentSource{SnapshotID: "snap-1"}, 21 * mib, nil},
		{"restore, smaller request", backend.Spec{CapacityBytes: mib}, backend.ContentSource{SnapshotID: "snap-1"}, 8 * mib, nil},
		{"clone, larger", backend.Spec{CapacityBytes: 32 * mib}, backend.ContentSource{VolumeID: "vol-1"}, 32 * mib, nil},
		{"limit below the source", backend.Spec{CapacityBytes: mib, LimitBytes: 4 * mib}, backend.ContentSource{VolumeID: "vol-1"}, 0, errdefs.ErrOutOfRange},
		{"both sources", backend.Spec{CapacityBytes: mib}, backend.ContentSource{VolumeID: "vol-1", SnapshotID: "snap-1"}, 0, errdefs.ErrInvalidArgument},
		{"no source", backend.Spec{CapacityBytes: mib}, backend.ContentSource{}, 0, errdefs.ErrInvalidArgument},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := fmt.Sprintf("vol-r%d", i)
			v, err := p.CreateVolumeFrom(ctx, id, tc.spec, tc.src, commitOK)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("CreateVolumeFrom = %v, want %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			path := mustSource(t, p, id)
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if v.CapacityBytes != tc.want || fi.Size() != tc.want || fi.Mode().Perm() != 0o600 {
				t.Errorf("volume %+v, image %d bytes mode %o; want %d bytes, mode 600", v, fi.Size(), fi.Mode().Perm(), tc.want)
			}
			if !bytes.Equal(readAt(t, path, 7*mib, len(data)), data) {
				t.Error("the copy does not hold the source's data")
			}
		})
	}
}

func TestVolumeForImage(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	p := newPool(t, real)
	link := filepath.Join(dir, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	viaLink := newPool(t, link) // the kernel reports the resolved path
	tests := []struct {
		name   string
		pool   *imagepool.Pool
		path   string
		wantID string
		wantOK bool
	}{
		{"volume", p, real + "/volumes/vol-1", "vol-1", true},
		{"unclean path", p, real + "//volumes/./vol-1", "vol-1", true},
		{"being removed", p, real + "/volumes/rm-vol-1", "vol-1", true},
		{"being created", p, real + "/volumes/new-vol-1", "vol-1", true},
		{"snapshot", p, real + "/snapshots/snap-1", "", false},
		{"deeper", p, real + "/volumes/x/vol-1", "", false},
		{"the directory", p, real + "/volumes", "", false},
		{"hidden", p, real + "/volumes/.tmp", "", false},
		{"another pool", p, dir + "/other/volumes/vol-1", "", false},
		{"resolved path of a symlinked pool", viaLink, real + "/volumes/vol-1", "vol-1", true},
		{"configured path of a symlinked pool", viaLink, link + "/volumes/vol-1", "vol-1", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id, ok := tc.pool.VolumeForImage(tc.path)
			if id != tc.wantID || ok != tc.wantOK {
				t.Errorf("VolumeForImage(%q) = %q, %t; want %q, %t", tc.path, id, ok, tc.wantID, tc.wantOK)
			}
		})
	}
}

func TestNewRejectsRelativePath(t *testing.T) {
	if _, err := imagepool.New(context.Background(), "relative/pool", nil); !errdefs.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("New(relative) = %v, want ErrInvalidArgument", err)
	}
}

// TestCopiesOnFilesystems checks how snapshots and clones are made on each
// filesystem: sharing the source's extents where the filesystem can
// (FIEMAP reports them shared), a sparse copy elsewhere, and independent
// of the source either way.
func TestCopiesOnFilesystems(t *testing.T) {
	testfs.RequireRoot(t)
	ctx := context.Background()
	for _, fs := range filesystems {
		t.Run(fs.fstype, func(t *testing.T) {
			mnt := testfs.New(t, fs.fstype, 512*mib, fs.mkfsArgs...)
			p := newPool(t, filepath.Join(mnt, "pool"))
			if _, err := p.CreateVolume(ctx, "vol-1", backend.Spec{CapacityBytes: 64 * mib}, commitOK); err != nil {
				t.Fatal(err)
			}
			vol := mustSource(t, p, "vol-1")
			data := random(t, 4*mib)
			writeAt(t, vol, 16*mib, data)
			if _, err := p.CreateSnapshot(ctx, "snap-1", "vol-1", func(backend.Snapshot) error { return nil }); err != nil {
				t.Fatal(err)
			}
			if _, err := p.CreateVolumeFrom(ctx, "vol-2", backend.Spec{CapacityBytes: 128 * mib}, backend.ContentSource{SnapshotID: "snap-1"}, commitOK); err != nil {
				t.Fatal(err)
			}
			snap := filepath.Join(mnt, "pool", "snapshots", "snap-1")
			restored := mustSource(t, p, "vol-2")
			for _, path := range []string{snap, restored} {
				ext := fiemap(t, path)
				var bytesData int64
				shared := true
				for _, e := range ext {
					bytesData += int64(e.length)
					shared = shared && e.flags&fiemapExtentShared != 0
				}
				if bytesData < int64(len(data)) || bytesData > 8*mib {
					t.Errorf("%s has %d bytes in extents; want the 4 MiB written and the holes kept", filepath.Base(path), bytesData)
				}
				if shared != fs.reflink {
					t.Errorf("%s: extents shared with the source = %t, want %t (reflink filesystem: %t)", filepath.Base(path), shared, fs.reflink, fs.reflink)
				}
			}
			// Overwrite the volume: the snapshot and the restored volume keep
			// the old data.
			writeAt(t, vol, 16*mib, random(t, len(data)))
			for _, path := range []string{snap, restored} {
				if !bytes.Equal(readAt(t, path, 16*mib, len(data)), data) {
					t.Errorf("%s changed when its source was written", filepath.Base(path))
				}
			}
		})
	}
}

// fiemap reports a file's extents (FS_IOC_FIEMAP, which x/sys/unix does not
// wrap), after syncing it.
type extent struct {
	logical, length uint64
	flags           uint32
}

const (
	fsIocFiemap        = 0xC020660B // _IOWR('f', 11, struct fiemap)
	fiemapFlagSync     = 0x1
	fiemapExtentLast   = 0x1
	fiemapExtentShared = 0x2000
)

type fiemapHeader struct {
	start, length                        uint64
	flags, mappedExtents, extentCount, _ uint32
}

type fiemapExtent struct {
	logical, physical, length uint64
	_                         [2]uint64
	flags                     uint32
	_                         [3]uint32
}

func fiemap(t testing.TB, path string) []extent {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const batch = 256
	var out []extent
	var start uint64
	for {
		buf := make([]byte, unsafe.Sizeof(fiemapHeader{})+batch*unsafe.Sizeof(fiemapExtent{}))
		h := (*fiemapHeader)(unsafe.Pointer(&buf[0]))
		*h = fiemapHeader{start: start, length: ^uint64(0) - start, flags: fiemapFlagSync, extentCount: batch}
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&buf[0]))); errno != 0 {
			t.Fatalf("FIEMAP %s: %v", path, errno)
		}
		if h.mappedExtents == 0 {
			return out
		}
		exts := unsafe.Slice((*fiemapExtent)(unsafe.Pointer(&buf[unsafe.Sizeof(fiemapHeader{})])), h.mappedExtents)
		for _, e := range exts {
			out = append(out, extent{e.logical, e.length, e.flags})
			start = e.logical + e.length
			if e.flags&fiemapExtentLast != 0 {
				return out
			}
		}
	}
}

// TestFormatState closes the pool's part of issue 10 item 6: a kill during
// the first mkfs left a half-written superblock that was taken for a
// filesystem forever. The pool records "pending" on every new mount
// volume, "done" only when the node says so, copies the state to
// snapshots, restores and clones, and loses it with the image; reconcile
// must not take the record for an orphan.
func TestFormatState(t *testing.T) {
	testfs.RequireRoot(t) // trusted.* xattrs
	for _, fs := range filesystems {
		t.Run(fs.fstype, func(t *testing.T) {
			ctx := context.Background()
			root := filepath.Join(testfs.New(t, fs.fstype, 512*mib, fs.mkfsArgs...), "pool")
			p := newPool(t, root)
			want := func(id string, st backend.FormatState) {
				t.Helper()
				got, err := p.FormatState(ctx, id)
				if err != nil || got != st {
					t.Errorf("FormatState(%s) = %v, %v; want %v", id, got, err, st)
				}
			}
			mountSpec := backend.Spec{CapacityBytes: 8 * mib, AccessType: backend.AccessMount}
			for _, id := range []string{"vol-a", "vol-b"} {
				if _, err := p.CreateVolume(ctx, id, mountSpec, commitOK); err != nil {
					t.Fatal(err)
				}
				want(id, backend.FormatPending)
			}
			if _, err := p.CreateVolume(ctx, "vol-block", backend.Spec{CapacityBytes: 8 * mib, AccessType: backend.AccessBlock}, commitOK); err != nil {
				t.Fatal(err)
			}
			want("vol-block", backend.FormatUnknown) // the workload's bytes: never wiped
			if err := p.MarkFormatted(ctx, "vol-a"); err != nil {
				t.Fatal(err)
			}
			want("vol-a", backend.FormatDone)
			want("vol-b", backend.FormatPending)

			for _, src := range []string{"vol-a", "vol-b"} {
				snap := "snap-" + src
				if _, err := p.CreateSnapshot(ctx, snap, src, func(backend.Snapshot) error { return nil }); err != nil {
					t.Fatal(err)
				}
				if _, err := p.CreateVolumeFrom(ctx, "restore-"+src, mountSpec, backend.ContentSource{SnapshotID: snap}, commitOK); err != nil {
					t.Fatal(err)
				}
				if _, err := p.CreateVolumeFrom(ctx, "clone-"+src, mountSpec, backend.ContentSource{VolumeID: src}, commitOK); err != nil {
					t.Fatal(err)
				}
			}
			want("restore-vol-a", backend.FormatDone)
			want("clone-vol-a", backend.FormatDone)
			want("restore-vol-b", backend.FormatPending)
			want("clone-vol-b", backend.FormatPending)

			// Delete and re-create under the same ID: a fresh, unformatted image.
			if err := p.DeleteVolume(ctx, "vol-a", func() error { return nil }); err != nil {
				t.Fatal(err)
			}
			if _, err := p.CreateVolume(ctx, "vol-a", mountSpec, commitOK); err != nil {
				t.Fatal(err)
			}
			want("vol-a", backend.FormatPending)

			known := map[string]bool{}
			for _, id := range []string{"vol-a", "vol-b", "vol-block", "restore-vol-a", "clone-vol-a", "restore-vol-b", "clone-vol-b"} {
				known[id] = true
			}
			rep, err := p.Reconcile(ctx, backend.Inventory{Volumes: known, Snapshots: map[string]bool{"snap-vol-a": true, "snap-vol-b": true}})
			if err != nil || len(rep.Removed)+len(rep.Missing)+len(rep.Errors) != 0 {
				t.Errorf("Reconcile = %+v, %v; want nothing to do", rep, err)
			}
			want("clone-vol-a", backend.FormatDone)
		})
	}
}
