package btrfspool_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/backend/backendtest"
	"github.com/cairn-csi/cairn/internal/backend/btrfspool"
	"github.com/cairn-csi/cairn/internal/btrfs"
	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/testfs"
)

const mib = 1 << 20

func commitVol(backend.Volume) error    { return nil }
func commitSnap(backend.Snapshot) error { return nil }
func commitNothing() error              { return nil }
func spec(n int64) backend.Spec         { return backend.Spec{CapacityBytes: n} }
func fromVolume(id string) backend.ContentSource {
	return backend.ContentSource{VolumeID: id}
}

// newPool opens a pool on a fresh btrfs filesystem, removed after the test.
func newPool(t *testing.T) (*btrfspool.Pool, string) {
	t.Helper()
	root := filepath.Join(testfs.New(t, "btrfs", 512*mib), "pool")
	p, err := btrfspool.New(context.Background(), root, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p, root
}

func TestSuite(t *testing.T) {
	testfs.RequireRoot(t)
	mnt := testfs.New(t, "btrfs", 512*mib)
	n := 0
	backendtest.Run(t, func(t *testing.T) (backend.Backend, string) {
		n++
		root := filepath.Join(mnt, "pool", string(rune('a'+n)))
		p, err := btrfspool.New(context.Background(), root, nil)
		if err != nil {
			t.Fatal(err)
		}
		return p, root
	})
}

// TestNewRejectsOtherFilesystems needs no root: it only looks.
func TestNewRejectsOtherFilesystems(t *testing.T) {
	tmp := t.TempDir()
	var st unix.Statfs_t
	if err := unix.Statfs(tmp, &st); err != nil {
		t.Fatal(err)
	}
	tmpOnBtrfs := uint32(st.Type) == uint32(unix.BTRFS_SUPER_MAGIC)
	tests := []struct {
		name      string
		root      string
		wantInMsg []string
		onTmp     bool // the case needs $TMPDIR not to be on btrfs
	}{
		{"relative", "pool", []string{`"pool"`, "absolute"}, false},
		{"proc", "/proc", []string{"/proc", "is on proc", "not btrfs"}, false},
		{"sysfs, not yet made", "/sys/kernel/cairn-pool", []string{"/sys/kernel/cairn-pool", "nearest existing parent /sys/kernel", "sysfs"}, false},
		{"tmpdir", tmp, []string{tmp, "not btrfs"}, true},
		{"not yet made under tmpdir", filepath.Join(tmp, "a", "b"), []string{filepath.Join(tmp, "a", "b"), "nearest existing parent " + tmp}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.onTmp && tmpOnBtrfs {
				t.Skipf("%s is on btrfs, where this case has nothing to reject", tmp)
			}
			_, err := btrfspool.New(context.Background(), tc.root, nil)
			if !errdefs.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("New(%q) = %v, want ErrInvalidArgument", tc.root, err)
			}
			for _, s := range tc.wantInMsg {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
		})
	}
	if _, err := os.Stat(filepath.Join(tmp, "a")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused New created directories: %v", err)
	}
}

func source(t *testing.T, p *btrfspool.Pool, id string) string {
	t.Helper()
	src, err := p.Source(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return src.Path
}

func usage(t *testing.T, p *btrfspool.Pool, id string) backend.Usage {
	t.Helper()
	u, err := p.Usage(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func wantEDQUOT(t *testing.T, what string, written int64, err error) {
	t.Helper()
	if !errors.Is(err, unix.EDQUOT) && !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("%s: wrote %d bytes, err %v; want EDQUOT or ENOSPC", what, written, err)
	}
}

// TestCapacityEnforced writes past a volume's capacity (as root: btrfs
// limits apply to root too), then expands it, and checks that restores and
// clones get limits of their own.
func TestCapacityEnforced(t *testing.T) {
	ctx := context.Background()
	p, _ := newPool(t)
	if c, err := p.Capacity(ctx); err != nil || !c.Enforced {
		t.Fatalf("Capacity = %+v, %v; want Enforced", c, err)
	}
	if _, err := p.CreateVolume(ctx, "vol-a", spec(16*mib), commitVol); err != nil {
		t.Fatal(err)
	}
	vol := source(t, p, "vol-a")
	written, err := testfs.WriteFile(filepath.Join(vol, "big"), 32*mib, 0)
	wantEDQUOT(t, "writing 32 MiB into a 16 MiB volume", written, err)
	if u := usage(t, p, "vol-a"); u.TotalBytes != 16*mib || u.UsedBytes > 16*mib || u.AvailableBytes > 16*mib-u.UsedBytes {
		t.Errorf("Usage after filling = %+v; want total 16 MiB, used at most that", u)
	}
	if err := os.Remove(filepath.Join(vol, "big")); err != nil {
		t.Fatal(err)
	}

	got, err := p.ExpandVolume(ctx, "vol-a", 48*mib)
	if err != nil || got != 48*mib {
		t.Fatalf("ExpandVolume(48 MiB) = %d, %v", got, err)
	}
	if _, err := testfs.WriteFile(filepath.Join(vol, "big"), 32*mib, 0); err != nil {
		t.Fatalf("writing 32 MiB after expanding to 48 MiB: %v", err)
	}
	if u := usage(t, p, "vol-a"); u.TotalBytes != 48*mib || u.UsedBytes < 32*mib {
		t.Errorf("Usage after expanding and writing 32 MiB = %+v", u)
	}

	// A snapshot is as big as its volume was; a restore gets the capacity
	// asked for and its own limit, and a clone asked to be smaller than
	// its source gets the source's capacity.
	s, err := p.CreateSnapshot(ctx, "snap-1", "vol-a", commitSnap)
	if err != nil || s.SizeBytes != 48*mib {
		t.Fatalf("CreateSnapshot = %+v, %v; want SizeBytes 48 MiB", s, err)
	}
	for _, tc := range []struct {
		id       string
		ask      int64
		src      backend.ContentSource
		wantSize int64
	}{
		{"vol-r", 64 * mib, backend.ContentSource{SnapshotID: "snap-1"}, 64 * mib},
		{"vol-c", 16 * mib, fromVolume("vol-a"), 48 * mib},
	} {
		v, err := p.CreateVolumeFrom(ctx, tc.id, spec(tc.ask), tc.src, commitVol)
		if err != nil || v.CapacityBytes != tc.wantSize {
			t.Fatalf("CreateVolumeFrom(%s, %d MiB) = %+v, %v; want %d MiB", tc.id, tc.ask>>20, v, err, tc.wantSize>>20)
		}
		if u := usage(t, p, tc.id); u.TotalBytes != tc.wantSize || u.UsedBytes < 32*mib {
			t.Errorf("Usage(%s) = %+v; want total %d MiB and the source's 32 MiB used", tc.id, u, tc.wantSize>>20)
		}
		// The source's 32 MiB count against the new volume's limit.
		more := tc.wantSize - 32*mib + 8*mib
		written, err := testfs.WriteFile(filepath.Join(source(t, p, tc.id), "more"), more, 0)
		wantEDQUOT(t, "writing past a "+tc.id+"'s own limit", written, err)
	}
	lim := spec(16 * mib)
	lim.LimitBytes = 32 * mib
	if _, err := p.CreateVolumeFrom(ctx, "vol-x", lim, fromVolume("vol-a"), commitVol); !errdefs.Is(err, errdefs.ErrOutOfRange) {
		t.Errorf("clone of a 48 MiB volume with limit_bytes 32 MiB = %v, want ErrOutOfRange", err)
	}
}

func TestSnapshotsReadOnlyAndLabelled(t *testing.T) {
	ctx := context.Background()
	p, _ := newPool(t)
	for _, id := range []string{"vol-a", "vol-b"} {
		if _, err := p.CreateVolume(ctx, id, spec(16*mib), commitVol); err != nil {
			t.Fatal(err)
		}
	}
	s, err := p.CreateSnapshot(ctx, "snap-1", "vol-a", commitSnap)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(filepath.Dir(filepath.Dir(source(t, p, "vol-a"))), "snapshots", "snap-1")
	if ro, err := btrfs.IsReadOnly(path); err != nil || !ro {
		t.Errorf("snapshot subvolume read-only = %t, %v", ro, err)
	}
	if err := os.WriteFile(filepath.Join(path, "x"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("writing into a snapshot = %v, want EROFS", err)
	}
	// A retry of the same snapshot commits again and reports the same
	// snapshot; the same ID for another volume is refused.
	again, err := p.CreateSnapshot(ctx, "snap-1", "vol-a", commitSnap)
	if err != nil || again != s {
		t.Errorf("repeated CreateSnapshot = %+v, %v; want %+v", again, err, s)
	}
	if _, err := p.CreateSnapshot(ctx, "snap-1", "vol-b", commitSnap); !errdefs.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("CreateSnapshot(snap-1 of vol-b) over a snapshot of vol-a = %v, want ErrAlreadyExists", err)
	}
	// A restore is labelled as itself, so its own snapshots are told apart.
	if _, err := p.CreateVolumeFrom(ctx, "vol-r", spec(16*mib), backend.ContentSource{SnapshotID: "snap-1"}, commitVol); err != nil {
		t.Fatal(err)
	}
	if _, err := p.CreateSnapshot(ctx, "snap-2", "vol-r", commitSnap); err != nil {
		t.Fatal(err)
	}
	if _, err := p.CreateSnapshot(ctx, "snap-2", "vol-a", commitSnap); !errdefs.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("CreateSnapshot(snap-2 of vol-a) over a snapshot of vol-r = %v, want ErrAlreadyExists", err)
	}
}

// TestDeleteNestedSubvolumes: a workload may create subvolumes in its
// volume, which the kernel will not delete with it. Deleting the volume
// must delete them, and nothing mounted inside it.
func TestDeleteNestedSubvolumes(t *testing.T) {
	ctx := context.Background()
	p, _ := newPool(t)
	for _, id := range []string{"vol-a", "vol-b"} {
		if _, err := p.CreateVolume(ctx, id, spec(16*mib), commitVol); err != nil {
			t.Fatal(err)
		}
	}
	a, b := source(t, p, "vol-a"), source(t, p, "vol-b")
	if err := os.WriteFile(filepath.Join(b, "keep"), []byte("vol-b"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(a, "dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, parent := range []string{a, filepath.Join(a, "dir"), filepath.Join(a, "dir", "sub")} {
		if err := btrfs.CreateSubvolume(ctx, parent, "sub"); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(parent, "sub", "data"), []byte("nested"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// vol-b bind-mounted inside vol-a, as a careless workload might: it is
	// a subvolume below vol-a's path, but not part of vol-a.
	mp := filepath.Join(a, "mnt")
	if err := os.Mkdir(mp, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(b, mp, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(mp, unix.MNT_DETACH) })

	if err := p.DeleteVolume(ctx, "vol-a", commitNothing); err != nil {
		t.Fatalf("deleting a volume with nested subvolumes: %v", err)
	}
	if _, err := p.Source(ctx, "vol-a"); !errdefs.Is(err, errdefs.ErrNotFound) {
		t.Errorf("vol-a after delete: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(b, "keep")); err != nil || string(got) != "vol-b" {
		t.Errorf("vol-b, mounted inside vol-a, after deleting vol-a: %q, %v", got, err)
	}
	entries, err := os.ReadDir(filepath.Dir(a))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "vol-b" {
		t.Errorf("volumes directory holds %v, want only vol-b", entries)
	}
}

// Ioctls the btrfs package does not export, for setting up and observing
// the situations the pool must survive.
const (
	iocQuotaCtl     = 0xc0109428 // _IOWR(0x94, 40, 16)
	iocTreeSearch   = 0xd0009411 // _IOWR(0x94, 17, 4096)
	quotaCtlDisable = 2
)

func ioctl(path string, req uintptr, arg unsafe.Pointer) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg)); errno != 0 {
		return fmt.Errorf("ioctl %#x on %s: %w", req, path, errno)
	}
	return nil
}

// hasItem reports whether tree treeID of the filesystem holding path has
// an item with key (objectID, typ, offset) (BTRFS_IOC_TREE_SEARCH).
func hasItem(t *testing.T, path string, treeID, objectID uint64, typ uint32, offset uint64) bool {
	t.Helper()
	var args struct {
		treeID, minObjectID, maxObjectID, minOffset, maxOffset, minTransID, maxTransID uint64
		minType, maxType, nrItems, _                                                   uint32
		_                                                                              [4]uint64
		_                                                                              [4096 - 104]byte
	}
	args.treeID, args.minObjectID, args.maxObjectID = treeID, objectID, objectID
	args.minOffset, args.maxOffset, args.maxTransID = offset, offset, ^uint64(0)
	args.minType, args.maxType, args.nrItems = typ, typ, 1
	if err := ioctl(path, iocTreeSearch, unsafe.Pointer(&args)); err != nil {
		t.Fatal(err)
	}
	return args.nrItems > 0
}

// TestStaleQgroupLimitNotInherited: kernels like Debian 12's leave a
// deleted subvolume's qgroup behind, and after a remount a new subvolume
// can get the same ID and take the qgroup over, limit included. The pool
// must give every new volume its own limit.
func TestStaleQgroupLimitNotInherited(t *testing.T) {
	ctx := context.Background()
	fsys := testfs.NewFS(t, "btrfs", 512*mib)
	root := filepath.Join(fsys.MountPoint, "pool")
	p, err := btrfspool.New(ctx, root, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"vol-a", "vol-b"} {
		if _, err := p.CreateVolume(ctx, id, spec(mib), commitVol); err != nil {
			t.Fatal(err)
		}
	}
	staleID, err := btrfs.SubvolumeID(ctx, source(t, p, "vol-b"))
	if err != nil {
		t.Fatal(err)
	}
	// The cleaner is woken by the transaction thread, every commit
	// interval: make that 1 s rather than 30 s.
	if err := unix.Mount("", fsys.MountPoint, "", unix.MS_REMOUNT, "commit=1"); err != nil {
		t.Fatal(err)
	}
	if err := p.DeleteVolume(ctx, "vol-b", commitNothing); err != nil {
		t.Fatal(err)
	}
	// Wait for the cleaner to drop the subvolume (its root item goes), or
	// its ID stays taken across the remount. The deadline bounds the wait.
	const rootTree, rootItem, quotaTree, qgroupInfo = 1, 132, 8, 242
	wait, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for hasItem(t, root, rootTree, staleID, rootItem, 0) {
		if err := wait.Err(); err != nil {
			t.Fatalf("subvolume %d not dropped by the cleaner: %v", staleID, err)
		}
		if err := syncfs(root); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !hasItem(t, root, quotaTree, 0, qgroupInfo, staleID) {
		// The VM lane's kernel (Debian 12's 6.1) keeps it, so the case
		// is required there.
		testfs.SkipKernel(t, "the kernel removed qgroup 0/%d with its subvolume (as kernels since about 6.10 do): no stale qgroup to inherit here", staleID)
	}
	if err := unix.Unmount(fsys.MountPoint, 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(fsys.Device, fsys.MountPoint, "btrfs", 0, ""); err != nil {
		t.Fatal(err)
	}

	if p, err = btrfspool.New(ctx, root, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := p.CreateVolume(ctx, "vol-c", spec(16*mib), commitVol); err != nil {
		t.Fatal(err)
	}
	c := source(t, p, "vol-c")
	if got, err := btrfs.SubvolumeID(ctx, c); err != nil || got != staleID {
		t.Skipf("vol-c has subvolume ID %d (%v), not the stale qgroup's %d: the case did not arise", got, err, staleID)
	}
	if u := usage(t, p, "vol-c"); u.TotalBytes != 16*mib {
		t.Errorf("vol-c reports %d bytes; want its own 16 MiB", u.TotalBytes)
	}
	if _, err := testfs.WriteFile(filepath.Join(c, "data"), 8*mib, 0); err != nil {
		t.Errorf("writing 8 MiB into a 16 MiB volume that took over a 1 MiB volume's qgroup: %v", err)
	}
}

func syncfs(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}

// TestQuotaTurnedOff: turning quotas off drops every qgroup and limit.
// Check says so; reopening the pool turns them on again, and Reconcile
// restores the limits from the recorded copies.
func TestQuotaTurnedOff(t *testing.T) {
	ctx := context.Background()
	p, root := newPool(t)
	if _, err := p.CreateVolume(ctx, "vol-a", spec(16*mib), commitVol); err != nil {
		t.Fatal(err)
	}
	if _, err := p.ExpandVolume(ctx, "vol-a", 24*mib); err != nil {
		t.Fatal(err)
	}
	off := struct{ cmd, status uint64 }{cmd: quotaCtlDisable}
	if err := ioctl(root, iocQuotaCtl, unsafe.Pointer(&off)); err != nil {
		t.Fatal(err)
	}
	if err := p.Check(ctx); !errdefs.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("Check with quotas off = %v, want ErrFailedPrecondition", err)
	}

	p, err := btrfspool.New(ctx, root, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Check(ctx); err != nil {
		t.Fatalf("Check after reopening: %v", err)
	}
	rep, err := p.Reconcile(ctx, backend.Inventory{Volumes: map[string]bool{"vol-a": true}, Snapshots: map[string]bool{}})
	if err != nil || len(rep.Errors) > 0 || len(rep.Removed) > 0 {
		t.Fatalf("Reconcile = %+v, %v", rep, err)
	}
	if u := usage(t, p, "vol-a"); u.TotalBytes != 24*mib {
		t.Errorf("vol-a reports %d bytes after quotas came back; want its 24 MiB", u.TotalBytes)
	}
	written, err := testfs.WriteFile(filepath.Join(source(t, p, "vol-a"), "big"), 32*mib, 0)
	wantEDQUOT(t, "writing 32 MiB into a 24 MiB volume after quotas came back", written, err)
}

func TestBadSpecs(t *testing.T) {
	ctx := context.Background()
	p, _ := newPool(t)
	for _, tc := range []struct {
		name string
		spec backend.Spec
	}{
		{"block", backend.Spec{CapacityBytes: 16 * mib, AccessType: backend.AccessBlock}},
		{"zero capacity", backend.Spec{}},
		{"negative capacity", backend.Spec{CapacityBytes: -1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := p.CreateVolume(ctx, "vol-a", tc.spec, commitVol); !errdefs.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("CreateVolume = %v, want ErrInvalidArgument", err)
			}
			if _, err := p.CreateVolumeFrom(ctx, "vol-b", tc.spec, fromVolume("vol-a"), commitVol); !errdefs.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("CreateVolumeFrom = %v, want ErrInvalidArgument", err)
			}
		})
	}
}
