package node

import (
	"context"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/fsprobe"
)

// GrowSlack is how much larger than its filesystem a device must be for a
// stage to grow the filesystem. It is below the pools' size granularity (1
// MiB), so every expansion counts, and above the tails the grow tools
// leave unused (a few blocks, a too-small last xfs AG), so that a volume
// they cannot grow further is not "grown" again at every stage.
const GrowSlack = 1<<20 - 1

// NeedsGrow reports whether the filesystem info describes would grow on a
// device of devSize bytes by more than GrowSlack.
func NeedsGrow(info fsprobe.Info, devSize int64) bool {
	return info.GrowTarget(devSize)-info.Size > GrowSlack
}

// DeviceSize returns the size of block device dev in bytes.
func DeviceSize(dev string) (int64, error) {
	f, err := os.Open(dev)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, fmt.Errorf("size of %s: %w", dev, err)
	}
	return n, nil
}

// wipeBytes is how much of each end of a device Format zeroes before
// formatting again: every superblock and signature mkfs or blkid looks at
// near the start (btrfs's primary is at 64 KiB) or the end.
const wipeBytes = 1 << 20

// Format makes a fsType filesystem on dev with mkfs arguments args (dev
// last), after wiping dev's ends when wipe is set (what an interrupted
// mkfs left), and syncs it, so that the caller may then record volume
// volID as formatted.
func (n *Node) Format(ctx context.Context, volID, dev, fsType string, args []string, wipe bool) error {
	if wipe {
		if err := wipeEnds(dev); err != nil {
			return fmt.Errorf("volume %s: %w", volID, err)
		}
	}
	n.log.Info("formatting volume", "volume", volID, "device", dev, "fsType", fsType)
	if out, err := n.host.RunTool(ctx, "mkfs."+fsType, args...); err != nil {
		return fmt.Errorf("volume %s: mkfs.%s %s: %w: %s", volID, fsType, dev, err, out)
	}
	if err := syncDevice(dev); err != nil {
		return fmt.Errorf("volume %s: %w", volID, err)
	}
	return nil
}

// wipeEnds zeroes the first and last wipeBytes of dev and syncs them.
// O_EXCL fails if anything has the device mounted: the wipe never races a
// mount.
func wipeEnds(dev string) error {
	f, err := os.OpenFile(dev, os.O_WRONLY|unix.O_EXCL, 0)
	if err != nil {
		return fmt.Errorf("wipe %s: %w", dev, err)
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("wipe %s: %w", dev, err)
	}
	zero := make([]byte, min(wipeBytes, size))
	for _, off := range []int64{0, max(0, size-wipeBytes)} {
		if _, err := f.WriteAt(zero, off); err != nil {
			return fmt.Errorf("wipe %s at %d: %w", dev, off, err)
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("wipe %s: fsync: %w", dev, err)
	}
	return f.Close()
}

// syncDevice flushes dev; on a loop device that syncs the image file.
func syncDevice(dev string) error {
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dev, err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dev, err)
	}
	return f.Close()
}
