package btrfs

import (
	"bytes"
	"context"
	"errors"
	"github.com/cairn-csi/cairn/internal/testfs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/errdefs"
)

// TestABI pins request numbers and struct sizes to the values the C headers
// (linux/btrfs.h) give on amd64, checked with a one-off C program.
func TestABI(t *testing.T) {
	ioctls := []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"SUBVOL_CREATE", iocSubvolCreate, 0x5000940e},
		{"SNAP_DESTROY", iocSnapDestroy, 0x5000940f},
		{"SNAP_CREATE_V2", iocSnapCreateV2, 0x50009417},
		{"SUBVOL_GETFLAGS", iocSubvolGetFlags, 0x80089419},
		{"SUBVOL_SETFLAGS", iocSubvolSetFlags, 0x4008941a},
		{"INO_LOOKUP", iocInoLookup, 0xd0009412},
		{"TREE_SEARCH", iocTreeSearch, 0xd0009411},
		{"SYNC", iocSync, 0x9408},
		{"QUOTA_CTL", iocQuotaCtl, 0xc0109428},
		{"QGROUP_CREATE", iocQgroupCreate, 0x4010942a},
		{"QGROUP_LIMIT", iocQgroupLimit, 0x8030942b},
		{"QUOTA_RESCAN", iocQuotaRescan, 0x4040942c},
		{"QUOTA_RESCAN_WAIT", iocQuotaRescanWait, 0x942e},
	}
	for _, tc := range ioctls {
		if tc.got != tc.want {
			t.Errorf("BTRFS_IOC_%s = %#x, want %#x", tc.name, tc.got, tc.want)
		}
	}
	sizes := []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"btrfs_ioctl_vol_args", unsafe.Sizeof(volArgs{}), 4096},
		{"btrfs_ioctl_vol_args_v2", unsafe.Sizeof(volArgsV2{}), 4096},
		{"btrfs_ioctl_ino_lookup_args", unsafe.Sizeof(inoLookupArgs{}), 4096},
		{"btrfs_ioctl_search_args", unsafe.Sizeof(searchArgs{}), 4096},
		{"btrfs_ioctl_search_key", unsafe.Sizeof(searchKey{}), 104},
		{"btrfs_ioctl_search_header", unsafe.Sizeof(searchHeader{}), 32},
	}
	for _, tc := range sizes {
		if tc.got != tc.want {
			t.Errorf("sizeof(struct %s) = %d, want %d", tc.name, tc.got, tc.want)
		}
	}
}

func TestCheckName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"vol-1", true},
		{".hidden", true},
		{strings.Repeat("a", 255), true},
		{"", false},
		{".", false},
		{"..", false},
		{"a/b", false},
		{"a\x00b", false},
		{strings.Repeat("a", 256), false},
	} {
		err := checkName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("checkName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("checkName(%q) = %v, want ErrInvalidArgument", tc.name, err)
		}
	}
}

// TestCanceledContext checks that every ctx-taking call gives up before
// touching anything.
func TestCanceledContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	dir := t.TempDir()
	for name, call := range map[string]func() error{
		"CreateSubvolume": func() error { return CreateSubvolume(ctx, dir, "x") },
		"Snapshot":        func() error { return Snapshot(ctx, dir, dir, "x", true) },
		"DeleteSubvolume": func() error { return DeleteSubvolume(ctx, dir) },
		"SubvolumeID":     func() error { _, err := SubvolumeID(ctx, dir); return err },
		"EnableQuota":     func() error { return EnableQuota(ctx, dir) },
		"Rescan":          func() error { return Rescan(ctx, dir) },
		"QuotaEnabled":    func() error { _, err := QuotaEnabled(ctx, dir); return err },
		"SetLimit":        func() error { return SetLimit(ctx, dir, 1) },
		"Usage":           func() error { _, _, _, err := Usage(ctx, dir); return err },
		"RemoveQgroup":    func() error { return RemoveQgroup(ctx, dir, 256) },
		"RemoveStale":     func() error { _, err := RemoveStaleQgroups(ctx, dir); return err },
	} {
		if err := call(); !errors.Is(err, context.Canceled) {
			t.Errorf("%s: got %v, want context.Canceled", name, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "x")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("canceled CreateSubvolume/Snapshot left %s/x behind", dir)
	}
}

func TestIsBtrfs(t *testing.T) {
	mnt := testfs.New(t, "btrfs", 512<<20)
	for _, tc := range []struct {
		path    string
		want    bool
		wantErr error
	}{
		{mnt, true, nil},
		{"/proc", false, nil},
		{filepath.Join(mnt, "missing"), false, errdefs.ErrNotFound},
	} {
		got, err := IsBtrfs(tc.path)
		if got != tc.want || !errors.Is(err, tc.wantErr) {
			t.Errorf("IsBtrfs(%q) = %v, %v; want %v, %v", tc.path, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestSubvolumesAndSnapshots(t *testing.T) {
	ctx := context.Background()
	mnt := testfs.New(t, "btrfs", 512<<20)
	src := filepath.Join(mnt, "src")
	data := []byte("hello, cairn\n")

	if err := CreateSubvolume(ctx, mnt, "src"); err != nil {
		t.Fatal(err)
	}
	if err := CreateSubvolume(ctx, mnt, "src"); !errors.Is(err, errdefs.ErrAlreadyExists) || !errors.Is(err, unix.EEXIST) {
		t.Errorf("CreateSubvolume on existing name: got %v, want ErrAlreadyExists wrapping EEXIST", err)
	}
	if err := os.WriteFile(filepath.Join(src, "file"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(mnt, "plain"), 0o755); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		path string
		want bool
	}{
		{mnt, true}, // the top-level subvolume (ID 5) has inode 256 too
		{src, true},
		{filepath.Join(mnt, "plain"), false},
		{filepath.Join(src, "file"), false},
		{"/proc", false},
	} {
		got, err := IsSubvolume(tc.path)
		if err != nil || got != tc.want {
			t.Errorf("IsSubvolume(%q) = %v, %v; want %v", tc.path, got, err, tc.want)
		}
	}

	srcID, err := SubvolumeID(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	if topID, err := SubvolumeID(ctx, mnt); err != nil || topID != 5 {
		t.Errorf("SubvolumeID(top level) = %d, %v; want 5", topID, err)
	}
	if fileID, err := SubvolumeID(ctx, filepath.Join(src, "file")); err != nil || fileID != srcID {
		t.Errorf("SubvolumeID(file in src) = %d, %v; want %d", fileID, err, srcID)
	}
	if srcID < 256 {
		t.Errorf("SubvolumeID(src) = %d, want >= 256", srcID)
	}

	snaps := []struct {
		name     string
		readOnly bool
		wantErr  error // of a write into the snapshot
	}{
		{"snap-ro", true, unix.EROFS},
		{"snap-rw", false, nil},
	}
	for _, tc := range snaps {
		t.Run(tc.name, func(t *testing.T) {
			if err := Snapshot(ctx, src, mnt, tc.name, tc.readOnly); err != nil {
				t.Fatal(err)
			}
			snap := filepath.Join(mnt, tc.name)
			if got, err := os.ReadFile(filepath.Join(snap, "file")); err != nil || !bytes.Equal(got, data) {
				t.Errorf("snapshot content = %q, %v; want %q", got, err, data)
			}
			if ro, err := IsReadOnly(snap); err != nil || ro != tc.readOnly {
				t.Errorf("IsReadOnly = %v, %v; want %v", ro, err, tc.readOnly)
			}
			if id, err := SubvolumeID(ctx, snap); err != nil || id == srcID {
				t.Errorf("SubvolumeID(snapshot) = %d, %v; want a new ID", id, err)
			}
			err := os.WriteFile(filepath.Join(snap, "new"), data, 0o644)
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("write into snapshot: got %v, want %v", err, tc.wantErr)
			}
		})
	}
	if err := Snapshot(ctx, src, mnt, "snap-ro", true); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("Snapshot onto existing name: got %v, want ErrAlreadyExists", err)
	}
	if err := Snapshot(ctx, filepath.Join(mnt, "plain"), mnt, "x", true); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("Snapshot of a plain directory: got %v, want ErrInvalidArgument", err)
	}

	// Snapshots outlive their source.
	if err := DeleteSubvolume(ctx, src); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(src); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("source still there after delete: %v", err)
	}
	for _, tc := range snaps {
		if got, err := os.ReadFile(filepath.Join(mnt, tc.name, "file")); err != nil || !bytes.Equal(got, data) {
			t.Errorf("%s after source deletion = %q, %v; want %q", tc.name, got, err, data)
		}
	}

	// Read-only snapshots delete like any other, and deletion is idempotent.
	for _, name := range []string{"snap-ro", "snap-rw", "snap-ro", "never-existed"} {
		if err := DeleteSubvolume(ctx, filepath.Join(mnt, name)); err != nil {
			t.Errorf("DeleteSubvolume(%s): %v", name, err)
		}
	}
	if err := DeleteSubvolume(ctx, filepath.Join(mnt, "no-such-parent", "x")); err != nil {
		t.Errorf("DeleteSubvolume under a missing parent: %v", err)
	}
}

func TestSetReadOnly(t *testing.T) {
	ctx := context.Background()
	mnt := testfs.New(t, "btrfs", 512<<20)
	vol := filepath.Join(mnt, "vol")
	if err := CreateSubvolume(ctx, mnt, "vol"); err != nil {
		t.Fatal(err)
	}
	for _, ro := range []bool{true, true, false, false, true} {
		if err := SetReadOnly(vol, ro); err != nil {
			t.Fatalf("SetReadOnly(%v): %v", ro, err)
		}
		got, err := IsReadOnly(vol)
		if err != nil || got != ro {
			t.Fatalf("IsReadOnly after SetReadOnly(%v) = %v, %v", ro, got, err)
		}
		err = os.WriteFile(filepath.Join(vol, "f"), nil, 0o644)
		if ro != errors.Is(err, unix.EROFS) {
			t.Errorf("read-only=%v: write got %v", ro, err)
		}
	}
	if err := DeleteSubvolume(ctx, vol); err != nil {
		t.Errorf("DeleteSubvolume(read-only): %v", err)
	}
}

func TestDeleteRefusals(t *testing.T) {
	ctx := context.Background()
	mnt := testfs.New(t, "btrfs", 512<<20)
	plain := filepath.Join(mnt, "plain")
	if err := os.Mkdir(plain, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := CreateSubvolume(ctx, mnt, "outer"); err != nil {
		t.Fatal(err)
	}
	if err := CreateSubvolume(ctx, filepath.Join(mnt, "outer"), "inner"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(mnt, "outer"), filepath.Join(mnt, "link")); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		path    string
		wantErr error
	}{
		{plain, errdefs.ErrInvalidArgument},
		{filepath.Join(mnt, "link"), errdefs.ErrInvalidArgument},
		{filepath.Join(mnt, "outer"), errdefs.ErrFailedPrecondition}, // ENOTEMPTY: holds "inner"
	} {
		if err := DeleteSubvolume(ctx, tc.path); !errors.Is(err, tc.wantErr) {
			t.Errorf("DeleteSubvolume(%s) = %v, want %v", tc.path, err, tc.wantErr)
		}
		if _, err := os.Lstat(tc.path); err != nil {
			t.Errorf("%s gone after refused delete: %v", tc.path, err)
		}
	}
}

// TestDeleteReadOnlyFallback covers the path for kernels that refuse to
// delete a read-only subvolume: clear the flag, retry, and restore the flag
// if the retry fails too.
func TestDeleteReadOnlyFallback(t *testing.T) {
	ctx := context.Background()
	mnt := testfs.New(t, "btrfs", 512<<20)
	refuseRO := func(pfd int, name string) error {
		if ro, err := IsReadOnly(filepath.Join(mnt, name)); err == nil && ro {
			return unix.EPERM
		}
		return destroy(pfd, name)
	}
	alwaysRefuse := func(int, string) error { return unix.EPERM }

	for _, tc := range []struct {
		name     string
		destroy  func(int, string) error
		wantErr  error
		wantGone bool
	}{
		{"refuses read-only", refuseRO, nil, true},
		{"refuses always", alwaysRefuse, unix.EPERM, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := CreateSubvolume(ctx, mnt, "src"); err != nil {
				t.Fatal(err)
			}
			defer DeleteSubvolume(ctx, filepath.Join(mnt, "src"))
			snap := filepath.Join(mnt, "snap")
			if err := Snapshot(ctx, filepath.Join(mnt, "src"), mnt, "snap", true); err != nil {
				t.Fatal(err)
			}
			defer DeleteSubvolume(ctx, snap)

			destroyFn = tc.destroy
			err := DeleteSubvolume(ctx, snap)
			destroyFn = destroy
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("DeleteSubvolume = %v, want %v", err, tc.wantErr)
			}
			ok, err := IsSubvolume(snap)
			if gone := errors.Is(err, os.ErrNotExist); gone != tc.wantGone || (!gone && !ok) {
				t.Fatalf("after delete: IsSubvolume = %v, %v; want gone=%v", ok, err, tc.wantGone)
			}
			if !tc.wantGone {
				if ro, err := IsReadOnly(snap); err != nil || !ro {
					t.Errorf("failed delete left snapshot read-only=%v (%v); want flag restored", ro, err)
				}
			}
		})
	}
}
