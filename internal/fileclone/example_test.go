//go:build linux

package fileclone_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/cairn-csi/cairn/internal/fileclone"
)

// Clone a thin image: a 1 GiB file holding 4 KiB of data costs a reflink
// or a 4 KiB copy, never 1 GiB.
func ExampleCloneFile() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "fileclone-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	src := filepath.Join(dir, "vol-1.img")
	if err := os.WriteFile(src, []byte("superblock"), 0o600); err != nil {
		log.Fatal(err)
	}
	if err := os.Truncate(src, 1<<30); err != nil {
		log.Fatal(err)
	}

	dst := filepath.Join(dir, "vol-2.img")
	m, err := fileclone.CloneFile(ctx, src, dst)
	if err != nil {
		log.Fatal(err)
	}
	fi, err := os.Stat(dst)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(filepath.Base(dst), fi.Size(), "bytes,", fi.Mode().Perm())
	_ = m // fileclone.Reflink or fileclone.SparseCopy, depending on the filesystem
	// Output: vol-2.img 1073741824 bytes, -rw-------
}
