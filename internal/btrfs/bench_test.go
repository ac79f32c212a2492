package btrfs

import (
	"context"
	"github.com/cairn-csi/cairn/internal/testfs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// BenchmarkSnapshot1GiB times Snapshot of a subvolume holding 1 GiB of
// incompressible data. Filling the subvolume, and deleting each snapshot,
// happen outside the timer; a snapshot's cost is a transaction commit, not a
// copy, so it should not grow with the data.
func BenchmarkSnapshot1GiB(b *testing.B) {
	ctx := context.Background()
	mnt := testfs.New(b, "btrfs", 3<<30)
	src := filepath.Join(mnt, "src")
	if err := CreateSubvolume(ctx, mnt, "src"); err != nil {
		b.Fatal(err)
	}
	fillRandom(b, filepath.Join(src, "data"), 1<<30)

	for _, bc := range []struct {
		name     string
		readOnly bool
	}{
		{"readonly", true},
		{"writable", false},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				b.StartTimer()
				if err := Snapshot(ctx, src, mnt, "snap", bc.readOnly); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := DeleteSubvolume(ctx, filepath.Join(mnt, "snap")); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func fillRandom(b *testing.B, path string, size int64) {
	b.Helper()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	rng := rand.NewChaCha8([32]byte{'c', 'a', 'i', 'r', 'n'})
	buf := make([]byte, 4<<20)
	for written := int64(0); written < size; written += int64(len(buf)) {
		rng.Read(buf)
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	// syncfs too, so the first timed snapshot does not pay for metadata
	// that fsync left in the running transaction.
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		b.Fatal(err)
	}
}
