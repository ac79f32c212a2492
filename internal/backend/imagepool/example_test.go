//go:build linux

package imagepool_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/backend/imagepool"
)

// A volume's life in an image pool: created as a sparse image rounded up to
// whole MiB, reached by the node as an image file, grown, snapshotted and
// restored. Needs no root: the pool only makes files.
func Example() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "imagepool-example-")
	defer os.RemoveAll(dir)

	p, err := imagepool.New(ctx, filepath.Join(dir, "pool"), nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	commit := func(backend.Volume) error { return nil } // the driver's store transaction
	v, _ := p.CreateVolume(ctx, "vol-1", backend.Spec{CapacityBytes: 100_000_000}, commit)
	src, _ := p.Source(ctx, "vol-1")
	fmt.Println(v.CapacityBytes>>20, "MiB", src.Kind, filepath.Base(src.Path))

	grown, _ := p.ExpandVolume(ctx, "vol-1", 200<<20)
	fmt.Println("grown to", grown>>20, "MiB")

	s, _ := p.CreateSnapshot(ctx, "snap-1", "vol-1", func(backend.Snapshot) error { return nil })
	r, _ := p.CreateVolumeFrom(ctx, "vol-2", backend.Spec{CapacityBytes: 1 << 30}, backend.ContentSource{SnapshotID: s.ID}, commit)
	fmt.Println("snapshot of", s.VolumeID, s.SizeBytes>>20, "MiB; restored as", r.ID, r.CapacityBytes>>20, "MiB")

	id, ok := p.VolumeForImage(src.Path)
	fmt.Println("image belongs to", id, ok)
	// Output:
	// 96 MiB image vol-1
	// grown to 200 MiB
	// snapshot of vol-1 200 MiB; restored as vol-2 1024 MiB
	// image belongs to vol-1 true
}
