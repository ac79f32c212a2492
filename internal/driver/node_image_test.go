package driver

import (
	"slices"
	"testing"
)

// TestMkfsBlockSize closes part of issue 10 item 5: the logical block size
// pinned on a device about to be formatted must not exceed the block
// (ext) or sector (xfs) size mkfs will use, or the new filesystem cannot
// be mounted on the next attach.
func TestMkfsBlockSize(t *testing.T) {
	for _, tc := range []struct {
		fs   string
		opts []string
		want uint32
	}{
		{"ext4", nil, 4096},
		{"ext4", []string{"-L", "x"}, 4096},
		{"ext4", []string{"-b", "1024"}, 1024},
		{"ext4", []string{"-b", "65536"}, 4096},
		{"xfs", nil, 4096},
		{"xfs", []string{"-s", "size=512"}, 512},
		{"xfs", []string{"-b", "size=1024"}, 1024}, // a sector must fit in a block
		{"xfs", []string{"-b", "size=8192"}, 4096},
		{"xfs", []string{"-s", "size=4096", "-b", "size=2048"}, 2048},
		{"btrfs", []string{"-s", "size=512"}, 4096},
	} {
		if got := mkfsBlockSize(tc.fs, tc.opts); got != tc.want {
			t.Errorf("mkfsBlockSize(%s, %q) = %d, want %d", tc.fs, tc.opts, got, tc.want)
		}
	}
}

// TestMkfsArgs: new filesystems get the pinned size unless the
// StorageClass chose one (two -b would make mke2fs refuse).
func TestMkfsArgs(t *testing.T) {
	for _, tc := range []struct {
		fs   string
		opts []string
		want []string
	}{
		{"ext4", nil, []string{"-F", "-m0", "-b", "4096", "/dev/loop9"}},
		{"ext4", []string{"-b", "1024"}, []string{"-F", "-m0", "-b", "1024", "/dev/loop9"}},
		{"xfs", []string{"-L", "l"}, []string{"-f", "-s", "size=4096", "-L", "l", "/dev/loop9"}},
		{"xfs", []string{"-s", "size=512"}, []string{"-f", "-s", "size=512", "/dev/loop9"}},
		{"xfs", []string{"-b", "size=1024"}, []string{"-f", "-s", "size=1024", "-b", "size=1024", "/dev/loop9"}},
		{"btrfs", nil, []string{"-f", "/dev/loop9"}},
	} {
		if got := mkfsArgs(tc.fs, tc.opts, "/dev/loop9"); !slices.Equal(got, tc.want) {
			t.Errorf("mkfsArgs(%s, %q) = %q, want %q", tc.fs, tc.opts, got, tc.want)
		}
	}
}

// TestClampBlockSize: loop devices take 512..4096, powers of two, and must
// not exceed the filesystem's sector size.
func TestClampBlockSize(t *testing.T) {
	for n, want := range map[int64]uint32{0: 512, 512: 512, 1024: 1024, 2048: 2048, 3000: 2048, 4096: 4096, 65536: 4096} {
		if got := clampBlockSize(n); got != want {
			t.Errorf("clampBlockSize(%d) = %d, want %d", n, got, want)
		}
	}
}
