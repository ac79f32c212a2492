package btrfspool_test

import (
	"context"
	"fmt"
	"log"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/backend/btrfspool"
	"github.com/cairn-csi/cairn/internal/errdefs"
)

// A volume's life in a btrfs pool: a subvolume limited to its capacity,
// grown, snapshotted and restored, each step one ioctl or two whatever the
// volume holds. Needs root and a mounted btrfs filesystem.
func Example() {
	ctx := context.Background()
	p, err := btrfspool.New(ctx, "/srv/cairn/btrfs-pool", nil) // turns quotas on
	if err != nil {
		log.Fatal(err)
	}
	commit := func(backend.Volume) error { return nil } // the driver's store transaction
	if _, err := p.CreateVolume(ctx, "vol-1", backend.Spec{CapacityBytes: 1 << 30}, commit); err != nil {
		log.Fatal(err)
	}
	if _, err := p.ExpandVolume(ctx, "vol-1", 2<<30); err != nil { // a new qgroup limit
		log.Fatal(err)
	}
	s, err := p.CreateSnapshot(ctx, "snap-1", "vol-1", func(backend.Snapshot) error { return nil })
	if err != nil {
		log.Fatal(err)
	}
	r, err := p.CreateVolumeFrom(ctx, "vol-2", backend.Spec{CapacityBytes: 1 << 30}, backend.ContentSource{SnapshotID: s.ID}, commit)
	if err != nil {
		log.Fatal(err)
	}
	u, err := p.Usage(ctx, r.ID)
	if err != nil {
		log.Fatal(err)
	}
	// The restore is at least as big as the volume was when snapshotted.
	fmt.Println(s.SizeBytes>>30, "GiB snapshot restored as", r.CapacityBytes>>30, "GiB;", u.UsedBytes, "bytes used")
}

// A pool path on any other filesystem is refused before anything is made
// there, naming what was found.
func ExampleNew_notBtrfs() {
	_, err := btrfspool.New(context.Background(), "/proc/cairn", nil)
	fmt.Println(err)
	fmt.Println(errdefs.Is(err, errdefs.ErrInvalidArgument))
	// Output:
	// btrfs pool /proc/cairn (its nearest existing parent /proc) is on proc (statfs type 0x9fa0), not btrfs: invalid argument
	// true
}
