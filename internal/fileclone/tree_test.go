//go:build linux

package fileclone

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/testfs"
)

// makeTree builds a tree with every kind of entry CloneTree handles under
// dir/src, and a directory outside it that a symlink points to. It returns
// src.
func makeTree(t *testing.T, dir string) string {
	t.Helper()
	root := os.Geteuid() == 0
	src := filepath.Join(dir, "src")
	outside := filepath.Join(dir, "outside")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(outside, 0o755))
	must(os.WriteFile(filepath.Join(outside, "secret"), []byte("not to be copied"), 0o600))

	must(os.MkdirAll(filepath.Join(src, "dir1", "dir2"), 0o755))
	must(os.Mkdir(filepath.Join(src, "emptydir"), 0o755))
	must(os.WriteFile(filepath.Join(src, "a.txt"), []byte("hello"), 0o644))
	must(os.WriteFile(filepath.Join(src, "empty"), nil, 0o644))
	must(os.WriteFile(filepath.Join(src, "run.sh"), []byte("#!/bin/sh\n"), 0o644))
	writeLayout(t, filepath.Join(src, "dir1", "dir2", "deep.img"), layouts[3])
	must(os.Link(filepath.Join(src, "a.txt"), filepath.Join(src, "hardlink")))
	must(os.Symlink("a.txt", filepath.Join(src, "link-rel")))
	must(os.Symlink("dir1/dir2", filepath.Join(src, "link-dir")))
	must(os.Symlink(outside, filepath.Join(src, "link-out")))
	must(os.Symlink("no/such/file", filepath.Join(src, "link-dangling")))
	must(unix.Mkfifo(filepath.Join(src, "fifo"), 0o644))
	if root {
		must(unix.Mknod(filepath.Join(src, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
		must(os.Lchown(filepath.Join(src, "a.txt"), 1234, 5678))
		must(os.Lchown(filepath.Join(src, "link-rel"), 4321, 8765))
		must(os.Lchown(filepath.Join(src, "dir1"), 1234, 5678))
	}
	// user.* xattrs, where the filesystem takes them.
	if err := unix.Setxattr(filepath.Join(src, "a.txt"), "user.cairn.test", []byte("value"), 0); err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
		t.Fatal(err)
	}

	// Modes, set after the content since umask applies at creation.
	for p, mode := range map[string]os.FileMode{
		"run.sh": 0o755, "empty": 0o600, "dir1": 0o750, "dir1/dir2": 0o700,
		"emptydir": 0o711, "dir1/dir2/deep.img": 0o640, "fifo": 0o620,
	} {
		must(os.Chmod(filepath.Join(src, p), mode))
	}
	if root {
		must(os.Chmod(filepath.Join(src, "run.sh"), 0o755|os.ModeSetuid))
	}
	// Distinct times everywhere, directories last since their entries'
	// changes move them.
	when := time.Date(2020, 1, 2, 3, 4, 5, 600, time.UTC)
	var paths []string
	must(filepath.WalkDir(src, func(p string, _ fs.DirEntry, err error) error {
		paths = append(paths, p)
		return err
	}))
	slices.Reverse(paths) // children before parents
	for i, p := range paths {
		ts := unix.NsecToTimespec(when.Add(time.Duration(i) * time.Hour).UnixNano())
		must(unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW))
	}
	return src
}

// compareTrees fails the test where dst is not a copy of src.
func compareTrees(t *testing.T, src, dst string) {
	t.Helper()
	var srcPaths []string
	err := filepath.WalkDir(src, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		srcPaths = append(srcPaths, rel)
		s, d := lstat(t, p), lstat(t, filepath.Join(dst, rel))
		if d == nil {
			t.Errorf("%s: missing from the copy", rel)
			return nil
		}
		if s.Mode&unix.S_IFMT != d.Mode&unix.S_IFMT {
			t.Errorf("%s: type %#o; want %#o", rel, d.Mode&unix.S_IFMT, s.Mode&unix.S_IFMT)
			return nil
		}
		isLink := s.Mode&unix.S_IFMT == unix.S_IFLNK
		if !isLink && s.Mode != d.Mode {
			t.Errorf("%s: mode %#o; want %#o", rel, d.Mode, s.Mode)
		}
		if s.Uid != d.Uid || s.Gid != d.Gid {
			t.Errorf("%s: owner %d:%d; want %d:%d", rel, d.Uid, d.Gid, s.Uid, s.Gid)
		}
		if s.Mtim != d.Mtim {
			t.Errorf("%s: mtime %v; want %v", rel, d.Mtim, s.Mtim)
		}
		if s.Rdev != d.Rdev {
			t.Errorf("%s: rdev %#x; want %#x", rel, d.Rdev, s.Rdev)
		}
		switch s.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			if s.Size != d.Size || fileSum(t, p) != fileSum(t, filepath.Join(dst, rel)) {
				t.Errorf("%s: content differs", rel)
			}
			if sx, dx := xattr(t, p), xattr(t, filepath.Join(dst, rel)); sx != dx {
				t.Errorf("%s: xattr user.cairn.test = %q; want %q", rel, dx, sx)
			}
		case unix.S_IFLNK:
			st, _ := os.Readlink(p)
			dt, _ := os.Readlink(filepath.Join(dst, rel))
			if st != dt {
				t.Errorf("%s: link to %q; want %q", rel, dt, st)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var dstPaths []string
	err = filepath.WalkDir(dst, func(p string, _ fs.DirEntry, err error) error {
		rel, _ := filepath.Rel(dst, p)
		dstPaths = append(dstPaths, rel)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(srcPaths, dstPaths) {
		t.Errorf("copy has %v; source has %v", dstPaths, srcPaths)
	}
}

func lstat(t *testing.T, p string) *unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); errors.Is(err, unix.ENOENT) {
		return nil
	} else if err != nil {
		t.Fatal(err)
	}
	return &st
}

func xattr(t *testing.T, p string) string {
	t.Helper()
	buf := make([]byte, 64)
	n, err := unix.Lgetxattr(p, "user.cairn.test", buf)
	if errors.Is(err, unix.ENODATA) || errors.Is(err, unix.EOPNOTSUPP) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(buf[:n])
}

func TestCloneTree(t *testing.T) {
	dir := t.TempDir()
	src := makeTree(t, dir)
	dst := filepath.Join(dir, "dst")
	m, err := CloneTree(context.Background(), src, dst)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("method on %s: %v", dir, m)
	compareTrees(t, src, dst)

	// Hard links become separate files.
	a, h := lstat(t, filepath.Join(dst, "a.txt")), lstat(t, filepath.Join(dst, "hardlink"))
	if a.Ino == h.Ino {
		t.Errorf("hard links were preserved, but CloneTree documents they are not")
	}
	// The symlink out of the tree was copied as a link, not followed.
	if _, err := os.Lstat(filepath.Join(dst, "link-out", "secret")); err != nil {
		t.Errorf("link-out does not resolve as in the source: %v", err)
	}
	if fi, err := os.Lstat(filepath.Join(dst, "link-out")); err != nil || fi.Mode()&fs.ModeSymlink == 0 {
		t.Errorf("link-out in the copy: %v, %v; want a symlink", fi, err)
	}
}

func TestCloneTreeErrors(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(filepath.Join(src, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "sub", "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(src, filepath.Join(dir, "src-link")); err != nil {
		t.Fatal(err)
	}
	existing := filepath.Join(dir, "existing")
	if err := os.Mkdir(existing, 0o755); err != nil {
		t.Fatal(err)
	}
	canceled, cancel := context.WithCancel(context.Background())
	cancel()

	for _, tc := range []struct {
		name     string
		ctx      context.Context
		src, dst string
		want     error
		leftover bool // dst existed before and must still
	}{
		{name: "dst exists", ctx: context.Background(), src: src, dst: existing, want: errdefs.ErrAlreadyExists, leftover: true},
		{name: "src is a symlink", ctx: context.Background(), src: filepath.Join(dir, "src-link"), dst: filepath.Join(dir, "d1"), want: errdefs.ErrInvalidArgument},
		{name: "src missing", ctx: context.Background(), src: filepath.Join(dir, "nope"), dst: filepath.Join(dir, "d2"), want: fs.ErrNotExist},
		{name: "dst inside src", ctx: context.Background(), src: src, dst: filepath.Join(src, "sub", "copy"), want: errdefs.ErrInvalidArgument},
		{name: "canceled", ctx: canceled, src: src, dst: filepath.Join(dir, "d3"), want: context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := CloneTree(tc.ctx, tc.src, tc.dst)
			if !errors.Is(err, tc.want) || m != 0 {
				t.Fatalf("CloneTree = %v, %v; want 0, %v", m, err, tc.want)
			}
			_, err = os.Lstat(tc.dst)
			if tc.leftover != (err == nil) {
				t.Errorf("dst after failure: %v; want it to exist: %v", err, tc.leftover)
			}
		})
	}
}

func TestCloneTreeOnFilesystems(t *testing.T) {
	testfs.RequireRoot(t)
	for _, tc := range reflinkCases {
		t.Run(tc.fstype, func(t *testing.T) {
			mnt := testfs.New(t, tc.fstype, 512<<20, tc.mkfsArgs...)
			src := makeTree(t, mnt)
			dst := filepath.Join(mnt, "dst")
			m, err := CloneTree(context.Background(), src, dst)
			if err != nil {
				t.Fatal(err)
			}
			if m != tc.want {
				t.Errorf("method = %v; want %v", m, tc.want)
			}
			compareTrees(t, src, dst)
		})
	}
}

func TestCloneTreeWithoutFiles(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(filepath.Join(src, "a", "b"), 0o755); err != nil {
		t.Fatal(err)
	}
	m, err := CloneTree(context.Background(), src, filepath.Join(dir, "dst"))
	if err != nil || m != SparseCopy {
		t.Errorf("CloneTree of directories only = %v, %v; want SparseCopy: no file was reflinked", m, err)
	}
}
