package dirpool_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/backend/backendtest"
	"github.com/cairn-csi/cairn/internal/backend/dirpool"
	"github.com/cairn-csi/cairn/internal/testfs"
)

func newPool(t *testing.T, root string) backend.Backend {
	p, err := dirpool.New(context.Background(), root)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestSuite runs the shared backend suite on a plain directory and, as
// root, on ext4 without quota and on ext4 with project quota.
func TestSuite(t *testing.T) {
	t.Run("tmpdir", func(t *testing.T) {
		backendtest.Run(t, func(t *testing.T) (backend.Backend, string) {
			root := filepath.Join(t.TempDir(), "pool")
			return newPool(t, root), root
		})
	})
	for _, fs := range []string{"ext4", "ext4-prjquota"} {
		t.Run(fs, func(t *testing.T) {
			testfs.RequireRoot(t)
			mnt := testfs.New(t, fs, 256<<20)
			n := 0
			backendtest.Run(t, func(t *testing.T) (backend.Backend, string) {
				n++
				root := filepath.Join(mnt, "pool", string(rune('a'+n)))
				return newPool(t, root), root
			})
		})
	}
}
