package driver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
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
		// A freeze outlives this process: record it first, so that if we
		// die before the thaw, the next start thaws it (thawLeftovers).
		marker, err := d.markFrozen(v.ID, mp)
		if err != nil {
			return noop, err
		}
		// Freezing one mount freezes the filesystem under all of them.
		thaw, err := fsfreeze.Freeze(ctx, mp)
		if err != nil {
			removeMarker(marker)
		}
		if errors.Is(err, fsfreeze.ErrAlreadyFrozen) {
			return noop, fmt.Errorf("filesystem of volume %s is frozen by someone else: %w", v.ID, errdefs.ErrAborted)
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
func (d *Driver) frozenDir() string { return filepath.Join(d.cfg.StateDir, "frozen") }

// markFrozen records that the filesystem of volume id, mounted at mp, is
// about to be frozen. It returns the marker's path ("" without a state dir).
func (d *Driver) markFrozen(id, mp string) (string, error) {
	if d.cfg.StateDir == "" {
		return "", nil
	}
	if err := os.MkdirAll(d.frozenDir(), 0o700); err != nil {
		return "", fmt.Errorf("record freeze: %w", err)
	}
	marker := filepath.Join(d.frozenDir(), id)
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

// thawLeftovers thaws the filesystems a previous run of this driver froze
// for a snapshot and died before thawing; their workloads' writes hang
// until then, and every later snapshot of them would be refused.
func (d *Driver) thawLeftovers(ctx context.Context) {
	if d.cfg.StateDir == "" {
		return
	}
	entries, err := os.ReadDir(d.frozenDir())
	if err != nil {
		return // none recorded
	}
	for _, e := range entries {
		marker := filepath.Join(d.frozenDir(), e.Name())
		mp, err := os.ReadFile(marker)
		if err != nil {
			continue
		}
		err = fsfreeze.Thaw(string(mp))
		switch {
		case err == nil:
			d.log.Warn("reconcile: thawed a filesystem left frozen by a crash during a snapshot", "volume", e.Name(), "mount", string(mp))
		case errors.Is(err, fsfreeze.ErrNotFrozen) || errors.Is(err, fs.ErrNotExist):
		default:
			d.log.Error("reconcile: cannot thaw a filesystem left frozen by a crash", "volume", e.Name(), "mount", string(mp), "err", err)
			continue // keep the marker: the next start tries again
		}
		os.Remove(marker)
	}
}

// imageMountOptions are the options a filesystem inside an image is
// mounted with at the staging path: the capability's flags, and for xfs
// "nouuid". A snapshot or clone of an xfs volume carries its source's
// UUID, and xfs refuses to mount a second filesystem with a UUID already
// mounted on the node; restoring next to the source is the common case.
func imageMountOptions(fsType string, flags []string) []string {
	opts := slices.Clone(flags)
	if fsType == "xfs" && !hasOption(opts, "nouuid") {
		opts = append(opts, "nouuid")
	}
	return opts
}

// growStaged grows the filesystem just mounted at staging when its image is
// larger than it: a volume restored or cloned into a larger size, or
// expanded by the controller while it was not staged. No CO calls
// NodeExpandVolume for the first case, so stage time is the one place to
// do it. A read-only mount is left as it is.
func (d *Driver) growStaged(ctx context.Context, nv nodeVolume, dev, staging string, opts []string) error {
	if hasOption(opts, "ro") {
		return nil
	}
	if err := d.resizeFS(ctx, dev, staging); err != nil {
		return fmt.Errorf("volume %s: its image is larger than its filesystem: %w", nv.id, err)
	}
	return nil
}

// detachDeletedImage detaches the loop devices still attached to the image
// of volume id, which no longer exists: it was deleted while staged (for
// block access, staging only attaches, so nothing looked in use). The
// devices are found by the image path the kernel reports ("rm-<id>
// (deleted)"), through the pools that keep volumes in image files.
func (d *Driver) detachDeletedImage(ctx context.Context, id string) error {
	devs, err := d.cfg.Loop.List(ctx)
	if err != nil {
		return err
	}
	for dev, backing := range devs {
		file, _ := strings.CutSuffix(backing, " (deleted)")
		if !d.isImageOf(file, id) {
			continue
		}
		st, err := statT(dev)
		if err != nil {
			continue // detached since List
		}
		mps, err := mountPointsOf(mountIdentity{rdevs: []uint64{st.Rdev}})
		if err != nil {
			return err
		}
		if len(mps) > 0 {
			return fmt.Errorf("volume %s was deleted but its device %s is still mounted at %v; unpublish it first: %w", id, dev, mps, errdefs.ErrFailedPrecondition)
		}
		if err := d.detach(ctx, id, dev); err != nil {
			return err
		}
	}
	return nil
}

// isImageOf reports whether file is (or was) the image of volume id in one
// of the pools.
func (d *Driver) isImageOf(file, id string) bool {
	for _, name := range d.poolOrder {
		if imgs, ok := d.pools[name].(backend.ImageFiles); ok {
			if got, ok := imgs.VolumeForImage(file); ok && got == id {
				return true
			}
		}
	}
	return false
}

// fsMinimumBytes are the smallest devices mkfs accepts, per filesystem
// (xfsprogs 6.1: "Filesystem must be larger than 300MB"; btrfs-progs 6.2:
// 114294784 bytes for one device with DUP metadata, rounded up to MiB).
// ext4 formats anything an image pool makes.
var fsMinimumBytes = map[string]int64{
	"xfs":   300 << 20,
	"btrfs": 109 << 20,
}

// imageFsMinimum is the least capacity CreateVolume gives a mount volume of
// fsType in pool b when b keeps volumes in image files, which the node
// formats. Smaller requests are rounded up to it, which CSI allows
// (capacity is at least required_bytes), rather than creating a volume
// that could never be staged; a limit_bytes below it is OUT_OF_RANGE.
func imageFsMinimum(b backend.Backend, access backend.AccessType, fsType string) int64 {
	if _, ok := b.(backend.ImageFiles); !ok || access != backend.AccessMount {
		return 0
	}
	return fsMinimumBytes[fsType]
}
