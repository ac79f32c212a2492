//go:build linux

package fileclone

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/cairn-csi/cairn/internal/testfs"
	"golang.org/x/sys/unix"
)

// BenchmarkCloneFile1GiB clones a 1 GiB file of pseudo-random data by
// reflink on btrfs and by copy on ext4, each on a loop filesystem of its own.
// The source is written once per sub-benchmark, outside the timer; each
// iteration's copy is removed outside the timer too.
func BenchmarkCloneFile1GiB(b *testing.B) {
	testfs.RequireRoot(b)
	const size = 1 << 30
	for _, bc := range []struct {
		name   string
		fstype string
		want   Method
	}{
		{"reflink-btrfs", "btrfs", Reflink},
		{"sparse-ext4", "ext4", SparseCopy},
	} {
		b.Run(bc.name, func(b *testing.B) {
			mnt := testfs.New(b, bc.fstype, 3<<30)
			src := filepath.Join(mnt, "src.img")
			writeLayout(b, src, layout{size: size, data: []extent{{0, size}}})
			ctx := context.Background()
			b.SetBytes(size)
			b.ResetTimer()
			for i := range b.N {
				dst := filepath.Join(mnt, fmt.Sprintf("dst-%d.img", i))
				m, err := CloneFile(ctx, src, dst)
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if m != bc.want {
					b.Fatalf("method = %v; want %v", m, bc.want)
				}
				if err := unix.Unlink(dst); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}
