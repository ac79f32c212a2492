package dirpool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/backend/staging"
	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/fileclone"
	"github.com/cairn-csi/cairn/internal/fscrypt"
	"github.com/cairn-csi/cairn/internal/projquota"
)

// Project quota
//
// On ext4 or XFS mounted with project quota (projquota.Supported), every
// volume directory gets a project ID of its own, inherited by everything
// created in it (PROJINHERIT), and a hard limit of its capacity on that
// project. Writes past it fail with EDQUOT (ext4) or ENOSPC (XFS) for the
// workload. On ext4, processes with CAP_SYS_RESOURCE are exempt (the
// kernel's generic quota rule); XFS limits them too.
//
// Project IDs must be unique per filesystem, not per pool, and nothing but
// the quota files says which are taken. So an ID is allocated like this,
// under a lock:
//
//  1. Start at the number kept in <root>/.cairn-projid (a hint, not a
//     truth: a missing or torn file means starting at firstProjectID).
//  2. Take the first ID from there that the filesystem reports unused: no
//     bytes, no inodes, no limit. Any directory tagged with an ID counts
//     as one inode of it, so this skips the IDs of this pool's volumes,
//     of other pools and of other tools (kubelet's, an admin's), and it
//     still works if the hint file was lost.
//  3. Tag the empty directory, which from then on shows the ID as used to
//     every allocator, set the limit, and only then write the next
//     number to the hint file and fsync it.
//
// A crash anywhere leaves either an unused ID (taken again next time) or a
// new-* directory tagged with it, which Reconcile removes, clearing the
// limit. The lock is a process-wide mutex, so that pools sharing a
// filesystem in one process cannot pick the same ID, plus flock on the
// hint file, so that the controller and node processes of a split
// deployment, which open the same pool, cannot either. Two processes with
// different pools on one filesystem could still race between steps 2 and
// 3; Cairn runs all pools of a node in one process.
//
// Volumes made before the filesystem had project quota carry no ID: they
// keep working, unlimited, and report the filesystem's usage.

// firstProjectID is where allocation starts: above the small IDs admins
// write into /etc/projid by hand, and above kubelet's emptyDir range start
// (1048577), though the in-use check is what keeps clear of both.
const firstProjectID = 1 << 24

// maxProjectProbes bounds the search for a free ID.
const maxProjectProbes = 100_000

// projIDFile is the allocation hint under the pool root.
const projIDFile = ".cairn-projid"

// projMu serialises project ID allocation across all pools of the process.
var projMu sync.Mutex

// initQuota turns on project quota for the pool when the filesystem
// enforces it.
func (p *Pool) initQuota(ctx context.Context) error {
	ok, err := projquota.Supported(ctx, p.Volumes.Path)
	if err != nil {
		return fmt.Errorf("dir pool %s: %w", p.Root, err)
	}
	if !ok {
		return nil
	}
	// Made now, not at the first allocation, so the pool's layout does not
	// change under a running pool.
	f, err := os.OpenFile(filepath.Join(p.Root, projIDFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("dir pool %s: %w", p.Root, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("dir pool %s: %w", p.Root, err)
	}
	p.quota = true
	p.Log.Info("dir pool enforces volume sizes with project quota", "path", p.Root)
	return nil
}

// limitNewDir gives the empty directory dir a project ID of its own and a
// hard limit of capacity bytes, before anything is written into it.
func (p *Pool) limitNewDir(ctx context.Context, dir string, capacity int64) (uint32, error) {
	// 0 would mean "no limit".
	if capacity <= 0 {
		return 0, fmt.Errorf("dir pool with project quota needs a positive capacity, not %d: %w", capacity, errdefs.ErrInvalidArgument)
	}
	projMu.Lock()
	defer projMu.Unlock()
	f, err := os.OpenFile(filepath.Join(p.Root, projIDFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if err := flock(ctx, f); err != nil {
		return 0, err
	}
	id, err := p.freeProject(ctx, readHint(f))
	if err != nil {
		return 0, err
	}
	if err := projquota.SetProject(ctx, dir, id); err != nil {
		return 0, err
	}
	if err := projquota.SetLimit(ctx, p.Volumes.Path, id, uint64(capacity)); err != nil {
		return 0, err
	}
	if err := writeHint(f, id+1); err != nil {
		// The ID is tagged and limited: the volume is fine, and the next
		// allocation skips the ID as used.
		p.Log.Warn("dir pool: project ID hint not saved", "path", p.Root, "err", err)
	}
	return id, nil
}

// flock takes an exclusive lock on f, giving up when ctx ends.
func flock(ctx context.Context, f *os.File) error {
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if !errors.Is(err, unix.EWOULDBLOCK) {
			if err != nil {
				return fmt.Errorf("lock %s: %w", f.Name(), err)
			}
			return nil
		}
		if err := sleepCtx(ctx); err != nil {
			return fmt.Errorf("lock %s: %w", f.Name(), err)
		}
	}
}

// sleepCtx waits a little, or until ctx ends.
func sleepCtx(ctx context.Context) error {
	t := time.NewTimer(10 * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// freeProject returns the first ID from hint on that no file, directory
// or limit of the filesystem uses.
func (p *Pool) freeProject(ctx context.Context, hint uint32) (uint32, error) {
	id := hint
	for range maxProjectProbes {
		if id < firstProjectID || id == ^uint32(0) {
			id = firstProjectID
		}
		used, limit, inodes, err := projquota.Usage(ctx, p.Volumes.Path, id)
		if err != nil {
			return 0, err
		}
		if used == 0 && limit == 0 && inodes == 0 {
			return id, nil
		}
		id++
	}
	return 0, fmt.Errorf("dir pool %s: no free project ID in %d tries from %d: %w", p.Root, maxProjectProbes, hint, errdefs.ErrResourceExhausted)
}

func readHint(f *os.File) uint32 {
	b, err := io.ReadAll(io.NewSectionReader(f, 0, 32))
	if err != nil {
		return 0
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32)
	if err != nil {
		return 0 // missing or torn: start over, the in-use check keeps it safe
	}
	return uint32(n)
}

func writeHint(f *os.File, next uint32) error {
	b := []byte(strconv.FormatUint(uint64(next), 10) + "\n")
	if _, err := f.WriteAt(b, 0); err != nil {
		return err
	}
	// No fsync: the hint only saves probes. One lost in a crash, or
	// torn, makes the next allocation probe from an older ID, and the
	// in-use check skips every ID a surviving directory holds. An fsync
	// here, under projMu, serialised every create of a quota pool behind
	// one disk flush each.
	return f.Truncate(int64(len(b)))
}

// project returns the project ID of volume directory dir, 0 when the pool
// does not use project quota or dir has none.
func (p *Pool) project(ctx context.Context, dir string) (uint32, error) {
	if !p.quota {
		return 0, nil
	}
	return projquota.GetProject(ctx, dir)
}

// removeVolumeDir is the volumes' staging Remove: the directory goes, then
// its project's limit, so that a later volume given the same ID starts
// clean. Clearing first would leave a window without a limit. An entry
// whose project cannot be read (a symlink left by hand) is still removed;
// a limit left behind only makes the allocator skip that ID.
func (p *Pool) removeVolumeDir(ctx context.Context, path string) error {
	id, perr := p.project(ctx, path)
	if errors.Is(perr, unix.ENOENT) {
		return nil
	}
	if err := staging.RemoveAll(ctx, path); err != nil {
		return err
	}
	if perr != nil || id == 0 {
		return nil
	}
	if err := projquota.ClearLimit(ctx, p.Volumes.Path, id); err != nil {
		return fmt.Errorf("%s removed, but: %w", path, err)
	}
	return nil
}

// cloneInto copies the tree from into the new directory tmp. Tagging with
// a project, and an encryption policy, apply to new inodes and empty
// directories only, and CloneTree makes its destination itself, so when
// either is wanted the copy is made inside a parent (tmp + ".prj") that
// carries them, whose project ID (PROJINHERIT) and policy everything
// created below it inherits, and is then renamed to tmp. The parent's
// name starts with new-, so Reconcile removes a leftover. limit > 0 gives
// the copy a project of its own with that limit (project-quota pools);
// policy, when set, encrypts it with that key, which must be loaded.
func (p *Pool) cloneInto(ctx context.Context, from, tmp string, limit int64, policy *fscrypt.KeyID) (fileclone.Method, error) {
	limited := p.quota && limit > 0
	if !limited && policy == nil {
		return fileclone.CloneTree(ctx, from, tmp)
	}
	parent := tmp + ".prj"
	if err := p.removeVolumeDir(ctx, parent); err != nil {
		return 0, fmt.Errorf("clear %s: %w", parent, err)
	}
	if err := os.Mkdir(parent, 0o700); err != nil {
		return 0, err
	}
	ok := false
	defer func() {
		if !ok {
			if err := p.removeVolumeDir(context.WithoutCancel(ctx), parent); err != nil {
				p.Log.Error("dir pool: clean up after a failed copy", "path", parent, "err", err)
			}
		}
	}()
	var id uint32
	if limited {
		var err error
		if id, err = p.limitNewDir(ctx, parent, limit); err != nil {
			return 0, err
		}
	}
	if policy != nil {
		if err := fscrypt.SetPolicy(parent, *policy); err != nil {
			return 0, err
		}
	}
	m, err := fileclone.CloneTree(ctx, from, filepath.Join(parent, "root"))
	if err != nil {
		return 0, err
	}
	// Out of the parent: renames into a directory of another project fail
	// (EXDEV) only when that directory has PROJINHERIT, and the volumes
	// directory has not; and an encrypted directory may move into an
	// unencrypted one.
	if err := os.Rename(filepath.Join(parent, "root"), tmp); err != nil {
		return 0, err
	}
	if err := os.Remove(parent); err != nil {
		return 0, err
	}
	ok = true
	if limited {
		if got, err := projquota.GetProject(ctx, tmp); err != nil || got != id {
			return 0, errors.Join(err, fmt.Errorf("copy in %s has project %d, want %d", tmp, got, id))
		}
	}
	return m, nil
}

// quotaUsage is Usage for a directory with project id: its project's
// bytes and inodes against its limit.
func (p *Pool) quotaUsage(ctx context.Context, dir string, id uint32) (backend.Usage, error) {
	used, limit, inodes, err := projquota.Usage(ctx, p.Volumes.Path, id)
	if err != nil {
		return backend.Usage{}, err
	}
	total := int64(limit)
	if total == 0 { // cleared by hand: report the size that was meant
		if total, err = recordedCapacity(dir); err != nil {
			return backend.Usage{}, err
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return backend.Usage{}, fmt.Errorf("statfs %s: %w", dir, err)
	}
	fsAvail := int64(st.Bavail) * int64(st.Bsize)
	return backend.Usage{
		TotalBytes:      total,
		UsedBytes:       int64(used),
		AvailableBytes:  max(0, min(total-int64(used), fsAvail)),
		TotalInodes:     int64(inodes) + int64(st.Ffree),
		UsedInodes:      int64(inodes),
		AvailableInodes: int64(st.Ffree),
	}, nil
}
