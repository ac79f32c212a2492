package node

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"

	"github.com/cairn-csi/cairn/internal/loopdev"
	"github.com/cairn-csi/cairn/internal/mounttable"
)

// TestMountIndexFakeTable: a listing's index is built from the injected
// table (escaped as the kernel writes it), by device and inode, and a
// table that cannot be read is an error, not an empty index.
func TestMountIndexFakeTable(t *testing.T) {
	vol := filepath.Join(t.TempDir(), "vol-1")
	if err := os.Mkdir(vol, 0o700); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "a b")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	mp := filepath.Join(dir, "vol-1")
	if err := os.Symlink(vol, mp); err != nil {
		t.Fatal(err)
	}
	escaped := filepath.Join(filepath.Dir(dir), `a\040b`, "vol-1")
	table := &fakeTable{mounts: []mount.MountInfo{
		{ID: 1, Root: "/pool/vol-1", MountPoint: escaped, Source: "none"},
		{ID: 2, Root: "/pool/other", MountPoint: t.TempDir(), Source: "none"},
	}}
	n := New(Config{Table: table})
	idx, err := n.MountIndex()
	if err != nil {
		t.Fatal(err)
	}
	if table.reads != 1 {
		t.Errorf("table read %d times, want 1", table.reads)
	}
	if table.mounts[0].MountPoint != escaped {
		t.Errorf("the injected table was changed: %q", table.mounts[0].MountPoint)
	}
	var st unix.Stat_t
	if err := unix.Stat(vol, &st); err != nil {
		t.Fatal(err)
	}
	if !idx.RootNamed("vol-1") || idx.RootNamed("vol-2") {
		t.Errorf("RootNamed: vol-1 %v, vol-2 %v; want true, false", idx.RootNamed("vol-1"), idx.RootNamed("vol-2"))
	}
	if got := idx.DirNamed("vol-1", st.Dev, st.Ino); !slices.Equal(got, []string{mp}) {
		t.Errorf("DirNamed = %q, want [%q]", got, mp)
	}
	if got := idx.Dir(st.Dev, st.Ino); !slices.Equal(got, []string{mp}) {
		t.Errorf("Dir = %q, want [%q]", got, mp)
	}

	broken := New(Config{Table: &fakeTable{err: errors.New("mountinfo: boom")}})
	if _, err := broken.MountIndex(); err == nil {
		t.Error("MountIndex over an unreadable table: no error")
	}
}

// listLoops is LoopDevices whose List is what a test says.
type listLoops struct {
	noLoops
	devs []loopdev.Device
	err  error
}

func (l listLoops) List(context.Context) ([]loopdev.Device, error) { return l.devs, l.err }

// TestLoopsByBackingFile: loop devices are indexed by their file's device
// and inode; a deleted file, a device that is gone and a file that names
// nothing here (with no BackingID to ask) are left out.
func TestLoopsByBackingFile(t *testing.T) {
	ctx := context.Background()
	if got, err := New(Config{}).LoopsByBackingFile(ctx); err != nil || len(got) != 0 {
		t.Errorf("no loop devices: %v, %v; want empty, nil", got, err)
	}
	tmp := t.TempDir()
	img := filepath.Join(tmp, "img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// A device path that stats: any file will do, its st_rdev is recorded.
	dev := filepath.Join(tmp, "loop7")
	if err := os.WriteFile(dev, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	var ist, dst unix.Stat_t
	if err := unix.Stat(img, &ist); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(dev, &dst); err != nil {
		t.Fatal(err)
	}
	loops := listLoops{devs: []loopdev.Device{
		{Path: dev, BackingFile: img},
		{Path: dev, BackingFile: img, Deleted: true},
		{Path: filepath.Join(tmp, "gone"), BackingFile: img},
		{Path: dev, BackingFile: filepath.Join(tmp, "elsewhere")},
	}}
	got, err := New(Config{Loop: loops}).LoopsByBackingFile(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[mounttable.DevIno][]uint64{{Dev: ist.Dev, Ino: ist.Ino}: {dst.Rdev}}
	if len(got) != len(want) || !slices.Equal(got[mounttable.DevIno{Dev: ist.Dev, Ino: ist.Ino}], want[mounttable.DevIno{Dev: ist.Dev, Ino: ist.Ino}]) {
		t.Errorf("LoopsByBackingFile = %v, want %v", got, want)
	}
	if _, err := New(Config{Loop: listLoops{err: errors.New("boom")}}).LoopsByBackingFile(ctx); err == nil {
		t.Error("a List failure: no error")
	}
}

// TestPathChecks: stage's and unpublish's path checks, without root; a
// symbolic link in the path is refused, not followed.
func TestPathChecks(t *testing.T) {
	tmp := t.TempDir()
	dir, file, link := filepath.Join(tmp, "dir"), filepath.Join(tmp, "file"), filepath.Join(tmp, "link")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	n := New(Config{Table: &fakeTable{err: errors.New("must not be read")}})
	for _, tc := range []struct {
		name              string
		path              string
		exists, dir, fail bool
	}{
		{"directory", dir, true, true, false},
		{"file", file, true, false, false},
		{"missing", filepath.Join(tmp, "none"), false, false, false},
		{"symlink", link, false, false, true},
		{"below a symlink", filepath.Join(link, "x"), false, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			exists, dir, err := n.IsDir(tc.path)
			if (err != nil) != tc.fail || exists != tc.exists || dir != tc.dir {
				t.Errorf("IsDir = %v, %v, %v; want exists %v, dir %v, error %v", exists, dir, err, tc.exists, tc.dir, tc.fail)
			}
			exists, err = n.Exists(tc.path)
			if (err != nil) != tc.fail || exists != tc.exists {
				t.Errorf("Exists = %v, %v; want %v, error %v", exists, err, tc.exists, tc.fail)
			}
		})
	}
}
