package fsprobe

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

const mib = 1 << 20

// image makes a sparse file of size bytes and runs mkfs on it.
func image(t *testing.T, size int64, mkfs ...string) string {
	t.Helper()
	if _, err := exec.LookPath(mkfs[0]); err != nil {
		t.Skipf("%s is not installed", mkfs[0])
	}
	path := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	run(t, append(mkfs, path)...)
	return path
}

func run(t *testing.T, args ...string) {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
}

// TestRead closes the hole of issue 10 item 5 and 9c at their root: the
// node needs each filesystem's sector size (to pin the loop device's
// logical block size) and its size (to grow only when the device is
// larger), read from the superblock; a wrong offset here would pin the
// wrong size or grow on every stage.
func TestRead(t *testing.T) {
	for _, tc := range []struct {
		name             string
		size             int64
		mkfs             []string
		typ              string
		block, sect, got int64
	}{
		{"ext4 1k", 64 * mib, []string{"mkfs.ext4", "-q", "-F", "-b", "1024"}, "ext4", 1024, 1024, 64 * mib},
		{"ext4 4k", 64 * mib, []string{"mkfs.ext4", "-q", "-F", "-b", "4096"}, "ext4", 4096, 4096, 64 * mib},
		{"ext4 64bit", 96 * mib, []string{"mkfs.ext4", "-q", "-F", "-b", "4096", "-O", "64bit"}, "ext4", 4096, 4096, 96 * mib},
		{"ext3", 64 * mib, []string{"mkfs.ext3", "-q", "-F"}, "ext3", 0, 0, 64 * mib},
		{"ext2", 64 * mib, []string{"mkfs.ext2", "-q", "-F", "-b", "2048"}, "ext2", 2048, 2048, 64 * mib},
		{"xfs 512", 300 * mib, []string{"mkfs.xfs", "-q", "-f", "-s", "size=512"}, "xfs", 4096, 512, 300 * mib},
		{"xfs 4096", 300 * mib, []string{"mkfs.xfs", "-q", "-f", "-s", "size=4096"}, "xfs", 4096, 4096, 300 * mib},
		{"btrfs", 128 * mib, []string{"mkfs.btrfs", "-q", "-f", "--sectorsize", "4096"}, "btrfs", 4096, 4096, 128 * mib},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info, err := Read(context.Background(), image(t, tc.size, tc.mkfs...))
			if err != nil {
				t.Fatal(err)
			}
			if info.Type != tc.typ || info.Size != tc.got ||
				(tc.block != 0 && (info.BlockSize != tc.block || info.SectorSize != tc.sect)) {
				t.Errorf("Read = %+v; want type %s, block %d, sector %d, size %d", info, tc.typ, tc.block, tc.sect, tc.got)
			}
			if g := info.GrowTarget(tc.size); g != info.Size {
				t.Errorf("GrowTarget(own device size %d) = %d, want its size %d: an unchanged volume would be grown", tc.size, g, info.Size)
			}
		})
	}
}

// TestReadBlank checks that a blank or foreign device is told apart from
// a filesystem: the stage path formats only what has none.
func TestReadBlank(t *testing.T) {
	for _, size := range []int64{0, 4096, 64 * mib} {
		path := filepath.Join(t.TempDir(), "blank")
		if err := os.WriteFile(path, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(path, size); err != nil {
			t.Fatal(err)
		}
		if _, err := Read(context.Background(), path); !errors.Is(err, ErrNoFilesystem) {
			t.Errorf("Read(blank %d bytes) = %v; want ErrNoFilesystem", size, err)
		}
	}
}

// TestExtGrowTarget checks GrowTarget against resize2fs itself, including
// tails too small for a block group, which resize2fs leaves unused: were
// the estimate larger than what resize2fs does, every stage of such a
// volume would run resize2fs again (issue 10 item 9c).
func TestExtGrowTarget(t *testing.T) {
	for _, tc := range []struct {
		name       string
		from, to   int64
		blockSize  string
		wantGrowth bool
	}{
		{"same size", 200 * mib, 200 * mib, "4096", false},
		{"one MiB more, inside the last group", 200 * mib, 201 * mib, "4096", true},
		{"a new group", 128 * mib, 300 * mib, "4096", true},
		{"a tiny new group", 128 * mib, 129 * mib, "4096", false},
		{"1k blocks", 64 * mib, 80 * mib, "1024", true},
		// mke2fs leaves the last group one block short with 1k blocks
		// (block 0 is the boot block): a little growth fills it.
		{"1k blocks, tiny tail", 64 * mib, 64*mib + 64<<10, "1024", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := image(t, tc.from, "mkfs.ext4", "-q", "-F", "-b", tc.blockSize)
			before, err := Read(context.Background(), path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(path, tc.to); err != nil {
				t.Fatal(err)
			}
			target := before.GrowTarget(tc.to)
			if grows := target > before.Size; grows != tc.wantGrowth {
				t.Errorf("GrowTarget(%d) = %d from %d: growth %v, want %v", tc.to, target, before.Size, grows, tc.wantGrowth)
			}
			run(t, "e2fsck", "-f", "-p", path)
			run(t, "resize2fs", path)
			after, err := Read(context.Background(), path)
			if err != nil {
				t.Fatal(err)
			}
			if after.Size != target {
				t.Errorf("resize2fs grew to %d bytes; GrowTarget said %d", after.Size, target)
			}
		})
	}
}

// TestBtrfsGrowTarget: the kernel refuses to resize a btrfs device below
// 256 MiB, so a stage that tried would fail forever (issue 10 item 9c's
// check must say "nothing to grow" there).
func TestBtrfsGrowTarget(t *testing.T) {
	info := Info{Type: "btrfs", BlockSize: 4096, SectorSize: 4096, Size: 128 * mib}
	for _, tc := range []struct{ dev, want int64 }{
		{128 * mib, 128 * mib},
		{192 * mib, 128 * mib},
		{256 * mib, 256 * mib},
		{320*mib + 100, 320 * mib},
	} {
		if got := info.GrowTarget(tc.dev); got != tc.want {
			t.Errorf("GrowTarget(%d) = %d, want %d", tc.dev, got, tc.want)
		}
	}
}
