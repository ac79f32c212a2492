package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"

	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/cairn-csi/cairn/internal/errdefs"
)

// ResizeFS grows the filesystem on dev, mounted at mountPath, online.
func (n *Node) ResizeFS(ctx context.Context, dev, mountPath string) error {
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
	n.log.Info("filesystem grown", "device", dev, "mount", mountPath)
	return nil
}

// GrowExtOffline grows the unmounted ext filesystem of volume volID on dev
// to fill it: resize2fs refuses a filesystem not freshly checked, so
// e2fsck -f -p first. Offline growth needs no CAP_SYS_RESOURCE, unlike
// online growth.
func (n *Node) GrowExtOffline(ctx context.Context, volID, dev string) error {
	out, err := n.host.RunTool(ctx, "e2fsck", "-f", "-p", dev)
	var ee *exec.ExitError
	// Exit 1 and 2: errors were corrected; 4 and up: they were not.
	if errors.As(err, &ee) && ee.ExitCode() < 4 {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("volume %s: e2fsck before growing: %w: %s", volID, err, out)
	}
	if out, err := n.host.RunTool(ctx, "resize2fs", dev); err != nil {
		return fmt.Errorf("volume %s: resize2fs %s: %w: %s", volID, dev, err, out)
	}
	n.log.Info("filesystem grown", "volume", volID, "device", dev, "tool", "resize2fs", "online", false)
	return nil
}

// GrowOnline grows the filesystem of type fsType of volume volID, mounted
// at mp, to fill its device.
func (n *Node) GrowOnline(ctx context.Context, volID, fsType, mp string) error {
	var tool []string
	switch fsType {
	case "xfs":
		tool = []string{"xfs_growfs", "-d", mp}
	case "btrfs":
		tool = []string{"btrfs", "filesystem", "resize", "max", mp}
	default:
		return fmt.Errorf("volume %s: cannot grow %s online: %w", volID, fsType, errdefs.ErrFailedPrecondition)
	}
	if out, err := n.host.RunTool(ctx, tool[0], tool[1:]...); err != nil {
		return fmt.Errorf("volume %s: its image is larger than its filesystem: %s: %w: %s", volID, strings.Join(tool, " "), err, out)
	}
	n.log.Info("filesystem grown", "volume", volID, "mount", mp, "tool", tool[0], "online", true)
	return nil
}

// FormatAndMount formats dev with fsType (mkfs arguments mkfs) if it is
// blank, and mounts it at target with opts, through mount-utils.
func (n *Node) FormatAndMount(dev, target, fsType string, opts, mkfs []string) error {
	return n.mounter.FormatAndMountSensitiveWithFormatOptions(dev, target, fsType, opts, nil, mkfs)
}

// DiskFormat is what blkid finds on dev ("" for nothing).
func (n *Node) DiskFormat(dev string) (string, error) { return n.mounter.GetDiskFormat(dev) }

// Unmount unmounts path through mount-utils.
func (n *Node) Unmount(path string) error { return n.mounter.Unmount(path) }

// RunTool runs a filesystem tool with messages in English (they end up in
// errors) and returns its combined output.
func RunTool(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	return bytes.TrimSpace(out), err
}
