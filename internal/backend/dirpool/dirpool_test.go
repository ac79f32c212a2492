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

func newPool(t *testing.T, root string) *dirpool.Pool {
	t.Helper()
	p, err := dirpool.New(context.Background(), root, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestSuite runs the shared backend suite on a plain directory and, as
// root, on throwaway filesystems: ext4 without quota (sparse copies), ext4
// and XFS with project quota (sizes enforced; both skip on kernels built
// without quota support, and run in the VM lane, hack/vm-lane.sh), and
// btrfs (reflink copies).
func TestSuite(t *testing.T) {
	t.Run("tmpdir", func(t *testing.T) {
		backendtest.Run(t, func(t *testing.T) (backend.Backend, string) {
			root := filepath.Join(t.TempDir(), "pool")
			return newPool(t, root), root
		})
	})
	for _, tc := range []struct {
		fs       string
		enforced bool
	}{
		{"ext4", false},
		{"ext4-prjquota", true},
		{"xfs", true}, // testfs mounts "xfs" with prjquota
		{"btrfs", false},
	} {
		t.Run(tc.fs, func(t *testing.T) {
			testfs.RequireRoot(t)
			mnt := testfs.New(t, tc.fs, 512<<20)
			n := 0
			backendtest.Run(t, func(t *testing.T) (backend.Backend, string) {
				n++
				root := filepath.Join(mnt, "pool", string(rune('a'+n)))
				p := newPool(t, root)
				// Otherwise the quota runs would pass without quota.
				if c, err := p.Capacity(context.Background()); err != nil || c.Enforced != tc.enforced {
					t.Fatalf("dir pool on %s: Capacity = %+v, %v; want Enforced %t", tc.fs, c, err, tc.enforced)
				}
				return p, root
			})
		})
	}
}
