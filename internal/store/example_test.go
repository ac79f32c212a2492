package store_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/store"
)

// Open the store, record a volume in one transaction, and find it again by
// the name the CO gave, as a repeated CreateVolume does.
func ExampleOpen() {
	dir, err := os.MkdirTemp("", "cairn-store")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)

	ctx := context.Background()
	// The timeout matters: without it, a second process would wait forever
	// on the database lock.
	s, err := store.Open(ctx, filepath.Join(dir, "cairn.db"), 5*time.Second)
	if err != nil {
		panic(err)
	}
	defer s.Close()

	err = s.Update(ctx, func(tx *store.Tx) error {
		id, err := tx.NewID(store.VolumePrefix)
		if err != nil {
			return err
		}
		return tx.PutVolume(store.Volume{ID: id, Name: "pvc-1234", Pool: "default", CapacityBytes: 1 << 30, AccessType: "mount"})
	})
	if err != nil {
		panic(err)
	}

	_ = s.View(ctx, func(tx *store.Tx) error {
		v, err := tx.VolumeByName("pvc-1234")
		fmt.Println(v.Name, v.Pool, v.CapacityBytes, err)
		_, err = tx.VolumeByName("pvc-other")
		fmt.Println("unknown name is NotFound:", errdefs.Is(err, errdefs.ErrNotFound))
		return nil
	})
	// Output:
	// pvc-1234 default 1073741824 <nil>
	// unknown name is NotFound: true
}
