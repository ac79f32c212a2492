package btrfspool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/backend/staging"
	"github.com/cairn-csi/cairn/internal/btrfs"
	"github.com/cairn-csi/cairn/internal/errdefs"
)

// Type is the pool type name.
const Type = "btrfs"

// Extended attributes on a volume's subvolume root. trusted.* needs root to
// read or write, so a workload can neither see nor change them; the pool
// needs root anyway for qgroups. A snapshot's root carries the values of
// its volume at snapshot time.
const (
	capacityXattr = "trusted.cairn.capacity" // the copy of the qgroup limit
	volumeXattr   = "trusted.cairn.volume"   // the volume ID the subvolume was made for
)

// Pool is a btrfs pool.
type Pool struct {
	staging.Layout // volumes, snapshots; DeleteVolume, DeleteSnapshot, Source
	// rescanning is set while a quota rescan started by qgroupUsage runs.
	rescanning atomic.Bool
}

var (
	_ backend.Backend        = (*Pool)(nil)
	_ backend.Snapshotter    = (*Pool)(nil)
	_ backend.ContentCreator = (*Pool)(nil)
	_ backend.Expander       = (*Pool)(nil)
)

// New opens the btrfs pool at root, creating its layout if needed, and
// enables quotas on the filesystem. A root that is not on btrfs (or whose
// nearest existing parent is not) is refused with ErrInvalidArgument
// before anything is created. log may be nil.
func New(ctx context.Context, root string, log *slog.Logger) (*Pool, error) {
	l, err := staging.NewLayout(Type, root, log, removeEntry, removeEntry)
	if err != nil {
		return nil, err
	}
	root, log = l.Root, l.Log
	if err := requireBtrfs(root); err != nil {
		return nil, err
	}
	p := &Pool{Layout: l}
	if err := p.MakeDirs(); err != nil {
		return nil, err
	}
	// Check again now that root exists: a mount may have been on the way.
	if err := requireBtrfs(root); err != nil {
		return nil, err
	}
	on, err := btrfs.QuotaEnabled(ctx, root)
	if err != nil {
		return nil, fmt.Errorf("btrfs pool %s: %w", root, err)
	}
	if !on {
		log.Info("enabling btrfs quotas; the first scan reads all metadata of the filesystem", "path", root)
		if err := btrfs.EnableQuota(ctx, root); err != nil {
			return nil, fmt.Errorf("btrfs pool %s: %w", root, err)
		}
	}
	return p, nil
}

// requireBtrfs fails unless path, or its nearest existing parent when path
// does not exist yet, is on btrfs.
func requireBtrfs(path string) error {
	at := path
	var st unix.Statfs_t
	for {
		err := unix.Statfs(at, &st)
		if err == nil {
			break
		}
		parent := filepath.Dir(at)
		if !errors.Is(err, unix.ENOENT) || parent == at {
			return fmt.Errorf("btrfs pool %s: statfs %s: %w", path, at, err)
		}
		at = parent
	}
	if uint32(st.Type) == uint32(unix.BTRFS_SUPER_MAGIC) {
		return nil
	}
	where := path
	if at != path {
		where = fmt.Sprintf("%s (its nearest existing parent %s)", path, at)
	}
	return fmt.Errorf("btrfs pool %s is on %s (statfs type %#x), not btrfs: %w",
		where, fsName(st.Type), uint32(st.Type), errdefs.ErrInvalidArgument)
}

// fsNames names the filesystems a pool path is most likely to be on by
// mistake, for the error message.
var fsNames = map[uint32]string{
	uint32(unix.EXT4_SUPER_MAGIC):      "ext2/ext3/ext4",
	uint32(unix.XFS_SUPER_MAGIC):       "xfs",
	uint32(unix.TMPFS_MAGIC):           "tmpfs",
	uint32(unix.OVERLAYFS_SUPER_MAGIC): "overlayfs",
	uint32(unix.NFS_SUPER_MAGIC):       "nfs",
	uint32(unix.SMB2_SUPER_MAGIC):      "smb",
	uint32(unix.CIFS_SUPER_MAGIC):      "cifs",
	uint32(unix.FUSE_SUPER_MAGIC):      "fuse",
	uint32(unix.F2FS_SUPER_MAGIC):      "f2fs",
	uint32(unix.BCACHEFS_SUPER_MAGIC):  "bcachefs",
	uint32(unix.EXFAT_SUPER_MAGIC):     "exfat",
	uint32(unix.MSDOS_SUPER_MAGIC):     "vfat",
	uint32(unix.SQUASHFS_MAGIC):        "squashfs",
	uint32(unix.RAMFS_MAGIC):           "ramfs",
	uint32(unix.PROC_SUPER_MAGIC):      "proc",
	uint32(unix.SYSFS_MAGIC):           "sysfs",
	0x2fc12fc1:                         "zfs", // not in x/sys/unix
	uint32(unix.BTRFS_SUPER_MAGIC):     "btrfs",
}

func fsName(magic int64) string {
	if n, ok := fsNames[uint32(magic)]; ok {
		return n
	}
	return "an unknown filesystem"
}

// Type implements backend.Backend.
func (p *Pool) Type() string { return Type }

// VolumeDirsNamedByID implements backend.DirsNamedByID: a volume is the
// directory volumes/<id>.
func (p *Pool) VolumeDirsNamedByID() bool { return true }

// Check implements backend.Backend: the volumes directory must be a
// writable directory on btrfs, and quotas must still be on (without them
// no volume has a size, and creating one fails).
func (p *Pool) Check(ctx context.Context) error {
	if err := p.CheckDirs(p.Volumes.Path); err != nil {
		return err
	}
	if err := requireBtrfs(p.Volumes.Path); err != nil {
		return err
	}
	on, err := btrfs.QuotaEnabled(ctx, p.Root)
	if err != nil {
		return fmt.Errorf("btrfs pool %s: %w", p.Root, err)
	}
	if !on {
		return fmt.Errorf("btrfs pool %s: quotas were turned off, so volume sizes are not enforced; restart the plugin to turn them on and restore the limits: %w", p.Root, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// Capacity implements backend.Backend from the filesystem's free space.
// Limits reserve nothing, so it is the same for every volume size.
func (p *Pool) Capacity(ctx context.Context) (backend.Capacity, error) {
	return p.FilesystemCapacity(true)
}

func checkSpec(spec backend.Spec) error {
	if spec.AccessType != backend.AccessMount {
		return fmt.Errorf("btrfs pool serves filesystem volumes only, not %s: %w", spec.AccessType, errdefs.ErrInvalidArgument)
	}
	// A qgroup limit of 0 means "no limit": never let it mean that here.
	if spec.CapacityBytes <= 0 {
		return fmt.Errorf("btrfs pool needs a positive capacity, not %d: %w", spec.CapacityBytes, errdefs.ErrInvalidArgument)
	}
	return nil
}

// CreateVolume implements backend.Backend: a new subvolume with its limit.
func (p *Pool) CreateVolume(ctx context.Context, id string, spec backend.Spec, commit func(backend.Volume) error) (backend.Volume, error) {
	if err := checkSpec(spec); err != nil {
		return backend.Volume{}, err
	}
	v := backend.Volume{ID: id, CapacityBytes: spec.CapacityBytes}
	if err := p.adoptExisting(ctx, id, &v); err != nil {
		return backend.Volume{}, fmt.Errorf("create volume %s: %w", id, err)
	}
	err := p.Volumes.Create(ctx, id, func(ctx context.Context, tmp string) error {
		if err := btrfs.CreateSubvolume(ctx, filepath.Dir(tmp), filepath.Base(tmp)); err != nil {
			return err
		}
		return p.prepareVolume(ctx, id, tmp, v.CapacityBytes)
	}, func() error { return commit(v) })
	if err != nil {
		return backend.Volume{}, fmt.Errorf("create volume %s: %w", id, err)
	}
	return v, nil
}

// adoptExisting is the retry path of a create: when volume id is already
// in place, v's capacity becomes its limit, raised first if lower than
// asked for. The staging protocol then only commits.
func (p *Pool) adoptExisting(ctx context.Context, id string, v *backend.Volume) error {
	exists, err := p.Volumes.Exists(id)
	if err != nil || !exists {
		return err
	}
	path := p.Volumes.Entry(id)
	limit, err := p.limit(ctx, path)
	if err != nil {
		return err
	}
	if limit >= v.CapacityBytes {
		v.CapacityBytes = limit
		return fixRecord(path, limit)
	}
	return setCapacity(ctx, path, v.CapacityBytes)
}

// prepareVolume labels a new, not yet visible subvolume with its ID and
// gives it its limit. The limit is set even when the wanted one looks
// inherited: a subvolume that reuses a stale qgroup's ID starts with that
// qgroup's limit, and a writable snapshot with its source's.
func (p *Pool) prepareVolume(ctx context.Context, id, path string, capacity int64) error {
	if err := unix.Setxattr(path, volumeXattr, []byte(id), 0); err != nil {
		return fmt.Errorf("label %s: %w", path, err)
	}
	return setCapacity(ctx, path, capacity)
}

// setCapacity sets the qgroup limit of subvolume path, and then its copy.
// In that order, a crash in between leaves the limit (the truth) ahead of
// the copy, which the next ExpandVolume or create retry rewrites.
func setCapacity(ctx context.Context, path string, n int64) error {
	if err := btrfs.SetLimit(ctx, path, uint64(n)); err != nil {
		return err
	}
	if err := unix.Setxattr(path, capacityXattr, []byte(strconv.FormatInt(n, 10)), 0); err != nil {
		return fmt.Errorf("record capacity on %s: %w", path, err)
	}
	return nil
}

// fixRecord makes the copy of the limit of subvolume path agree with the
// limit just read, in case a crash came between the two writes of
// setCapacity: Reconcile restores limits from the copies.
func fixRecord(path string, limit int64) error {
	if c, err := recordedCapacity(path); err != nil || c == limit || limit <= 0 {
		return err
	}
	if err := unix.Setxattr(path, capacityXattr, []byte(strconv.FormatInt(limit, 10)), 0); err != nil {
		return fmt.Errorf("record capacity on %s: %w", path, err)
	}
	return nil
}

// recordedCapacity reads the copy of the limit on a subvolume root, 0 if
// there is none.
func recordedCapacity(path string) (int64, error) {
	buf := make([]byte, 32)
	n, err := unix.Getxattr(path, capacityXattr, buf)
	if errors.Is(err, unix.ENODATA) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read recorded capacity of %s: %w", path, err)
	}
	c, err := strconv.ParseInt(string(buf[:n]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("recorded capacity of %s: %w", path, err)
	}
	return c, nil
}

// limit reads the qgroup limit of subvolume path, which is its capacity.
func (p *Pool) limit(ctx context.Context, path string) (int64, error) {
	_, _, limit, err := p.qgroupUsage(ctx, path)
	return int64(limit), err
}

// qgroupUsage is btrfs.Usage that, when the numbers are unavailable because
// accounting went inconsistent (the kernel gives up tracing some deletes),
// starts the rescan that repairs them. Nothing else would.
func (p *Pool) qgroupUsage(ctx context.Context, path string) (referenced, exclusive, limit uint64, err error) {
	referenced, exclusive, limit, err = btrfs.Usage(ctx, path)
	if errdefs.Is(err, errdefs.ErrUnavailable) && p.rescanning.CompareAndSwap(false, true) {
		p.Log.Warn("btrfs qgroup numbers unavailable; running a quota rescan", "path", p.Root, "err", err)
		go func() {
			defer p.rescanning.Store(false)
			// Not the caller's ctx: the rescan outlives the call that
			// noticed the need for it.
			if err := btrfs.Rescan(context.Background(), p.Root); err != nil {
				p.Log.Error("btrfs quota rescan", "path", p.Root, "err", err)
				return
			}
			p.Log.Info("btrfs quota rescan finished", "path", p.Root)
		}()
	}
	return referenced, exclusive, limit, err
}

// A volume's snapshots are subvolumes of their own and stay when the
// volume goes (staging.Layout's DeleteVolume).

// Usage implements backend.Backend from the volume's qgroup: the bytes it
// references (shared with snapshots or not) of its limit. Available is
// also capped by the filesystem's free space, since limits reserve
// nothing. btrfs has no inode limit and no inode count, so inode figures
// are left zero. It syncs the filesystem (see btrfs.Usage).
func (p *Pool) Usage(ctx context.Context, id string) (backend.Usage, error) {
	src, err := p.Source(ctx, id)
	if err != nil {
		return backend.Usage{}, err
	}
	used, _, limit, err := p.qgroupUsage(ctx, src.Path)
	if err != nil {
		return backend.Usage{}, fmt.Errorf("volume %s: %w", id, err)
	}
	total := int64(limit)
	if total == 0 { // only if someone cleared it: report the size we meant
		if total, err = recordedCapacity(src.Path); err != nil {
			return backend.Usage{}, err
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(src.Path, &st); err != nil {
		return backend.Usage{}, fmt.Errorf("statfs %s: %w", src.Path, err)
	}
	fsAvail := int64(st.Bavail) * int64(st.Bsize)
	if total == 0 {
		total = int64(st.Blocks) * int64(st.Bsize)
	}
	return backend.Usage{
		TotalBytes:     total,
		UsedBytes:      int64(used),
		AvailableBytes: max(0, min(total-int64(used), fsAvail)),
	}, nil
}

// ExpandVolume implements backend.Expander by raising the qgroup limit,
// which applies to the next write: nothing needs doing on the node.
func (p *Pool) ExpandVolume(ctx context.Context, id string, newBytes int64) (int64, error) {
	src, err := p.Source(ctx, id)
	if err != nil {
		return 0, err
	}
	cur, err := p.limit(ctx, src.Path)
	if err != nil {
		return 0, fmt.Errorf("volume %s: %w", id, err)
	}
	if newBytes <= cur {
		return cur, fixRecord(src.Path, cur)
	}
	if err := setCapacity(ctx, src.Path, newBytes); err != nil {
		return 0, fmt.Errorf("expand volume %s: %w", id, err)
	}
	return newBytes, nil
}

// Reconcile implements backend.Backend. Besides the staged leftovers and
// unknown entries it sets the limits of the known volumes from their
// recorded copies and clears qgroups whose subvolume is gone (see
// btrfs.RemoveStaleQgroups).
func (p *Pool) Reconcile(ctx context.Context, inv backend.Inventory) (backend.Report, error) {
	rep, err := p.Layout.Reconcile(ctx, inv)
	if err != nil {
		return rep, err
	}
	// Put every known volume's limit back from its copy. Normally this
	// rewrites the same value; it matters after quotas were turned off,
	// which drops every qgroup, and whichever process turned them back on.
	for id := range inv.Volumes {
		path := p.Volumes.Entry(id)
		c, err := recordedCapacity(path)
		switch {
		case errors.Is(err, unix.ENOENT): // missing: reported above
			continue
		case err != nil:
			rep.Errors = append(rep.Errors, fmt.Sprintf("%s: restore limit: %v", path, err))
			continue
		case c <= 0:
			rep.Errors = append(rep.Errors, fmt.Sprintf("%s: no recorded capacity, so no limit to restore", path))
			continue
		}
		if err := btrfs.SetLimit(ctx, path, uint64(c)); err != nil {
			rep.Errors = append(rep.Errors, fmt.Sprintf("%s: restore limit: %v", path, err))
		}
	}
	n, err := btrfs.RemoveStaleQgroups(ctx, p.Root)
	if err != nil {
		rep.Errors = append(rep.Errors, fmt.Sprintf("remove stale qgroups: %v", err))
	} else if n > 0 {
		p.Log.Info("removed qgroups of deleted subvolumes", "path", p.Root, "qgroups", n)
	}
	return rep, nil
}
