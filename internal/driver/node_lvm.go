package driver

// The node side of volumes whose source is a block device of their own
// (backend.SourceBlockDevice: LVM logical volumes). They need no loop
// device: stage activates an inactive LV (backend.Activator) and opens an
// encrypted one as its LUKS mapping; mount access formats the device (or
// mapping) if blank and mounts it at the staging path; block access
// stages nothing more and publishes by bind-mounting the device node (or
// mapping) onto the target file; NodeExpandVolume makes the mapping fill
// the grown LV and grows a mounted filesystem online (the controller's
// lvextend already grew the LV). Unstage closes the mapping. node.go calls
// these from one-line `case backend.SourceBlockDevice` hooks.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/mountfd"
	"github.com/cairn-csi/cairn/internal/node"
)

// deviceNode resolves a block device source to its device node. lvm2's
// /dev/VG/LV is a symlink (to /dev/mapper/VG-LV, or with udev to
// /dev/dm-N); the mount layer refuses symlinks, and mountinfo names the
// node, so the node is what is mounted and bound.
func deviceNode(src backend.Source) (string, error) {
	dev, err := filepath.EvalSymlinks(src.Path)
	if err != nil {
		return "", fmt.Errorf("device of volume source %s: %w", src.Path, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		return "", fmt.Errorf("device %s: %w", dev, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return "", fmt.Errorf("volume source %s (%s) is not a block device", src.Path, dev)
	}
	return dev, nil
}

// openBlockDevice readies a block device volume for stage: an inactive LV
// is activated (the one place that activates: it is about to be used,
// and after a reboot with auto-activation off that is lvm2's normal
// state), and an encrypted one is opened with the stage secrets. It
// reports whether it opened a mapping, which a failed stage closes again.
// Activation is asked for only when the device node is missing, so a
// stage of an active LV costs no lvm2 command.
func (d *Driver) openBlockDevice(ctx context.Context, nv nodeVolume, secrets map[string]string) (bool, error) {
	if _, err := os.Stat(nv.src.Path); err != nil {
		a, ok := nv.b.(backend.Activator)
		if !ok {
			return false, fmt.Errorf("volume %s: device %s: %w", nv.id, nv.src.Path, err)
		}
		if err := a.Activate(ctx, nv.id); err != nil {
			return false, err
		}
	}
	if !nv.src.LUKS {
		return false, nil
	}
	dev, err := deviceNode(nv.src)
	if err != nil {
		return false, err
	}
	if _, err := d.openLUKS(ctx, nv, dev, secrets); err != nil {
		return false, err
	}
	return true, nil
}

// blockDeviceOf is the device a block device volume's data is used
// through: its LUKS mapping, which must be open (stage opened it), or the
// device node itself.
func blockDeviceOf(nv nodeVolume) (string, error) {
	if !nv.src.LUKS {
		return deviceNode(nv.src)
	}
	p, open := node.Mapping(nv.id)
	if !open {
		return "", fmt.Errorf("volume %s is encrypted and not staged (its mapping %s is not open): %w", nv.id, p, errdefs.ErrFailedPrecondition)
	}
	return p, nil
}

// stageBlockDevice stages a block device volume: for mount access, format
// it if blank and mount it at staging, then grow the filesystem if the
// device is larger (a restore or clone into a bigger volume, or an
// expansion while unstaged). Block access stages nothing.
func (d *Driver) stageBlockDevice(ctx context.Context, nv nodeVolume, c *csi.VolumeCapability, staging string) error {
	if nv.block(c) {
		return nil // publish bind-mounts the device itself
	}
	if nv.mkfsErr != nil {
		return nv.mkfsErr
	}
	dev, err := blockDeviceOf(nv)
	if err != nil {
		return err
	}
	m := c.GetMount()
	fsType := firstNonEmpty(m.GetFsType(), nv.fsType, "ext4")
	if err := checkFsType("volume_capability.mount.fs_type", fsType); err != nil {
		return err
	}
	if _, _, err := mountfd.ParseOptions(fsType, m.GetMountFlags()); err != nil {
		return fmt.Errorf("volume_capability.mount.mount_flags: %w", err)
	}
	opts := blockDeviceMountOptions(fsType, m.GetMountFlags())
	if err := d.node.FormatAndMount(dev, staging, fsType, opts, nv.mkfs); err != nil {
		return fmt.Errorf("format and mount %s at %s: %w", dev, staging, err)
	}
	if node.HasOption(opts, "ro") {
		return nil
	}
	if err := d.node.ResizeFS(ctx, dev, staging); err != nil {
		if uerr := d.node.Unmount(staging); uerr != nil {
			err = errors.Join(err, fmt.Errorf("unmount %s again: %w", staging, uerr))
		}
		return fmt.Errorf("volume %s: its device is larger than its filesystem: %w", nv.id, err)
	}
	return nil
}

// blockDeviceMountOptions are the mount options of a volume's own
// filesystem. A thin snapshot, restore or clone carries its origin's XFS
// UUID, which XFS refuses to mount twice without nouuid.
func blockDeviceMountOptions(fsType string, flags []string) []string {
	opts := slices.Clone(flags)
	if fsType == "xfs" && !node.HasOption(opts, "nouuid") {
		opts = append(opts, "nouuid")
	}
	return opts
}

// blockDeviceUsage is NodeGetVolumeStats' usage for a block device volume
// at path: the filesystem's statfs when path is its mount, the device's
// size when path is the device's bind mount.
func blockDeviceUsage(nv nodeVolume, path string) (backend.Usage, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return backend.Usage{}, err
	}
	if fi.Mode()&os.ModeDevice == 0 {
		return backend.StatfsUsage(path)
	}
	f, err := os.Open(path)
	if err != nil {
		return backend.Usage{}, err
	}
	defer f.Close()
	size, err := f.Seek(0, 2)
	if err != nil {
		return backend.Usage{}, fmt.Errorf("size of %s: %w", path, err)
	}
	return backend.Usage{TotalBytes: size}, nil
}

// growBlockDeviceOnNode grows the filesystem of a block device volume
// mounted at path, online. The LV already has its new size (lvextend
// changes it in place); an open LUKS mapping on it is made to fill it
// first (cryptsetup resize, with the key Open left in the dm table), for
// block and mount access alike. For block access that is all: a
// filesystem the workload made on its raw device is the workload's.
func (d *Driver) growBlockDeviceOnNode(ctx context.Context, nv nodeVolume, path string) error {
	if nv.src.LUKS {
		if _, open := node.Mapping(nv.id); open {
			if err := d.node.ResizeMapping(ctx, nv.id); err != nil {
				return err
			}
		}
	}
	if ok, err := d.filesystemMountedAt(ctx, nv, path); err != nil || !ok {
		return err
	}
	dev, err := blockDeviceOf(nv)
	if err != nil {
		return err
	}
	return d.node.ResizeFS(ctx, dev, path)
}
