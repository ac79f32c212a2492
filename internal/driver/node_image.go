package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/fsfreeze"
	"github.com/cairn-csi/cairn/internal/store"
)

// resizeFS grows the filesystem on dev, mounted at mountPath, online.
func (d *Driver) resizeFS(ctx context.Context, dev, mountPath string) error {
	r := mount.NewResizeFs(utilexec.New())
	need, err := r.NeedResize(dev, mountPath)
	if err != nil {
		return fmt.Errorf("check filesystem size on %s: %w", dev, err)
	}
	if !need {
		return nil
	}
	if _, err := r.Resize(dev, mountPath); err != nil {
		return fmt.Errorf("grow filesystem on %s: %w", dev, err)
	}
	d.log.Info("filesystem grown", "device", dev, "mount", mountPath)
	return nil
}

// reconcileLoops detaches loop devices whose image belongs to no volume any
// more (deleted while attached, or left by a crash between delete and
// detach), and reports the ones it cannot detach.
func (d *Driver) reconcileLoops(ctx context.Context) {
	devs, err := d.cfg.Loop.List(ctx)
	if err != nil {
		d.log.Error("reconcile: list loop devices", "err", err)
		return
	}
	for dev, backing := range devs {
		file, deleted := strings.CutSuffix(backing, " (deleted)")
		for _, name := range d.poolOrder {
			imgs, ok := d.pools[name].(backend.ImageFiles)
			if !ok {
				continue
			}
			id, ok := imgs.VolumeForImage(file)
			if !ok {
				continue
			}
			_, srcErr := d.pools[name].Source(ctx, id)
			if !deleted && !errdefs.Is(srcErr, errdefs.ErrNotFound) {
				continue // a live volume: its workload may still be using it
			}
			if err := d.cfg.Loop.Detach(ctx, dev); err != nil {
				d.log.Error("reconcile: cannot detach loop device of a deleted volume", "device", dev, "image", backing, "err", err)
				continue
			}
			d.log.Info("reconcile: detached loop device of a deleted volume", "device", dev, "image", backing, "pool", name)
		}
	}
}

// freezeForSnapshot freezes a mounted image filesystem so that a snapshot
// of its image is consistent; directory and btrfs volumes are snapshotted
// by the filesystem itself and need no freeze. The returned thaw is never
// nil.
func (d *Driver) freezeForSnapshot(ctx context.Context, v store.Volume) (func() error, error) {
	noop := func() error { return nil }
	pool, ok := d.pools[v.Pool]
	if !ok {
		return noop, nil
	}
	src, err := pool.Source(ctx, v.ID)
	if err != nil || src.Kind != backend.SourceImageFile || d.cfg.Loop == nil {
		return noop, nil
	}
	mps, err := d.mountsOf(ctx, src)
	if err != nil {
		return noop, err
	}
	for _, mp := range mps {
		fi, err := os.Stat(mp)
		if err != nil || !fi.IsDir() {
			continue // a block device bind mount: nothing to freeze
		}
		// Freezing one mount freezes the filesystem under all of them.
		thaw, err := fsfreeze.Freeze(ctx, mp)
		if errors.Is(err, fsfreeze.ErrAlreadyFrozen) {
			return noop, fmt.Errorf("filesystem of volume %s is frozen by someone else: %w", v.ID, errdefs.ErrAborted)
		}
		if err != nil {
			return noop, fmt.Errorf("freeze %s: %w", mp, err)
		}
		return thaw, nil
	}
	return noop, nil
}
