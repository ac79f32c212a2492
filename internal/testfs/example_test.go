//go:build linux

package testfs_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/cairn-csi/cairn/internal/testfs"
)

// A test that needs a project-quota ext4 filesystem of its own. New skips
// the test when not root or when mkfs.ext4 is missing, and cleans up after
// it; the example is compiled, not run, since it needs a *testing.T.
func ExampleNew() {
	testQuota := func(t *testing.T) {
		mnt := testfs.New(t, "ext4-prjquota", 64<<20)
		if err := os.Mkdir(filepath.Join(mnt, "vol-1"), 0o755); err != nil {
			t.Fatal(err)
		}
		// ... set a project quota on vol-1 and check it is enforced ...
	}
	_ = testQuota
}
