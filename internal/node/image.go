package node

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/crashpoint"
	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/fsprobe"
	"github.com/cairn-csi/cairn/internal/mountfd"
)

// ImageMount is one mount of an image volume's filesystem at its staging
// path, as the driver decided it from the request and the pool.
type ImageMount struct {
	VolID    string
	Dev      string // the device the filesystem is on: the loop device or its LUKS mapping
	FsType   string
	Attrs    mountfd.Attrs // per-mount flags
	FsOpts   []string      // the filesystem's own options
	MkfsArgs []string      // mkfs.<FsType> arguments, Dev last, for a format
	// State is the pool's record of the volume's format.
	State backend.FormatState
	// MarkFormatted records in the pool that the volume is formatted.
	MarkFormatted func(ctx context.Context) error
}

// MountImage mounts the filesystem of m at staging, formatting or growing
// it first where needed:
//
//   - format: only a volume whose pool records it as never formatted to
//     completion (its leftovers, such as the half-written superblock of a
//     killed mkfs, are wiped first), or one with no record (made before
//     pools kept one) that is blank. A volume recorded as formatted is
//     never formatted again, whatever a probe says. "Formatted" is recorded
//     only after mkfs has finished and the device is synced.
//   - grow: when the superblock says the device is larger than the
//     filesystem by more than GrowSlack (a restore or clone into a larger
//     size, an expansion while unstaged). ext* grows before mounting,
//     offline, which needs no CAP_SYS_RESOURCE; xfs and btrfs can only
//     grow mounted, after the mount. An unchanged volume runs no tool.
func (n *Node) MountImage(ctx context.Context, m ImageMount, staging string) error {
	readOnly := m.Attrs.ReadOnly
	dev, state := m.Dev, m.State
	info, probeErr := fsprobe.Read(ctx, dev)
	if probeErr != nil && !errors.Is(probeErr, fsprobe.ErrNoFilesystem) {
		return fmt.Errorf("volume %s: %w", m.VolID, probeErr)
	}
	format := false
	switch state {
	case backend.FormatDone:
	case backend.FormatPending:
		if probeErr == nil {
			n.log.Warn("volume was never formatted to completion: wiping what an interrupted mkfs left", "volume", m.VolID, "found", info.Type)
		}
		format = true
	default:
		// No record: a volume from before records were kept, so a
		// filesystem found is trusted as it always was, and only a device
		// blank to blkid as well (it knows more than ext, xfs and btrfs)
		// is formatted.
		if probeErr != nil {
			existing, err := n.DiskFormat(dev)
			if err != nil {
				return fmt.Errorf("volume %s: probe %s: %w", m.VolID, dev, err)
			}
			format = existing == ""
		}
	}
	if format {
		if readOnly {
			return fmt.Errorf("volume %s has no filesystem yet and cannot be formatted for a read-only stage: %w", m.VolID, errdefs.ErrFailedPrecondition)
		}
		if err := n.Format(ctx, m.VolID, dev, m.FsType, m.MkfsArgs, state == backend.FormatPending); err != nil {
			return err
		}
		crashpoint.Hit("stage:formatted")
		if err := m.MarkFormatted(ctx); err != nil {
			return err
		}
	}
	grow := false
	if !format && probeErr == nil && !readOnly {
		size, err := DeviceSize(dev)
		if err != nil {
			return fmt.Errorf("volume %s: %w", m.VolID, err)
		}
		grow = NeedsGrow(info, size)
	}
	if grow && strings.HasPrefix(info.Type, "ext") {
		if err := n.GrowExtOffline(ctx, m.VolID, dev); err != nil {
			return err
		}
		grow = false
	}
	// Mounted onto the staging directory as it was opened, without
	// following a symlink: the path cannot be swapped under the mount.
	sh, err := mountfd.Open(staging)
	if err != nil {
		return fmt.Errorf("staging_target_path: %w", err)
	}
	err = n.host.MountFS(dev, sh, m.FsType, m.Attrs, m.FsOpts)
	sh.Close()
	if err != nil {
		return err
	}
	if grow {
		if err := n.GrowOnline(ctx, m.VolID, info.Type, staging); err != nil {
			if uerr := n.host.Unmount(staging); uerr != nil {
				err = errors.Join(err, fmt.Errorf("unmount %s again: %w", staging, uerr))
			}
			return err
		}
	}
	if state == backend.FormatUnknown && !format {
		// A volume from before records were kept whose filesystem mounts:
		// record it, so that it is never taken for unformatted. A failure
		// only keeps the old behaviour.
		if err := m.MarkFormatted(ctx); err != nil {
			n.log.Warn("cannot record that an existing volume is formatted", "volume", m.VolID, "err", err)
		}
	}
	return nil
}
