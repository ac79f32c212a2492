package driver

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/fsprobe"
	"github.com/cairn-csi/cairn/internal/mountfd"
	"github.com/cairn-csi/cairn/internal/node"
	"github.com/cairn-csi/cairn/internal/store"
)

// reconcileLoops detaches loop devices whose image belongs to no volume any
// more (deleted while attached, or left by a crash between delete and
// detach), and reports the ones it cannot detach.
func (d *Driver) reconcileLoops(ctx context.Context) {
	devs, err := d.node.Loops().List(ctx)
	if err != nil {
		d.log.Error("reconcile: list loop devices", "err", err)
		return
	}
	for _, dev := range devs {
		for _, name := range d.poolOrder {
			imgs, ok := d.pools[name].(backend.ImageFiles)
			if !ok {
				continue
			}
			id, ok := imgs.VolumeForImage(dev.BackingFile)
			if !ok {
				continue
			}
			_, srcErr := d.pools[name].Source(ctx, id)
			if !dev.Deleted && !errdefs.Is(srcErr, errdefs.ErrNotFound) {
				continue // a live volume: its workload may still be using it
			}
			if err := d.node.CloseMapping(ctx, id); err != nil {
				d.log.Error("reconcile: cannot close the mapping of a deleted volume", "volume", id, "err", err)
			}
			if err := d.node.Loops().Detach(ctx, dev.Path); err != nil {
				d.log.Error("reconcile: cannot detach loop device of a deleted volume", "device", dev.Path, "image", dev.BackingFile, "deleted", dev.Deleted, "err", err)
				continue
			}
			d.log.Info("reconcile: detached loop device of a deleted volume", "device", dev.Path, "image", dev.BackingFile, "deleted", dev.Deleted, "pool", name)
		}
	}
}

// freezeForSnapshot asks the node layer to freeze volume v's filesystem
// for a snapshot or clone of it (node.FreezeForSnapshot says which
// volumes need it). The returned thaw is never nil.
func (d *Driver) freezeForSnapshot(ctx context.Context, v store.Volume) (func() error, error) {
	noop := func() error { return nil }
	pool, ok := d.pools[v.Pool]
	if !ok {
		return noop, nil
	}
	src, err := pool.Source(ctx, v.ID)
	if err != nil {
		return noop, nil
	}
	return d.node.FreezeForSnapshot(ctx, v.ID, src)
}

// imageMountOptions are the options a filesystem inside an image is
// mounted with at the staging path: the capability's flags, and for xfs
// "nouuid". A snapshot or clone of an xfs volume carries its source's
// UUID, and xfs refuses to mount a second filesystem with a UUID already
// mounted on the node; restoring next to the source is the common case.
func imageMountOptions(fsType string, flags []string) []string {
	opts := slices.Clone(flags)
	if fsType == "xfs" && !node.HasOption(opts, "nouuid") {
		opts = append(opts, "nouuid")
	}
	return opts
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

// Logical block sizes pinned on image loop devices. Left to the kernel, a
// direct-I/O loop device takes the backing file's direct-I/O alignment,
// which becomes 4096 once an image on XFS shares extents with a snapshot;
// a filesystem with 1 KiB blocks or 512-byte sectors made on an earlier
// attach then cannot be mounted ("bad block size 1024", "device supports
// 4096 byte sectors"). So the size is chosen, never inherited:
//   - a volume cairn is about to format gets 4096, and mkfs is told to use
//     4096-byte blocks (ext*) or sectors (xfs), so the two always agree
//     and direct I/O stays possible on 4K-aligned pools;
//   - an image that already holds a filesystem gets that filesystem's own
//     sector size (ext block size, xfs sector size, btrfs sector size),
//     read from its superblock before attaching: volumes formatted before
//     this rule (1 KiB ext4 blocks) keep mounting, at the price of
//     buffered I/O where the pool needs 4K-aligned direct I/O;
//   - a block volume, or content no probe recognises, gets 512, on which
//     every filesystem a workload may have made can be mounted.
const (
	newImageBlockSize  = 4096
	safeImageBlockSize = 512
)

// imageBlockSize is the logical block size to pin when attaching the image
// of nv for capability vc.
func (d *Driver) imageBlockSize(ctx context.Context, nv nodeVolume, vc *csi.VolumeCapability) uint32 {
	fsType := firstNonEmpty(vc.GetMount().GetFsType(), nv.fsType, "ext4")
	if vc.GetMount() != nil {
		if st, err := d.formatState(ctx, nv); err == nil && st == backend.FormatPending {
			return mkfsBlockSize(fsType, nv.mkfs) // whatever it holds is wiped
		}
	}
	info, err := fsprobe.Read(ctx, nv.src.Path)
	switch {
	case err == nil:
		return clampBlockSize(info.SectorSize)
	case vc.GetMount() != nil && errors.Is(err, fsprobe.ErrNoFilesystem):
		return mkfsBlockSize(fsType, nv.mkfs)
	}
	return safeImageBlockSize
}

// clampBlockSize returns the largest loop block size (a power of two in
// [512, 4096]) not above n.
func clampBlockSize(n int64) uint32 {
	bs := uint32(safeImageBlockSize)
	for bs*2 <= newImageBlockSize && int64(bs*2) <= n {
		bs *= 2
	}
	return bs
}

// mkfsBlockSize is the block size to pin for a device mkfs is about to
// format with the StorageClass's options: 4096, or less where the options
// ask for smaller ext blocks ("-b N") or xfs sectors ("-s size=N"), or for
// xfs blocks ("-b size=N") that a 4096-byte sector would not fit in.
func mkfsBlockSize(fsType string, opts []string) uint32 {
	bs := int64(newImageBlockSize)
	for i := 0; i+1 < len(opts); i++ {
		var v string
		switch {
		case strings.HasPrefix(fsType, "ext") && opts[i] == "-b":
			v = opts[i+1]
		case fsType == "xfs" && (opts[i] == "-s" || opts[i] == "-b"):
			for _, kv := range strings.Split(opts[i+1], ",") {
				if s, ok := strings.CutPrefix(kv, "size="); ok {
					v = s
				}
			}
		}
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n > 0 {
			bs = min(bs, n)
		}
	}
	return clampBlockSize(bs)
}

// mkfsArgs are the arguments to mkfs.<fsType> for dev: force (the device
// was wiped or is blank), no reserved blocks for ext, the block or sector
// size pinned on the device unless the StorageClass's options choose one,
// then those options.
func mkfsArgs(fsType string, opts []string, dev string) []string {
	var args []string
	switch {
	case strings.HasPrefix(fsType, "ext"):
		args = []string{"-F", "-m0"}
		if !slices.Contains(opts, "-b") {
			args = append(args, "-b", strconv.Itoa(newImageBlockSize))
		}
	case fsType == "xfs":
		args = []string{"-f"}
		if !slices.Contains(opts, "-s") {
			args = append(args, "-s", fmt.Sprintf("size=%d", mkfsBlockSize(fsType, opts)))
		}
	default:
		args = []string{"-f"}
	}
	args = append(args, opts...)
	return append(args, dev)
}

// formatState asks nv's pool what it recorded of nv's format; pools that
// record nothing answer unknown.
func (d *Driver) formatState(ctx context.Context, nv nodeVolume) (backend.FormatState, error) {
	fr, ok := nv.b.(backend.FormatRecorder)
	if !ok {
		return backend.FormatUnknown, nil
	}
	st, err := fr.FormatState(ctx, nv.id)
	if err != nil {
		return backend.FormatUnknown, fmt.Errorf("volume %s: format state: %w", nv.id, err)
	}
	return st, nil
}

func (d *Driver) markFormatted(ctx context.Context, nv nodeVolume) error {
	fr, ok := nv.b.(backend.FormatRecorder)
	if !ok {
		return nil
	}
	if err := fr.MarkFormatted(ctx, nv.id); err != nil {
		return fmt.Errorf("volume %s: %w", nv.id, err)
	}
	return nil
}

// stageImage finds the device of image volume nv, whose loop device is
// attached, checks the capability's filesystem and flags, reads the
// pool's format record, and has the node layer mount it at staging,
// formatting or growing it first where needed (node.MountImage says
// when).
func (d *Driver) stageImage(ctx context.Context, nv nodeVolume, staging string, m *csi.VolumeCapability_MountVolume) error {
	devs, err := d.node.Loops().Find(ctx, nv.src.Path)
	if err != nil || len(devs) == 0 {
		return fmt.Errorf("loop device for %s vanished: %v: %w", nv.src.Path, err, errdefs.ErrAborted)
	}
	dev, err := d.volumeDevice(ctx, nv)
	if err != nil {
		return err
	}
	fsType := firstNonEmpty(m.GetFsType(), nv.fsType, "ext4")
	if err := checkFsType("volume_capability.mount.fs_type", fsType); err != nil {
		return err
	}
	// Mount flags pass the allow-list: per-mount flags, and the
	// filesystem's own options that name no device or path.
	attrs, fsOpts, err := mountfd.ParseOptions(fsType, m.GetMountFlags())
	if err != nil {
		return fmt.Errorf("volume_capability.mount.mount_flags: %w", err)
	}
	fsOpts = imageMountOptions(fsType, fsOpts)
	state, err := d.formatState(ctx, nv)
	if err != nil {
		return err
	}
	return d.node.MountImage(ctx, node.ImageMount{
		VolID: nv.id, Dev: dev, FsType: fsType, Attrs: attrs, FsOpts: fsOpts,
		MkfsArgs: mkfsArgs(fsType, nv.mkfs, dev), State: state,
		MarkFormatted: func(ctx context.Context) error { return d.markFormatted(ctx, nv) },
	}, staging)
}
