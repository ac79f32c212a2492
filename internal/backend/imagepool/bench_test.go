//go:build linux

package imagepool_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/testfs"
)

// BenchmarkCopy1GiB measures CreateSnapshot and CreateVolumeFrom (a clone)
// of a volume holding 1 GiB of pseudo-random data, on filesystems that
// share extents (btrfs, xfs with reflink=1: the copy is a FICLONE) and on
// one that does not (ext4: a sparse copy of every data extent). Each
// sub-benchmark has its own loop filesystem; the source is written once,
// outside the timer, and each copy is deleted outside the timer.
func BenchmarkCopy1GiB(b *testing.B) {
	testfs.RequireRoot(b)
	const size = 1 << 30
	for _, fs := range filesystems {
		for _, op := range []string{"snapshot", "clone"} {
			b.Run(fs.fstype+"/"+op, func(b *testing.B) {
				ctx := context.Background()
				mnt := testfs.New(b, fs.fstype, 4<<30, fs.mkfsArgs...)
				p := newPool(b, mnt+"/pool")
				if _, err := p.CreateVolume(ctx, "vol-src", backend.Spec{CapacityBytes: size}, commitOK); err != nil {
					b.Fatal(err)
				}
				fillRandom(b, mustSource(b, p, "vol-src"), size)
				b.SetBytes(size)
				b.ResetTimer()
				for i := range b.N {
					id := fmt.Sprintf("copy-%d", i)
					var err error
					if op == "snapshot" {
						_, err = p.CreateSnapshot(ctx, id, "vol-src", func(backend.Snapshot) error { return nil })
					} else {
						_, err = p.CreateVolumeFrom(ctx, id, backend.Spec{CapacityBytes: size}, backend.ContentSource{VolumeID: "vol-src"}, commitOK)
					}
					if err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					if op == "snapshot" {
						err = p.DeleteSnapshot(ctx, id, func() error { return nil })
					} else {
						err = p.DeleteVolume(ctx, id, func() error { return nil })
					}
					if err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
			})
		}
	}
}

// fillRandom overwrites the first n bytes of path with pseudo-random data
// (incompressible, no zero blocks to skip) and syncs it.
func fillRandom(b *testing.B, path string, n int64) {
	b.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if _, err := io.Copy(f, io.LimitReader(rand.NewChaCha8([32]byte{7}), n)); err != nil {
		b.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
}
