package node

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/fsfreeze"
)

// FreezeForSnapshot freezes the mounted filesystem of volume volID (source
// src) so that a snapshot of its image is consistent; directory and btrfs
// volumes are snapshotted by the filesystem itself and need no freeze. So
// are plain LVs: lvm2 suspends the origin with lockfs, which freezes the
// filesystem on it. An encrypted LV's filesystem is on the LUKS mapping
// above the LV, which lvm2's suspend does not reach, so it is frozen here.
// The returned thaw is never nil.
func (n *Node) FreezeForSnapshot(ctx context.Context, volID string, src backend.Source) (func() error, error) {
	noop := func() error { return nil }
	switch {
	case src.Kind == backend.SourceImageFile && n.loop != nil:
	case src.Kind == backend.SourceBlockDevice && src.LUKS:
	default:
		return noop, nil
	}
	mps, err := n.MountsOf(ctx, src)
	if err != nil {
		return noop, err
	}
	for _, mp := range mps {
		fi, err := os.Stat(mp)
		if err != nil || !fi.IsDir() {
			continue // a block device bind mount: nothing to freeze
		}
		// A freeze outlives this process: record it first, so that if we
		// die before the thaw, the next start thaws it (ThawLeftovers).
		marker, err := n.markFrozen(volID, mp)
		if err != nil {
			return noop, err
		}
		// Freezing one mount freezes the filesystem under all of them.
		thaw, err := fsfreeze.Freeze(ctx, mp)
		if err != nil {
			removeMarker(marker)
		}
		if errors.Is(err, fsfreeze.ErrAlreadyFrozen) {
			return noop, fmt.Errorf("filesystem of volume %s is frozen by someone else: %w", volID, errdefs.ErrAborted)
		}
		if err != nil {
			return noop, fmt.Errorf("freeze %s: %w", mp, err)
		}
		return func() error {
			err := thaw()
			if err == nil || errors.Is(err, fsfreeze.ErrNotFrozen) {
				removeMarker(marker)
			}
			return err
		}, nil
	}
	return noop, nil
}

// frozenDir holds one marker per filesystem this driver has frozen and not
// yet thawed: the volume ID, holding the mount point.
func (n *Node) frozenDir() string { return filepath.Join(n.stateDir, "frozen") }

// markFrozen records that the filesystem of volume id, mounted at mp, is
// about to be frozen. It returns the marker's path ("" without a state dir).
func (n *Node) markFrozen(id, mp string) (string, error) {
	if n.stateDir == "" {
		return "", nil
	}
	if err := os.MkdirAll(n.frozenDir(), 0o700); err != nil {
		return "", fmt.Errorf("record freeze: %w", err)
	}
	marker := filepath.Join(n.frozenDir(), id)
	if err := os.WriteFile(marker, []byte(mp), 0o600); err != nil {
		return "", fmt.Errorf("record freeze: %w", err)
	}
	return marker, nil
}

func removeMarker(marker string) {
	if marker != "" {
		os.Remove(marker)
	}
}

// ThawLeftovers thaws the filesystems a previous run of this driver froze
// for a snapshot and died before thawing; their workloads' writes hang
// until then, and every later snapshot of them would be refused.
func (n *Node) ThawLeftovers(ctx context.Context) {
	if n.stateDir == "" {
		return
	}
	entries, err := os.ReadDir(n.frozenDir())
	if err != nil {
		return // none recorded
	}
	for _, e := range entries {
		marker := filepath.Join(n.frozenDir(), e.Name())
		mp, err := os.ReadFile(marker)
		if err != nil {
			continue
		}
		err = fsfreeze.Thaw(string(mp))
		switch {
		case err == nil:
			n.log.Warn("reconcile: thawed a filesystem left frozen by a crash during a snapshot", "volume", e.Name(), "mount", string(mp))
		case errors.Is(err, fsfreeze.ErrNotFrozen) || errors.Is(err, fs.ErrNotExist):
		default:
			n.log.Error("reconcile: cannot thaw a filesystem left frozen by a crash", "volume", e.Name(), "mount", string(mp), "err", err)
			continue // keep the marker: the next start tries again
		}
		os.Remove(marker)
	}
}
