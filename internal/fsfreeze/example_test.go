//go:build linux

package fsfreeze_test

import (
	"context"
	"errors"
	"log"

	"github.com/cairn-csi/cairn/internal/fsfreeze"
)

// Freeze a volume's filesystem around a snapshot of its image, and leave a
// freeze that someone else holds alone. The example needs root and a
// mounted filesystem, so it is compiled but not run.
func ExampleFreeze() {
	ctx := context.Background()
	thaw, err := fsfreeze.Freeze(ctx, "/var/lib/kubelet/plugins/cairn/staging/vol-1")
	if errors.Is(err, fsfreeze.ErrAlreadyFrozen) {
		log.Fatal("frozen by someone else; try again later")
	}
	if err != nil {
		log.Fatal(err)
	}
	// ... reflink the image file ...
	if err := thaw(); err != nil {
		log.Fatal(err) // fsfreeze.ErrNotFrozen: the snapshot may be inconsistent
	}
}
