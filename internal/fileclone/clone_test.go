//go:build linux

package fileclone

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/testfs"
)

// extent is a run of data in a test file.
type extent struct{ off, len int64 }

// layout is a test file: its size and where its data is; the rest is hole.
type layout struct {
	name string
	size int64
	data []extent
}

func (l layout) dataBytes() int64 {
	var n int64
	for _, e := range l.data {
		n += e.len
	}
	return n
}

var layouts = []layout{
	{name: "empty"},
	{name: "all hole", size: 8 << 20},
	{name: "all data", size: 1 << 20, data: []extent{{0, 1 << 20}}},
	{name: "holes between", size: 64 << 20, data: []extent{{0, 1 << 20}, {16 << 20, 1 << 20}, {40 << 20, 4096}}},
	{name: "leading hole, unaligned tail", size: 10<<20 + 123, data: []extent{{10 << 20, 123}}},
	{name: "trailing hole", size: 64 << 20, data: []extent{{0, 64 << 10}}},
	// Longer than one copy chunk, so it is copied in several.
	{name: "extent over chunks", size: copyChunk + 16<<20, data: []extent{{0, copyChunk + 8<<20}}},
}

// writeLayout makes path as l describes, with pseudo-random data.
func writeLayout(t testing.TB, path string, l layout) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rng := rand.NewChaCha8([32]byte{1})
	for _, e := range l.data {
		if _, err := io.Copy(io.NewOffsetWriter(f, e.off), io.LimitReader(rng, e.len)); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(l.size); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

func fileSum(t testing.TB, path string) [sha256.Size]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return [sha256.Size]byte(h.Sum(nil))
}

// dataExtents returns path's data runs as SEEK_DATA/SEEK_HOLE report them.
func dataExtents(t testing.TB, path string) []extent {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	var out []extent
	fd := int(f.Fd())
	for off := int64(0); off < st.Size(); {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, extent{start, end - start})
		off = end
	}
	return out
}

func allocated(t testing.TB, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// checkSparseCopy checks that dst has src's size, content and holes.
func checkSparseCopy(t *testing.T, src, dst string, l layout) {
	t.Helper()
	if fileSum(t, src) != fileSum(t, dst) {
		t.Errorf("content differs")
	}
	fi, err := os.Stat(dst)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != l.size {
		t.Errorf("size = %d; want %d", fi.Size(), l.size)
	}
	if s, d := dataExtents(t, src), dataExtents(t, dst); !slices.Equal(s, d) {
		t.Errorf("data extents = %v; source has %v", d, s)
	}
	// Allocated space follows the data, not the size: blocks are rounded
	// to 4 KiB and a filesystem may add a few for its extent tree.
	const slack = 256 << 10
	if got, max := allocated(t, dst), (l.dataBytes()+4095)&^4095+slack; got > max {
		t.Errorf("allocated %d bytes for %d bytes of data in a %d-byte file; want at most %d", got, l.dataBytes(), l.size, max)
	}
}

// requireHoles skips unless the filesystem of dir keeps holes in files.
func requireHoles(t testing.TB, dir string) {
	t.Helper()
	p := filepath.Join(dir, "hole-probe")
	writeLayout(t, p, layout{size: 8 << 20, data: []extent{{0, 4096}}})
	defer os.Remove(p)
	if allocated(t, p) >= 8<<20 {
		t.Skipf("the filesystem of %s does not keep holes", dir)
	}
}

func TestSparseCopy(t *testing.T) {
	dir := t.TempDir()
	requireHoles(t, dir)
	for _, l := range layouts {
		for _, cfr := range []bool{true, false} {
			name := l.name + "/read-write"
			if cfr {
				name = l.name + "/copy_file_range"
			}
			t.Run(name, func(t *testing.T) {
				dir := t.TempDir()
				src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
				writeLayout(t, src, l)
				s, err := os.Open(src)
				if err != nil {
					t.Fatal(err)
				}
				defer s.Close()
				d, err := os.Create(dst)
				if err != nil {
					t.Fatal(err)
				}
				defer d.Close()
				c := copier{ctx: context.Background(), sfd: int(s.Fd()), dfd: int(d.Fd()), useCFR: cfr}
				if err := c.sparseCopy(l.size); err != nil {
					t.Fatal(err)
				}
				if err := d.Sync(); err != nil {
					t.Fatal(err)
				}
				checkSparseCopy(t, src, dst, l)
			})
		}
	}
}

func TestCloneFile(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	requireHoles(t, dir)
	l := layouts[3] // holes between
	src := filepath.Join(dir, "src")
	writeLayout(t, src, l)
	if err := os.Chmod(src, 0o640); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "dst")
	m, err := CloneFile(ctx, src, dst)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("method on %s: %v", dir, m)
	if m != Reflink && m != SparseCopy {
		t.Errorf("method = %v", m)
	}
	if m == SparseCopy {
		checkSparseCopy(t, src, dst, l)
	} else if fileSum(t, src) != fileSum(t, dst) {
		t.Error("content differs")
	}
	if fi, err := os.Stat(dst); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("dst mode = %v, %v; want 0640", fi.Mode(), err)
	}
}

func TestCloneFileErrors(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	writeLayout(t, src, layout{size: 1 << 20, data: []extent{{0, 4096}}})
	existing := filepath.Join(dir, "existing")
	if err := os.WriteFile(existing, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	canceled, cancel := context.WithCancel(context.Background())
	cancel()

	for _, tc := range []struct {
		name     string
		ctx      context.Context
		src, dst string
		want     error
	}{
		{"dst exists", context.Background(), src, existing, errdefs.ErrAlreadyExists},
		{"dst exists is fs.ErrExist", context.Background(), src, existing, fs.ErrExist},
		{"src missing", context.Background(), filepath.Join(dir, "nope"), filepath.Join(dir, "d1"), fs.ErrNotExist},
		{"src is a directory", context.Background(), dir, filepath.Join(dir, "d2"), errdefs.ErrInvalidArgument},
		{"dst directory missing", context.Background(), src, filepath.Join(dir, "no", "d3"), fs.ErrNotExist},
		{"canceled", canceled, src, filepath.Join(dir, "d4"), context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := CloneFile(tc.ctx, tc.src, tc.dst)
			if !errors.Is(err, tc.want) || m != 0 {
				t.Fatalf("CloneFile = %v, %v; want 0, %v", m, err, tc.want)
			}
			if tc.dst == existing {
				if b, _ := os.ReadFile(existing); string(b) != "keep me" {
					t.Errorf("existing dst changed to %q", b)
				}
			} else if _, err := os.Lstat(tc.dst); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("dst left behind: %v", err)
			}
		})
	}
}

// cancelAfter is a context that is canceled from its n+1st Err call on,
// to cancel a copy at a chosen point without timing.
type cancelAfter struct {
	context.Context
	n int
}

func (c *cancelAfter) Err() error {
	if c.n <= 0 {
		return context.Canceled
	}
	c.n--
	return nil
}

func TestCloneFileCanceledMidway(t *testing.T) {
	dir := t.TempDir()
	if ok, err := SupportsReflink(context.Background(), dir); err != nil || ok {
		t.Skipf("needs a temporary directory without reflink (reflink: %v, %v)", ok, err)
	}
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	writeLayout(t, src, layouts[3])
	// One Err call on entry, one per chunk: stop before the second extent.
	ctx := &cancelAfter{Context: context.Background(), n: 2}
	if _, err := CloneFile(ctx, src, dst); !errors.Is(err, context.Canceled) {
		t.Fatalf("CloneFile = %v; want context.Canceled", err)
	}
	if _, err := os.Lstat(dst); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("dst left behind: %v", err)
	}
}

func TestMethodString(t *testing.T) {
	for _, tc := range []struct {
		m    Method
		want string
	}{
		{Reflink, "reflink"},
		{SparseCopy, "sparse copy"},
		{0, "Method(0)"},
	} {
		if got := tc.m.String(); got != tc.want {
			t.Errorf("%d.String() = %q; want %q", int(tc.m), got, tc.want)
		}
	}
}

// reflinkCases are the filesystems the root tests make, and what each can do.
var reflinkCases = []struct {
	fstype   string
	mkfsArgs []string
	want     Method
}{
	{"btrfs", nil, Reflink},
	{"xfs-noquota", []string{"-m", "reflink=1"}, Reflink},
	{"ext4", nil, SparseCopy},
}

func TestCloneFileOnFilesystems(t *testing.T) {
	testfs.RequireRoot(t)
	ctx := context.Background()
	for _, tc := range reflinkCases {
		t.Run(tc.fstype, func(t *testing.T) {
			mnt := testfs.New(t, tc.fstype, 512<<20, tc.mkfsArgs...)

			ok, err := SupportsReflink(ctx, mnt)
			if err != nil {
				t.Fatal(err)
			}
			if ok != (tc.want == Reflink) {
				t.Errorf("SupportsReflink = %v; want %v", ok, tc.want == Reflink)
			}
			if entries, _ := os.ReadDir(mnt); len(entries) > 1 { // lost+found on ext4
				t.Errorf("SupportsReflink left %v behind", entries)
			}

			l := layouts[3] // holes between
			src, dst := filepath.Join(mnt, "src.img"), filepath.Join(mnt, "dst.img")
			writeLayout(t, src, l)
			m, err := CloneFile(ctx, src, dst)
			if err != nil {
				t.Fatal(err)
			}
			if m != tc.want {
				t.Errorf("CloneFile method = %v; want %v", m, tc.want)
			}
			if m == SparseCopy {
				checkSparseCopy(t, src, dst, l)
			} else if fileSum(t, src) != fileSum(t, dst) {
				t.Error("content differs")
			}

			// The copy is independent of its source, reflinked or not.
			before := fileSum(t, src)
			if err := os.WriteFile(dst, []byte("overwritten"), 0o644); err != nil {
				t.Fatal(err)
			}
			if fileSum(t, src) != before {
				t.Error("writing the copy changed the source")
			}
		})
	}
}
