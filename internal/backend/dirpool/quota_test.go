package dirpool_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/backend/dirpool"
	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/projquota"
	"github.com/cairn-csi/cairn/internal/testfs"
)

const mib = 1 << 20

func commitVol(backend.Volume) error    { return nil }
func commitSnap(backend.Snapshot) error { return nil }

// quotaErrno is what a write past a project's hard limit gets on the
// filesystem at path: ENOSPC on XFS, EDQUOT on ext4.
func quotaErrno(t *testing.T, path string) unix.Errno {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Type == unix.XFS_SUPER_MAGIC {
		return unix.ENOSPC
	}
	return unix.EDQUOT
}

// wantFull checks that a write into dir stopped at the volume's limit
// with the filesystem's quota error: EDQUOT on ext4, ENOSPC on XFS.
func wantFull(t *testing.T, dir, what string, written int64, err error) {
	t.Helper()
	if want := quotaErrno(t, dir); !errors.Is(err, want) {
		t.Fatalf("%s: wrote %d bytes, err %v; want %v", what, written, err, want)
	}
}

func source(t *testing.T, p *dirpool.Pool, id string) string {
	t.Helper()
	src, err := p.Source(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return src.Path
}

func usage(t *testing.T, p *dirpool.Pool, id string) backend.Usage {
	t.Helper()
	u, err := p.Usage(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// projectOf returns the project ID of dir and checks that everything
// under it has the same one, with directories passing it on.
func projectOf(t *testing.T, dir string) uint32 {
	t.Helper()
	ctx := context.Background()
	want, err := projquota.GetProject(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.Type()&fs.ModeSymlink != 0 {
			return err // a symlink cannot be opened to ask
		}
		got, err := projquota.GetProject(ctx, path)
		if err != nil {
			return err
		}
		if got != want {
			t.Errorf("%s has project %d, want %d like %s", path, got, want, dir)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return want
}

// quotaFS makes a filesystem with project quota and a dir pool on it.
func quotaFS(t *testing.T, kind string) (*dirpool.Pool, string) {
	t.Helper()
	mnt := testfs.New(t, kind, 512*mib)
	root := filepath.Join(mnt, "pool")
	p := newPool(t, root)
	if c, err := p.Capacity(context.Background()); err != nil || !c.Enforced {
		t.Fatalf("dir pool on %s: Capacity = %+v, %v; want Enforced", kind, c, err)
	}
	return p, root
}

// TestQuotaEnforced fills volumes past their capacity as an unprivileged
// writer would, on each filesystem with project quota: new volumes,
// expanded ones, restores and clones each have a limit of their own.
func TestQuotaEnforced(t *testing.T) {
	for _, kind := range []string{"ext4-prjquota", "xfs"} {
		t.Run(kind, func(t *testing.T) {
			ctx := context.Background()
			p, _ := quotaFS(t, kind)
			if _, err := p.CreateVolume(ctx, "vol-a", backend.Spec{CapacityBytes: 16 * mib}, commitVol); err != nil {
				t.Fatal(err)
			}
			a := source(t, p, "vol-a")
			projA := projectOf(t, a)
			if projA == 0 {
				t.Fatal("a volume on a quota filesystem has no project ID")
			}
			written, err := testfs.WriteFileUnprivileged(filepath.Join(a, "big"), 32*mib)
			wantFull(t, a, "writing 32 MiB into a 16 MiB volume", written, err)
			if u := usage(t, p, "vol-a"); u.TotalBytes != 16*mib || u.UsedBytes > 16*mib+mib || u.UsedInodes < 2 {
				t.Errorf("Usage of a full 16 MiB volume = %+v", u)
			}

			if got, err := p.ExpandVolume(ctx, "vol-a", 48*mib); err != nil || got != 48*mib {
				t.Fatalf("ExpandVolume(48 MiB) = %d, %v", got, err)
			}
			if _, err := testfs.WriteFileUnprivileged(filepath.Join(a, "big"), 32*mib); err != nil {
				t.Fatalf("writing 32 MiB after expanding to 48 MiB: %v", err)
			}
			if err := os.MkdirAll(filepath.Join(a, "sub", "dir"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("../big", filepath.Join(a, "sub", "link")); err != nil {
				t.Fatal(err)
			}
			if _, err := testfs.WriteFileUnprivileged(filepath.Join(a, "sub", "dir", "small"), mib); err != nil {
				t.Fatal(err)
			}
			projectOf(t, a) // what the workload made inherits the ID

			if _, err := p.CreateSnapshot(ctx, "snap-1", "vol-a", commitSnap); err != nil {
				t.Fatal(err)
			}
			seen := map[uint32]string{projA: "vol-a"}
			for _, tc := range []struct {
				id  string
				src backend.ContentSource
			}{
				{"vol-r", backend.ContentSource{SnapshotID: "snap-1"}},
				{"vol-c", backend.ContentSource{VolumeID: "vol-a"}},
			} {
				if _, err := p.CreateVolumeFrom(ctx, tc.id, backend.Spec{CapacityBytes: 40 * mib}, tc.src, commitVol); err != nil {
					t.Fatal(err)
				}
				dir := source(t, p, tc.id)
				proj := projectOf(t, dir) // the copied files count against it
				if other, dup := seen[proj]; dup || proj == 0 {
					t.Fatalf("%s has project %d, like %q", tc.id, proj, other)
				}
				seen[proj] = tc.id
				if u := usage(t, p, tc.id); u.TotalBytes != 40*mib || u.UsedBytes < 33*mib {
					t.Errorf("Usage(%s) = %+v; want 40 MiB total, the copied 33 MiB used", tc.id, u)
				}
				written, err := testfs.WriteFileUnprivileged(filepath.Join(dir, "more"), 16*mib)
				wantFull(t, dir, "writing 16 MiB more into "+tc.id+", 33 of 40 MiB used", written, err)
			}

			// Deleting clears the limit, so a later volume given the ID
			// starts clean.
			if err := p.DeleteVolume(ctx, "vol-a", func() error { return nil }); err != nil {
				t.Fatal(err)
			}
			used, limit, inodes, err := projquota.Usage(ctx, filepath.Dir(a), projA)
			if err != nil || limit != 0 {
				t.Errorf("project %d of a deleted volume: limit %d, %v; want none", projA, limit, err)
			}
			// XFS releases an unlinked inode's quota when it inactivates
			// it, in the background: wait (bounded) for the usage to go.
			wait, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			for used != 0 || inodes != 0 {
				if wait.Err() != nil {
					t.Fatalf("project %d of a deleted volume still uses %d bytes and %d inodes", projA, used, inodes)
				}
				time.Sleep(50 * time.Millisecond)
				if used, _, inodes, err = projquota.Usage(ctx, filepath.Dir(a), projA); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestQuotaPrivilegedWriter pins down what a privileged writer (a process
// with CAP_SYS_RESOURCE in its effective set: root in a privileged pod,
// or a container granted that capability) can do, as docs/operations.md
// says: ext4 lets it write past the volume's limit, XFS stops it with
// ENOSPC as it stops everyone.
func TestQuotaPrivilegedWriter(t *testing.T) {
	for _, tc := range []struct {
		kind     string
		bypasses bool
	}{
		{"ext4-prjquota", true},
		{"xfs", false},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			ctx := context.Background()
			p, _ := quotaFS(t, tc.kind)
			if !hasCap(t, unix.CAP_SYS_RESOURCE) {
				testfs.SkipKernel(t, "this process lacks CAP_SYS_RESOURCE, whose effect on the quota this test pins down")
			}
			if _, err := p.CreateVolume(ctx, "vol-p", backend.Spec{CapacityBytes: 16 * mib}, commitVol); err != nil {
				t.Fatal(err)
			}
			dir := source(t, p, "vol-p")
			written, err := testfs.WriteFile(filepath.Join(dir, "big"), 24*mib, 0)
			if tc.bypasses {
				if err != nil {
					t.Fatalf("a writer with CAP_SYS_RESOURCE on ext4: wrote %d bytes of 24 MiB into a 16 MiB volume, err %v; want the kernel to let it through", written, err)
				}
				if u := usage(t, p, "vol-p"); u.UsedBytes < 24*mib {
					t.Errorf("Usage after a privileged 24 MiB write = %+v; want it counted (%d bytes used)", u, 24*mib)
				}
				// The usage still counts against the limit: an unprivileged
				// writer gets nothing more.
				written, err = testfs.WriteFileUnprivileged(filepath.Join(dir, "more"), mib)
				wantFull(t, dir, "an unprivileged 1 MiB write into an ext4 volume a privileged writer filled past its limit", written, err)
				return
			}
			wantFull(t, dir, "a writer with CAP_SYS_RESOURCE writing 24 MiB into a 16 MiB XFS volume", written, err)
		})
	}
}

// hasCap reports whether this process has capability c in its effective
// set.
func hasCap(t *testing.T, c int) bool {
	t.Helper()
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		t.Fatal(err)
	}
	return data[c/32].Effective&(1<<(c%32)) != 0
}

// TestProjectIDsUnique: IDs must be unique per filesystem, whichever pool
// allocates them, and survive the loss of the allocation hint.
func TestProjectIDsUnique(t *testing.T) {
	ctx := context.Background()
	p1, root1 := quotaFS(t, "ext4-prjquota")
	root2 := filepath.Join(filepath.Dir(root1), "pool2")
	p2 := newPool(t, root2)
	seen := map[uint32]string{}
	for i := range 6 {
		p, root := p1, root1
		if i%2 == 1 {
			p, root = p2, root2
		}
		if i == 4 { // a lost hint file: allocation starts over
			if err := os.WriteFile(filepath.Join(root, ".cairn-projid"), []byte("garbage"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		id := fmt.Sprintf("vol-%d", i)
		if _, err := p.CreateVolume(ctx, id, backend.Spec{CapacityBytes: 16 * mib}, commitVol); err != nil {
			t.Fatal(err)
		}
		proj := projectOf(t, source(t, p, id))
		if other, dup := seen[proj]; dup {
			t.Errorf("%s in %s got project %d, already %s's", id, root, proj, other)
		}
		seen[proj] = root + "/" + id
	}
}

// TestNoQuota: without project quota the pool works as before and says
// sizes are not enforced.
func TestNoQuota(t *testing.T) {
	testfs.RequireRoot(t)
	ctx := context.Background()
	root := filepath.Join(testfs.New(t, "ext4", 256*mib), "pool")
	p := newPool(t, root)
	c, err := p.Capacity(ctx)
	if err != nil || c.Enforced {
		t.Fatalf("Capacity on ext4 without quota = %+v, %v; want Enforced false", c, err)
	}
	if _, err := os.Stat(filepath.Join(root, ".cairn-projid")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a pool without quota made its project ID file: %v", err)
	}
	if _, err := p.CreateVolume(ctx, "vol-a", backend.Spec{CapacityBytes: 16 * mib}, commitVol); err != nil {
		t.Fatal(err)
	}
	if proj := projectOf(t, source(t, p, "vol-a")); proj != 0 {
		t.Errorf("a volume without quota has project %d", proj)
	}
	if _, err := testfs.WriteFileUnprivileged(filepath.Join(source(t, p, "vol-a"), "big"), 32*mib); err != nil {
		t.Errorf("without quota a volume is not limited, but writing 32 MiB into 16 MiB failed: %v", err)
	}
	if u := usage(t, p, "vol-a"); u.TotalBytes != c.TotalBytes {
		t.Errorf("Usage without quota = %+v; want the filesystem's %d bytes", u, c.TotalBytes)
	}
	if _, err := p.CreateVolume(ctx, "vol-0", backend.Spec{}, commitVol); err != nil {
		t.Errorf("a zero-sized volume without quota: %v", err)
	}
}

func TestQuotaRejectsZeroCapacity(t *testing.T) {
	p, _ := quotaFS(t, "ext4-prjquota")
	// A zero limit would mean no limit at all.
	if _, err := p.CreateVolume(context.Background(), "vol-0", backend.Spec{}, commitVol); !errdefs.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("zero-sized volume with quota = %v, want ErrInvalidArgument", err)
	}
}
