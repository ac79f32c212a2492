package dirpool

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/fscrypt"
)

// Snapshots and clones in a dir pool are copies of the directory tree:
// each file is reflinked (FICLONE) where the filesystem can (btrfs, xfs),
// so the cost is metadata only, and copied sparsely elsewhere, so the cost
// grows with the data. A copy is consistent per file, not across files:
// quiesce the workload for a point-in-time snapshot, or use a btrfs pool.

var (
	_ backend.Snapshotter    = (*Pool)(nil)
	_ backend.ContentCreator = (*Pool)(nil)
	_ backend.Expander       = (*Pool)(nil)
)

// CreateSnapshot implements backend.Snapshotter. A snapshot of an
// encrypted volume is encrypted with the volume's key, which must be
// loaded (see CreateEncryptedSnapshot).
func (p *Pool) CreateSnapshot(ctx context.Context, snapID, volID string, commit func(backend.Snapshot) error) (backend.Snapshot, error) {
	return p.CreateEncryptedSnapshot(ctx, snapID, volID, nil, commit)
}

// createSnapshot copies the volume at src into snapshot snapID, encrypted
// with policy when it is set.
func (p *Pool) createSnapshot(ctx context.Context, snapID, volID string, src backend.Source, policy *fscrypt.KeyID, commit func(backend.Snapshot) error) (backend.Snapshot, error) {
	snap := backend.Snapshot{ID: snapID, VolumeID: volID}
	err := p.Snapshots.Create(ctx, snapID, func(ctx context.Context, tmp string) error {
		m, err := p.cloneInto(ctx, src.Path, tmp, 0, policy)
		if err != nil {
			return p.lockedError(err)
		}
		p.Log.Debug("snapshot copied", "snapshot", snapID, "volume", volID, "method", m.String())
		return nil
	}, func() error {
		// A snapshot's size is its source's capacity, as in the other
		// pools: a restore needs that much room, whatever is in use now.
		size, err := recordedCapacity(src.Path)
		if err != nil {
			return err
		}
		snap.SizeBytes = size
		if fi, err := os.Stat(p.Snapshots.Entry(snapID)); err == nil {
			snap.CreatedAt = fi.ModTime()
		} else {
			snap.CreatedAt = time.Now()
		}
		return commit(snap)
	})
	if err != nil {
		return backend.Snapshot{}, fmt.Errorf("snapshot %s of %s: %w", snapID, volID, err)
	}
	return snap, nil
}

// CreateVolumeFrom implements backend.ContentCreator.
func (p *Pool) CreateVolumeFrom(ctx context.Context, id string, spec backend.Spec, src backend.ContentSource, commit func(backend.Volume) error) (backend.Volume, error) {
	if spec.AccessType != backend.AccessMount {
		return backend.Volume{}, fmt.Errorf("dir pool serves filesystem volumes only, not %s: %w", spec.AccessType, errdefs.ErrInvalidArgument)
	}
	from, err := p.ContentPath(src, nil)
	if err != nil {
		return backend.Volume{}, err
	}
	// An encrypted source's data never lands in a plain directory.
	if _, encrypted, err := fscrypt.Policy(from); err == nil && encrypted && spec.Encryption == nil {
		return backend.Volume{}, fmt.Errorf("content source %+v is encrypted; a volume made from it must be too: %w", src, errdefs.ErrInvalidArgument)
	}
	v := backend.Volume{ID: id, CapacityBytes: spec.CapacityBytes}
	err = p.withKeys(spec.Encryption, func(policy *fscrypt.KeyID) error {
		return p.Volumes.Create(ctx, id, func(ctx context.Context, tmp string) error {
			// The copy keeps the root's mode and owner, as fsGroup left them.
			if _, err := p.cloneInto(ctx, from, tmp, spec.CapacityBytes, policy); err != nil {
				return p.lockedError(err)
			}
			if p.quota {
				return setRecordedCapacity(tmp, spec.CapacityBytes)
			}
			return p.prepareVolumeDir(ctx, id, tmp, spec.CapacityBytes)
		}, func() error { return commit(v) })
	})
	if err != nil {
		return backend.Volume{}, fmt.Errorf("create volume %s from %+v: %w", id, src, err)
	}
	return v, nil
}
