package dirpool_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/backend/dirpool"
	"github.com/cairn-csi/cairn/internal/projquota"
)

// A volume's life in a dir pool: a directory, snapshotted as a copy and
// restored. Sizes are enforced exactly where the filesystem has project
// quota. Needs no root where there is none.
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "dirpool-example-")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	root := filepath.Join(dir, "pool")

	p, err := dirpool.New(ctx, root, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	c, _ := p.Capacity(ctx)
	quota, _ := projquota.Supported(ctx, root)
	fmt.Println("sizes enforced where project quota is:", c.Enforced == quota)

	commit := func(backend.Volume) error { return nil } // the driver's store transaction
	p.CreateVolume(ctx, "vol-1", backend.Spec{CapacityBytes: 1 << 30}, commit)
	src, _ := p.Source(ctx, "vol-1")
	os.WriteFile(filepath.Join(src.Path, "greeting"), []byte("hello"), 0o644)

	p.CreateSnapshot(ctx, "snap-1", "vol-1", func(backend.Snapshot) error { return nil })
	r, _ := p.CreateVolumeFrom(ctx, "vol-2", backend.Spec{CapacityBytes: 2 << 30}, backend.ContentSource{SnapshotID: "snap-1"}, commit)
	rsrc, _ := p.Source(ctx, r.ID)
	data, _ := os.ReadFile(filepath.Join(rsrc.Path, "greeting"))
	fmt.Println(r.ID, r.CapacityBytes>>30, "GiB:", string(data))
	// Output:
	// sizes enforced where project quota is: true
	// vol-2 2 GiB: hello
}
