package btrfs

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/errdefs"
)

// Quota groups
//
// Every subvolume has a level-0 qgroup, 0/<subvolume ID>, that counts the
// bytes it references (shared with snapshots or not) and the bytes only it
// references (exclusive). Cairn limits referenced bytes, which is what a
// volume's user sees as "used".
//
// The kernel updates qgroup numbers when a transaction commits, not on
// write, so Usage syncs the filesystem first. Limits, by contrast, are
// enforced at write time from reservations and apply at once.

// EnableQuota turns on full qgroup accounting for the filesystem holding
// path and waits for the initial rescan, after which Usage numbers are
// exact. It is idempotent. On a filesystem that already holds much data the
// rescan can take a while; if ctx ends first EnableQuota returns ctx.Err()
// and the rescan carries on in the kernel.
func EnableQuota(ctx context.Context, path string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return pathErr("enable quota", path, err)
	}
	defer unix.Close(fd)
	args := quotaCtlArgs{Cmd: quotaCtlEnable}
	if err := ioctl(fd, iocQuotaCtl, unsafe.Pointer(&args)); err != nil {
		return pathErr("enable quota", path, err)
	}
	return waitRescan(ctx, path)
}

// Rescan recomputes all qgroup numbers of the filesystem holding path and
// waits for it to finish. It is needed only after Usage reports
// errdefs.ErrUnavailable (inconsistent accounting). A rescan already running
// is waited for rather than restarted.
func Rescan(ctx context.Context, path string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return pathErr("quota rescan", path, err)
	}
	defer unix.Close(fd)
	var args quotaRescanArgs
	if err := ioctl(fd, iocQuotaRescan, unsafe.Pointer(&args)); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		return pathErr("quota rescan", path, err)
	}
	return waitRescan(ctx, path)
}

// waitRescan blocks in QUOTA_RESCAN_WAIT on a goroutine of its own, so that
// ctx can end the wait: the kubelet's CSI call times out and would otherwise
// leave us stuck in the kernel. The goroutine owns its fd and exits when the
// rescan does.
func waitRescan(ctx context.Context, path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return pathErr("wait for quota rescan", path, err)
	}
	done := make(chan error, 1)
	go func() {
		defer unix.Close(fd)
		var err error
		for {
			err = ioctl(fd, iocQuotaRescanWait, nil)
			if !errors.Is(err, unix.EINTR) {
				break
			}
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			return pathErr("wait for quota rescan", path, err)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// QuotaEnabled reports whether qgroups are enabled on the filesystem
// holding path.
func QuotaEnabled(ctx context.Context, path string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, pathErr("quota status", path, err)
	}
	defer unix.Close(fd)
	on, err := quotaEnabled(fd)
	if err != nil {
		return false, pathErr("quota status", path, err)
	}
	return on, nil
}

func quotaEnabled(fd int) (bool, error) {
	flags, err := quotaStatus(fd)
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return flags&qgroupStatusFlagOn != 0, nil
}

// quotaStatus returns the flags of the quota tree's status item. ENOENT
// means quotas are off: the quota tree only exists while they are on.
func quotaStatus(fd int) (uint64, error) {
	var flags uint64
	found := false
	err := treeSearch(fd, exactKey(quotaTreeObjectID, 0, qgroupStatusKey, 0), func(_ searchHeader, data []byte) bool {
		// btrfs_qgroup_status_item: version, generation, flags, ...
		if len(data) >= 24 {
			flags, found = binary.LittleEndian.Uint64(data[16:]), true
		}
		return false
	})
	if err != nil {
		return 0, err
	}
	if !found {
		return 0, fmt.Errorf("quota status item: %w", unix.ENOENT)
	}
	return flags, nil
}

// SetLimit limits the bytes that the subvolume at subvolPath may reference
// (its qgroup's max_rfer). Writes that would pass it fail with EDQUOT.
// A limit of 0 removes the limit. Quotas must be enabled (EnableQuota).
func SetLimit(ctx context.Context, subvolPath string, maxReferencedBytes uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	fd, err := openSubvol(subvolPath)
	if err != nil {
		return pathErr("set qgroup limit", subvolPath, err)
	}
	defer unix.Close(fd)
	id, err := subvolumeID(fd)
	if err != nil {
		return pathErr("set qgroup limit", subvolPath, err)
	}
	args := qgroupLimitArgs{
		QgroupID: id, // level 0: the qgroup ID is the subvolume ID
		Lim:      qgroupLimit{Flags: qgroupLimitMaxRfer, MaxRfer: maxReferencedBytes},
	}
	if maxReferencedBytes == 0 {
		args.Lim.MaxRfer = qgroupLimitClear
	}
	if err := ioctl(fd, iocQgroupLimit, unsafe.Pointer(&args)); err != nil {
		return pathErr("set qgroup limit", subvolPath, err)
	}
	return nil
}

// Usage returns the bytes referenced by and exclusive to the subvolume at
// subvolPath, and its referenced-bytes limit (0: none).
//
// It first syncs the filesystem (BTRFS_IOC_SYNC: flush delalloc, commit),
// because qgroup numbers only change at transaction commit; without it they
// lag writes by up to the commit interval. The sync makes Usage as costly
// as a sync(1) of this filesystem.
//
// While a rescan runs, or after the kernel has marked accounting
// inconsistent, the numbers are wrong; Usage then fails with
// errdefs.ErrUnavailable, and Rescan repairs the latter.
func Usage(ctx context.Context, subvolPath string) (referenced, exclusive, limit uint64, err error) {
	if err := ctx.Err(); err != nil {
		return 0, 0, 0, err
	}
	fd, err := openSubvol(subvolPath)
	if err != nil {
		return 0, 0, 0, pathErr("qgroup usage", subvolPath, err)
	}
	defer unix.Close(fd)
	if err := ioctl(fd, iocSync, nil); err != nil {
		return 0, 0, 0, pathErr("qgroup usage: sync", subvolPath, err)
	}
	if err := ctx.Err(); err != nil {
		return 0, 0, 0, err
	}
	id, err := subvolumeID(fd)
	if err != nil {
		return 0, 0, 0, pathErr("qgroup usage", subvolPath, err)
	}
	flags, err := quotaStatus(fd)
	if errors.Is(err, unix.ENOENT) {
		return 0, 0, 0, fmt.Errorf("btrfs: qgroup usage %q: %w: quotas are not enabled", subvolPath, errdefs.ErrFailedPrecondition)
	}
	if err != nil {
		return 0, 0, 0, pathErr("qgroup usage", subvolPath, err)
	}
	switch {
	case flags&qgroupStatusFlagRescan != 0:
		return 0, 0, 0, fmt.Errorf("btrfs: qgroup usage %q: %w: quota rescan in progress", subvolPath, errdefs.ErrUnavailable)
	case flags&qgroupStatusFlagInconsistent != 0:
		return 0, 0, 0, fmt.Errorf("btrfs: qgroup usage %q: %w: qgroup accounting inconsistent, rescan needed", subvolPath, errdefs.ErrUnavailable)
	}

	found := false
	err = treeSearch(fd, exactKey(quotaTreeObjectID, 0, qgroupInfoKey, id), func(_ searchHeader, data []byte) bool {
		// btrfs_qgroup_info_item: generation, rfer, rfer_cmpr, excl, excl_cmpr
		if len(data) >= 40 {
			referenced = binary.LittleEndian.Uint64(data[8:])
			exclusive = binary.LittleEndian.Uint64(data[24:])
			found = true
		}
		return false
	})
	if err != nil {
		return 0, 0, 0, pathErr("qgroup usage", subvolPath, err)
	}
	if !found {
		return 0, 0, 0, fmt.Errorf("btrfs: qgroup usage %q: %w: no qgroup 0/%d", subvolPath, errdefs.ErrNotFound, id)
	}
	err = treeSearch(fd, exactKey(quotaTreeObjectID, 0, qgroupLimitKey, id), func(_ searchHeader, data []byte) bool {
		// btrfs_qgroup_limit_item: flags, max_rfer, max_excl, rsv_rfer, rsv_excl
		if len(data) >= 16 && binary.LittleEndian.Uint64(data)&qgroupLimitMaxRfer != 0 {
			limit = binary.LittleEndian.Uint64(data[8:])
		}
		return false
	})
	if err != nil {
		return 0, 0, 0, pathErr("qgroup usage", subvolPath, err)
	}
	return referenced, exclusive, limit, nil
}

// RemoveQgroup removes qgroup 0/<subvolID> from the filesystem holding path.
// A missing qgroup is not an error.
//
// Kernels differ once a subvolume is deleted, and DeleteSubvolume's call
// here only helps on the oldest:
//   - old kernels remove the qgroup at once;
//   - kernels that forbid deleting a qgroup still in use (Debian's 6.1.192
//     does, presumably through a stable backport) refuse with EBUSY
//     (errdefs.ErrFailedPrecondition) while the subvolume still exists or
//     its qgroup still counts bytes, i.e. until the cleaner thread has
//     dropped it, and then leave the qgroup behind (seen on 6.1.192);
//   - recent kernels (seen on 6.18; the change landed around 6.10/6.11)
//     also refuse until then, but remove the qgroup themselves once the
//     subvolume is dropped.
//
// RemoveStaleQgroups, run at start-up, clears what the middle group leaves.
// A stale qgroup matters because a subvolume created later with the same ID
// (possible after a remount) takes it over, limit included: so set, or
// clear, the limit of every new subvolume rather than assume it has none.
func RemoveQgroup(ctx context.Context, path string, subvolID uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return pathErr("remove qgroup", path, err)
	}
	defer unix.Close(fd)
	if err := removeQgroup(fd, subvolID); err != nil {
		return pathErr(fmt.Sprintf("remove qgroup 0/%d", subvolID), path, err)
	}
	return nil
}

func removeQgroup(fd int, id uint64) error {
	args := qgroupCreateArgs{Create: 0, QgroupID: id}
	err := ioctl(fd, iocQgroupCreate, unsafe.Pointer(&args))
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	return err
}

// RemoveStaleQgroups removes the level-0 qgroups of the filesystem holding
// path whose subvolume is gone entirely (not merely deleted and awaiting the
// cleaner), like `btrfs qgroup clear-stale`. It returns how many it removed.
// It is meant for start-up reconciliation on kernels that leave such qgroups
// behind (see RemoveQgroup); elsewhere it finds none. It is a no-op when
// quotas are off.
func RemoveStaleQgroups(ctx context.Context, path string) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, pathErr("remove stale qgroups", path, err)
	}
	defer unix.Close(fd)
	if on, err := quotaEnabled(fd); err != nil || !on {
		if err != nil {
			return 0, pathErr("remove stale qgroups", path, err)
		}
		return 0, nil
	}

	// Level-0 qgroup IDs fit in 48 bits; the level sits above them.
	key := searchKey{
		TreeID:     quotaTreeObjectID,
		MinType:    qgroupInfoKey,
		MaxType:    qgroupInfoKey,
		MaxOffset:  1<<48 - 1,
		MaxTransID: ^uint64(0),
	}
	var ids []uint64
	err = treeSearch(fd, key, func(h searchHeader, _ []byte) bool {
		if h.Type == qgroupInfoKey && h.ObjectID == 0 {
			ids = append(ids, h.Offset)
		}
		return true
	})
	if err != nil {
		return 0, pathErr("remove stale qgroups", path, err)
	}

	removed := 0
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return removed, err
		}
		exists := false
		err := treeSearch(fd, searchKey{
			TreeID:      rootTreeObjectID,
			MinObjectID: id,
			MaxObjectID: id,
			MinType:     rootItemKey,
			MaxType:     rootItemKey,
			MaxOffset:   ^uint64(0),
			MaxTransID:  ^uint64(0),
		}, func(searchHeader, []byte) bool {
			exists = true
			return false
		})
		if err != nil {
			return removed, pathErr("remove stale qgroups", path, err)
		}
		if exists {
			continue
		}
		err = removeQgroup(fd, id)
		switch {
		case err == nil:
			removed++
		case errors.Is(err, unix.EBUSY):
			// Raced with a subvolume being created or dropped; next time.
		default:
			return removed, pathErr(fmt.Sprintf("remove qgroup 0/%d", id), path, err)
		}
	}
	return removed, nil
}

func exactKey(tree, objectID uint64, typ uint32, offset uint64) searchKey {
	return searchKey{
		TreeID:      tree,
		MinObjectID: objectID,
		MaxObjectID: objectID,
		MinType:     typ,
		MaxType:     typ,
		MinOffset:   offset,
		MaxOffset:   offset,
		MaxTransID:  ^uint64(0),
	}
}

// treeSearch calls fn for each item of key.TreeID whose key lies between
// (MinObjectID, MinType, MinOffset) and (MaxObjectID, MaxType, MaxOffset) in
// key order (a range of compound keys, not a filter on each field), until fn
// returns false. BTRFS_IOC_TREE_SEARCH needs CAP_SYS_ADMIN.
func treeSearch(fd int, key searchKey, fn func(h searchHeader, data []byte) bool) error {
	var args searchArgs
	for {
		args.Key = key
		args.Key.NrItems = 4096 // as many as fit in Buf
		if err := ioctl(fd, iocTreeSearch, unsafe.Pointer(&args)); err != nil {
			return fmt.Errorf("TREE_SEARCH tree %d: %w", key.TreeID, err)
		}
		n := args.Key.NrItems
		if n == 0 {
			return nil
		}
		const hdrLen = int(unsafe.Sizeof(searchHeader{}))
		var last searchHeader
		off := 0
		for i := uint32(0); i < n; i++ {
			if off+hdrLen > len(args.Buf) {
				return fmt.Errorf("TREE_SEARCH tree %d: result overruns buffer", key.TreeID)
			}
			// The header is in CPU order; the item that follows is on-disk
			// (little-endian) format.
			h := searchHeader{
				TransID:  binary.NativeEndian.Uint64(args.Buf[off:]),
				ObjectID: binary.NativeEndian.Uint64(args.Buf[off+8:]),
				Offset:   binary.NativeEndian.Uint64(args.Buf[off+16:]),
				Type:     binary.NativeEndian.Uint32(args.Buf[off+24:]),
				Len:      binary.NativeEndian.Uint32(args.Buf[off+28:]),
			}
			off += hdrLen
			end := off + int(h.Len)
			if end > len(args.Buf) {
				return fmt.Errorf("TREE_SEARCH tree %d: item overruns buffer", key.TreeID)
			}
			if !fn(h, args.Buf[off:end]) {
				return nil
			}
			off = end
			last = h
		}
		// Resume just past the last key returned.
		key.MinObjectID, key.MinType, key.MinOffset = last.ObjectID, last.Type, last.Offset
		switch {
		case key.MinOffset < ^uint64(0):
			key.MinOffset++
		case key.MinType < 255:
			key.MinType++
			key.MinOffset = 0
		case key.MinObjectID < ^uint64(0):
			key.MinObjectID++
			key.MinType, key.MinOffset = 0, 0
		default:
			return nil
		}
		if keyLess(key.MaxObjectID, key.MaxType, key.MaxOffset, key.MinObjectID, key.MinType, key.MinOffset) {
			return nil
		}
	}
}

func keyLess(ao uint64, at uint32, aoff uint64, bo uint64, bt uint32, boff uint64) bool {
	if ao != bo {
		return ao < bo
	}
	if at != bt {
		return at < bt
	}
	return aoff < boff
}
