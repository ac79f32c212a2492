package btrfspool

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/btrfs"
	"github.com/cairn-csi/cairn/internal/errdefs"
)

// Snapshots are read-only snapshots of a volume's subvolume, and restores
// and clones are writable snapshots of a snapshot or a volume: each is one
// ioctl that copies the subvolume's root node and commits, whatever the
// amount of data, and the copies share extents until either side writes.
// A snapshot is atomic for the whole volume (unlike a dir pool's per-file
// copies), so it is crash-consistent without freezing the workload.

// CreateSnapshot implements backend.Snapshotter.
func (p *Pool) CreateSnapshot(ctx context.Context, snapID, volID string, commit func(backend.Snapshot) error) (backend.Snapshot, error) {
	src, err := p.Source(ctx, volID)
	if err != nil {
		return backend.Snapshot{}, err
	}
	// A retry must find its own snapshot, not another volume's: the root
	// of a snapshot carries the volume's ID label.
	if exists, err := p.Snapshots.Exists(snapID); err != nil {
		return backend.Snapshot{}, err
	} else if exists {
		if of, err := label(p.Snapshots.Entry(snapID)); err != nil {
			return backend.Snapshot{}, err
		} else if of != "" && of != volID {
			return backend.Snapshot{}, fmt.Errorf("snapshot %s exists, of volume %s, not %s: %w", snapID, of, volID, errdefs.ErrAlreadyExists)
		}
	}
	snap := backend.Snapshot{ID: snapID, VolumeID: volID}
	err = p.Snapshots.Create(ctx, snapID, func(ctx context.Context, tmp string) error {
		return btrfs.Snapshot(ctx, src.Path, filepath.Dir(tmp), filepath.Base(tmp), true)
	}, func() error {
		path := p.Snapshots.Entry(snapID)
		// The size a restore needs is the volume's capacity when the
		// snapshot was taken, which the snapshot's root carries.
		size, err := recordedCapacity(path)
		if err != nil {
			return err
		}
		snap.SizeBytes = size
		// The rename into place set the root's ctime: creation time, and
		// stable across a retry.
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			return err
		}
		snap.CreatedAt = time.Unix(st.Ctim.Unix())
		return commit(snap)
	})
	if err != nil {
		return backend.Snapshot{}, fmt.Errorf("snapshot %s of %s: %w", snapID, volID, err)
	}
	return snap, nil
}

// CreateVolumeFrom implements backend.ContentCreator with a writable
// snapshot of the source, given its own limit. The capacity is at least
// the source's: a smaller limit than the data it starts with would fail
// the volume's first write.
func (p *Pool) CreateVolumeFrom(ctx context.Context, id string, spec backend.Spec, src backend.ContentSource, commit func(backend.Volume) error) (backend.Volume, error) {
	if err := checkSpec(spec); err != nil {
		return backend.Volume{}, err
	}
	from, err := p.ContentPath(src, requireSubvolume)
	if err != nil {
		return backend.Volume{}, err
	}
	srcCap, err := recordedCapacity(from)
	if err != nil {
		return backend.Volume{}, err
	}
	v := backend.Volume{ID: id, CapacityBytes: max(spec.CapacityBytes, srcCap)}
	if spec.LimitBytes > 0 && v.CapacityBytes > spec.LimitBytes {
		return backend.Volume{}, fmt.Errorf("the source's capacity %d is above limit_bytes %d: %w", srcCap, spec.LimitBytes, errdefs.ErrOutOfRange)
	}
	if err := p.adoptExisting(ctx, id, &v); err != nil {
		return backend.Volume{}, fmt.Errorf("create volume %s: %w", id, err)
	}
	err = p.Volumes.Create(ctx, id, func(ctx context.Context, tmp string) error {
		if err := btrfs.Snapshot(ctx, from, filepath.Dir(tmp), filepath.Base(tmp), false); err != nil {
			return err
		}
		return p.prepareVolume(ctx, id, tmp, v.CapacityBytes)
	}, func() error { return commit(v) })
	if err != nil {
		return backend.Volume{}, fmt.Errorf("create volume %s from %+v: %w", id, src, err)
	}
	return v, nil
}

// requireSubvolume is the content-path check of a btrfs pool: restores
// and clones are snapshots of the source, which must be a subvolume.
func requireSubvolume(path string) error {
	sub, err := btrfs.IsSubvolume(path)
	if err != nil {
		return err
	}
	if !sub {
		return fmt.Errorf("%s is not a subvolume: %w", path, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// label returns the volume ID a subvolume root was made for ("" if none).
func label(path string) (string, error) {
	buf := make([]byte, 256)
	n, err := unix.Getxattr(path, volumeXattr, buf)
	if errors.Is(err, unix.ENODATA) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read label of %s: %w", path, err)
	}
	return string(buf[:n]), nil
}
