package backend_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/backend/dirpool"
)

// The lifecycle of the package comment, on a dir pool in a temporary
// directory: the driver reconciles at start-up, then creates, reaches,
// snapshots and deletes, each change with its store transaction as the
// commit callback.
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "backend-example-")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)

	var b backend.Backend
	b, err = dirpool.New(ctx, filepath.Join(dir, "fast"), nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	// At start-up: what the store knows. Nothing yet, so nothing is missing.
	rep, err := b.Reconcile(ctx, backend.Inventory{})
	fmt.Println("reconciled:", len(rep.Missing), "missing,", err)

	commit := func(backend.Volume) error { return nil } // the store transaction
	v, err := b.CreateVolume(ctx, "vol-1", backend.Spec{CapacityBytes: 1 << 30}, commit)
	fmt.Println("created:", v.ID, v.CapacityBytes>>30, "GiB,", err)

	src, err := b.Source(ctx, "vol-1") // the node layer bind-mounts src.Path
	fmt.Println("source:", src.Kind, filepath.Base(src.Path), err)

	if sn, ok := b.(backend.Snapshotter); ok {
		s, err := sn.CreateSnapshot(ctx, "snap-1", "vol-1", func(backend.Snapshot) error { return nil })
		fmt.Println("snapshot:", s.ID, "of", s.VolumeID, err)
		fmt.Println("snapshot deleted:", sn.DeleteSnapshot(ctx, "snap-1", func() error { return nil }))
	}
	fmt.Println("block volumes:", backend.SupportsBlock(b))

	err = b.DeleteVolume(ctx, "vol-1", func() error { return nil })
	_, gone := b.Source(ctx, "vol-1")
	fmt.Println("deleted:", err, "then:", gone != nil)
	// Output:
	// reconciled: 0 missing, <nil>
	// created: vol-1 1 GiB, <nil>
	// source: directory vol-1 <nil>
	// snapshot: snap-1 of vol-1 <nil>
	// snapshot deleted: <nil>
	// block volumes: false
	// deleted: <nil> then: true
}
