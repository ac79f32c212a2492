package projquota_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/cairn-csi/cairn/internal/projquota"
)

// A directory volume capped at 1 GiB: tag its empty directory with the
// volume's project ID, limit the project, read usage, and clear the limit
// when the volume goes.
func Example() {
	ctx := context.Background()
	pool := "/srv/cairn/dir-pool" // ext4 or XFS mounted with -o prjquota
	const project = 1001          // unique per filesystem, never 0

	ok, err := projquota.Supported(ctx, pool)
	if err != nil || !ok {
		log.Fatalf("no project quotas on %s: %v", pool, err)
	}
	vol := filepath.Join(pool, "vol-1")
	if err := os.Mkdir(vol, 0o750); err != nil {
		log.Fatal(err)
	}
	if err := projquota.SetProject(ctx, vol, project); err != nil {
		log.Fatal(err)
	}
	if err := projquota.SetLimit(ctx, pool, project, 1<<30); err != nil {
		log.Fatal(err)
	}
	used, limit, inodes, err := projquota.Usage(ctx, pool, project)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d of %d bytes, %d inodes\n", used, limit, inodes)

	if err := os.RemoveAll(vol); err != nil {
		log.Fatal(err)
	}
	if err := projquota.ClearLimit(ctx, pool, project); err != nil {
		log.Fatal(err)
	}
}

func ExampleSupported() {
	ok, err := projquota.Supported(context.Background(), "/proc")
	fmt.Println(ok, err)
	// Output: false <nil>
}
