package mountfd_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/mountfd"
	"github.com/cairn-csi/cairn/internal/testdriver"
)

// TestMain runs the tests in a private mount namespace.
func TestMain(m *testing.M) { testdriver.MainInPrivateMounts(m, "internal/mountfd") }

func requireRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the tests make bind mounts")
	}
}

// tree makes dir/{real/sub, link -> real} and returns dir.
func tree(t *testing.T) string {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "real", "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "real"), filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestOpenRefusesSymlinks(t *testing.T) {
	dir := tree(t)
	tests := []struct {
		path string
		want error
	}{
		{filepath.Join(dir, "real", "sub"), nil},
		{filepath.Join(dir, "link"), errdefs.ErrInvalidArgument},
		{filepath.Join(dir, "link", "sub"), errdefs.ErrInvalidArgument},
		{filepath.Join(dir, "missing"), fs.ErrNotExist},
		{"relative/path", errdefs.ErrInvalidArgument},
		{dir + "/real/../real", errdefs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		h, err := mountfd.Open(tt.path)
		if tt.want == nil {
			if err != nil {
				t.Errorf("Open(%s): %v", tt.path, err)
				continue
			}
			h.Close()
			continue
		}
		if !errors.Is(err, tt.want) {
			t.Errorf("Open(%s) = %v, want %v", tt.path, err, tt.want)
		}
	}
}

func TestMakeTarget(t *testing.T) {
	dir := tree(t)
	// Parents are created; the target is a directory or a file.
	for _, file := range []bool{false, true} {
		p := filepath.Join(dir, "new", "parents", map[bool]string{false: "d", true: "f"}[file])
		h, created, err := mountfd.MakeTarget(p, file)
		if err != nil || !created {
			t.Fatalf("MakeTarget(%s, %v) = %v, %v", p, file, created, err)
		}
		info, _ := h.Stat()
		h.Close()
		if info.Dir() == file || info.Regular() != file {
			t.Fatalf("%s has mode %o", p, info.Mode)
		}
		// Again: exists, not created.
		h, created, err = mountfd.MakeTarget(p, file)
		if err != nil || created {
			t.Fatalf("second MakeTarget(%s) = %v, %v", p, created, err)
		}
		h.Close()
		// The other type is refused.
		if _, _, err := mountfd.MakeTarget(p, !file); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("MakeTarget of the other type: %v", err)
		}
	}
	// A symlinked parent is refused and nothing is created through it.
	if _, _, err := mountfd.MakeTarget(filepath.Join(dir, "link", "x", "y"), false); !errors.Is(err, mountfd.ErrSymlink) {
		t.Fatalf("MakeTarget through a symlink: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "real", "x")); !os.IsNotExist(err) {
		t.Fatalf("created through the symlink: %v", err)
	}
	// So is a symlink as the target itself.
	if _, _, err := mountfd.MakeTarget(filepath.Join(dir, "link"), false); !errors.Is(err, mountfd.ErrSymlink) {
		t.Fatalf("MakeTarget at a symlink: %v", err)
	}
}

func TestBindReadOnlyAndUnmount(t *testing.T) {
	requireRoot(t)
	dir := tree(t)
	src := filepath.Join(dir, "real", "sub")
	if err := os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	sh, err := mountfd.OpenOwn(src)
	if err != nil {
		t.Fatal(err)
	}
	defer sh.Close()
	target := filepath.Join(dir, "t")
	th, _, err := mountfd.MakeTarget(target, false)
	if err != nil {
		t.Fatal(err)
	}
	defer th.Close()
	if err := mountfd.Bind(sh, th, mountfd.Attrs{ReadOnly: true, NoExec: true}); err != nil {
		t.Fatal(err)
	}
	info, err := mountfd.StatPath(target)
	if err != nil {
		t.Fatal(err)
	}
	srcInfo, _ := sh.Stat()
	if !info.MountRoot || !info.ReadOnly || info.Ino != srcInfo.Ino || info.Dev != srcInfo.Dev {
		t.Fatalf("target: %+v, source %+v", info, srcInfo)
	}
	if err := os.WriteFile(filepath.Join(target, "g"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Fatalf("write to a read-only bind: %v", err)
	}
	// Unmount through a symlinked parent is refused; the mount stays.
	if err := os.Symlink(dir, filepath.Join(dir, "real", "up")); err != nil {
		t.Fatal(err)
	}
	if err := mountfd.Unmount(filepath.Join(dir, "real", "up", "t")); !errors.Is(err, mountfd.ErrSymlink) {
		t.Fatalf("Unmount through a symlink: %v", err)
	}
	if info, _ := mountfd.StatPath(target); !info.MountRoot {
		t.Fatal("the mount went away")
	}
	if err := mountfd.Unmount(target); err != nil {
		t.Fatal(err)
	}
	if info, _ := mountfd.StatPath(target); info.MountRoot {
		t.Fatal("still mounted")
	}
	if err := mountfd.RemoveTarget(target); err != nil {
		t.Fatal(err)
	}
	if err := mountfd.RemoveTarget(target); err != nil {
		t.Fatalf("RemoveTarget of a missing target: %v", err)
	}
	// A directory with something in it is not removed.
	if err := mountfd.RemoveTarget(filepath.Join(dir, "real")); err == nil {
		t.Fatal("removed a non-empty directory")
	}
}

func TestParseOptions(t *testing.T) {
	tests := []struct {
		fs     string
		flags  []string
		attrs  mountfd.Attrs
		fsOpts []string
		ok     bool
	}{
		{"", []string{"ro", "nosuid", "noatime"}, mountfd.Attrs{ReadOnly: true, NoSuid: true, Atime: "noatime"}, nil, true},
		{"", []string{"discard"}, mountfd.Attrs{}, nil, false}, // a directory has no filesystem of its own
		{"ext4", []string{"nodev", "discard", "commit=30", "data=ordered"}, mountfd.Attrs{NoDev: true}, []string{"discard", "commit=30", "data=ordered"}, true},
		{"ext4", []string{"journal_path=/dev/sda"}, mountfd.Attrs{}, nil, false},
		{"ext4", []string{"journal_dev=8"}, mountfd.Attrs{}, nil, false},
		{"ext4", []string{"errors=panic"}, mountfd.Attrs{}, nil, false},
		{"ext4", []string{"commit="}, mountfd.Attrs{}, nil, false},
		{"xfs", []string{"nouuid", "logbufs=8"}, mountfd.Attrs{}, []string{"nouuid", "logbufs=8"}, true},
		{"xfs", []string{"logdev=/dev/sdb"}, mountfd.Attrs{}, nil, false},
		{"xfs", []string{"rtdev=/dev/sdc"}, mountfd.Attrs{}, nil, false},
		{"btrfs", []string{"compress=zstd:3", "discard=async"}, mountfd.Attrs{}, []string{"compress=zstd:3", "discard=async"}, true},
		{"btrfs", []string{"device=/dev/sda"}, mountfd.Attrs{}, nil, false},
		{"btrfs", []string{"subvol=/"}, mountfd.Attrs{}, nil, false},
	}
	for _, tt := range tests {
		attrs, fsOpts, err := mountfd.ParseOptions(tt.fs, tt.flags)
		if (err == nil) != tt.ok {
			t.Errorf("ParseOptions(%q, %q) error %v, want ok=%v", tt.fs, tt.flags, err, tt.ok)
			continue
		}
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("ParseOptions(%q, %q): %v is not InvalidArgument", tt.fs, tt.flags, err)
			}
			continue
		}
		if attrs != tt.attrs || len(fsOpts) != len(tt.fsOpts) {
			t.Errorf("ParseOptions(%q, %q) = %+v %q, want %+v %q", tt.fs, tt.flags, attrs, fsOpts, tt.attrs, tt.fsOpts)
		}
	}
}
