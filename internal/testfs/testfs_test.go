//go:build linux

package testfs

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/loopdev"
)

func TestNew(t *testing.T) {
	RequireRoot(t)
	for _, tc := range []struct {
		fstype string
		magic  int64
	}{
		{"ext4", unix.EXT4_SUPER_MAGIC},
		{"ext4-prjquota", unix.EXT4_SUPER_MAGIC},
		{"xfs", unix.XFS_SUPER_MAGIC},
		{"xfs-noquota", unix.XFS_SUPER_MAGIC},
		{"btrfs", unix.BTRFS_SUPER_MAGIC},
	} {
		var fs *FS
		t.Run(tc.fstype, func(t *testing.T) {
			fs = NewFS(t, tc.fstype, 0)
			var st unix.Statfs_t
			if err := unix.Statfs(fs.MountPoint, &st); err != nil {
				t.Fatal(err)
			}
			if int64(st.Type) != tc.magic {
				t.Errorf("filesystem magic = %#x; want %#x", st.Type, tc.magic)
			}
			if err := os.WriteFile(filepath.Join(fs.MountPoint, "f"), []byte("data"), 0o644); err != nil {
				t.Fatal(err)
			}
			// Cleanups run last-registered first, so a test may close its
			// files in its own cleanup and still have them closed before
			// the unmount.
			f, err := os.Open(filepath.Join(fs.MountPoint, "f"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
		})
		if fs == nil {
			continue // skipped before making anything
		}
		// The subtest's cleanup has run: nothing of it may be left.
		found, err := loopdev.FindByBackingFile(context.Background(), fs.Image)
		if err != nil {
			t.Fatal(err)
		}
		if len(found) != 0 {
			t.Errorf("%s: devices left attached: %+v", tc.fstype, found)
		}
		if _, err := os.Stat(fs.Image); !os.IsNotExist(err) {
			t.Errorf("%s: image not removed: %v", tc.fstype, err)
		}
	}
}

func TestTypes(t *testing.T) {
	want := []string{"btrfs", "ext4", "ext4-encrypt", "ext4-prjquota", "xfs", "xfs-noquota"}
	got := Types()
	if len(got) != len(want) {
		t.Fatalf("Types() = %v; want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("Types() = %v; want %v", got, want)
		}
	}
}

func TestRemount(t *testing.T) {
	fs := NewFS(t, "ext4", 0)
	p := filepath.Join(fs.MountPoint, "f")
	if err := os.WriteFile(p, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	fs.Remount(t)
	if got, err := os.ReadFile(p); err != nil || string(got) != "data" {
		t.Errorf("after Remount: %q, %v; want the data written before", got, err)
	}
}
