//go:build linux

package loopdev_test

import (
	"context"
	"fmt"
	"log"

	"github.com/cairn-csi/cairn/internal/loopdev"
)

// Attach an image file, reusing a device a previous, interrupted attempt
// left behind. The example needs root and an image, so it is compiled but
// not run.
func ExampleAttach() {
	ctx := context.Background()
	const image = "/srv/cairn/images/vol-1.img"

	found, err := loopdev.FindByBackingFile(ctx, image)
	if err != nil {
		log.Fatal(err)
	}
	var dev loopdev.Device
	if len(found) > 0 && !found[0].Deleted {
		dev = found[0]
	} else if dev, err = loopdev.Attach(ctx, image, loopdev.Options{DirectIO: true}); err != nil {
		log.Fatal(err)
	}
	fmt.Println("attached at", dev.Path, "direct I/O:", dev.DirectIO)

	// ... mount dev.Path, use it, unmount ...

	if err := loopdev.Detach(ctx, dev.Path); err != nil {
		log.Fatal(err)
	}
}
