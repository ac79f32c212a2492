package btrfs_test

import (
	"context"
	"fmt"
	"log"
	"path/filepath"

	"github.com/cairn-csi/cairn/internal/btrfs"
)

// A volume's life in a btrfs pool: a subvolume capped by a qgroup limit,
// snapshotted read-only, and deleted with its qgroup.
func Example() {
	ctx := context.Background()
	pool := "/srv/cairn/btrfs-pool" // a mounted btrfs filesystem

	if err := btrfs.EnableQuota(ctx, pool); err != nil { // once per pool; idempotent
		log.Fatal(err)
	}
	if err := btrfs.CreateSubvolume(ctx, pool, "vol-1"); err != nil {
		log.Fatal(err)
	}
	vol := filepath.Join(pool, "vol-1")
	if err := btrfs.SetLimit(ctx, vol, 1<<30); err != nil {
		log.Fatal(err)
	}
	if err := btrfs.Snapshot(ctx, vol, pool, "snap-1", true); err != nil {
		log.Fatal(err)
	}
	used, _, limit, err := btrfs.Usage(ctx, vol)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d of %d bytes used\n", used, limit)
	for _, p := range []string{vol, filepath.Join(pool, "snap-1")} {
		if err := btrfs.DeleteSubvolume(ctx, p); err != nil {
			log.Fatal(err)
		}
	}
}

func ExampleIsBtrfs() {
	ok, err := btrfs.IsBtrfs("/proc")
	fmt.Println(ok, err)
	// Output: false <nil>
}
