package node

import (
	"context"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/loopdev"
)

// KernelLoops is LoopDevices over internal/loopdev.
type KernelLoops struct{}

var (
	_ LoopDevices    = KernelLoops{}
	_ LoopBackingIDs = KernelLoops{}
)

// Attach attaches file with direct I/O.
func (KernelLoops) Attach(ctx context.Context, file string, readOnly bool, blockSize uint32) (string, error) {
	d, err := loopdev.Attach(ctx, file, loopdev.Options{ReadOnly: readOnly, DirectIO: true, BlockSize: blockSize})
	return d.Path, err
}

// Find returns the devices file is attached to.
func (KernelLoops) Find(ctx context.Context, file string) ([]string, error) {
	devs, err := loopdev.FindByBackingFile(ctx, file)
	var out []string
	for _, d := range devs {
		out = append(out, d.Path)
	}
	return out, err
}

// Detach detaches dev.
func (KernelLoops) Detach(ctx context.Context, dev string) error { return loopdev.Detach(ctx, dev) }

// Refresh makes dev see its file's size.
func (KernelLoops) Refresh(ctx context.Context, dev string) error {
	return loopdev.SetCapacity(ctx, dev)
}

// BackingID says which file dev holds.
func (KernelLoops) BackingID(dev string) (uint64, uint64, bool) { return loopdev.BackingID(dev) }

// List returns every attached loop device.
func (KernelLoops) List(ctx context.Context) ([]loopdev.Device, error) {
	return loopdev.List(ctx)
}

// AttachImage attaches image file of volume volID to a loop device with
// its logical block size pinned to blockSize. rollback detaches it again:
// a stage that fails after the attach must not leave the device behind,
// since a CO need not call NodeUnstageVolume after a failed
// NodeStageVolume. rollback runs even if ctx is done.
func (n *Node) AttachImage(ctx context.Context, volID, file string, blockSize uint32) (dev string, rollback func(), err error) {
	if n.loop == nil {
		return "", nil, fmt.Errorf("image volumes need loop devices: %w", errdefs.ErrFailedPrecondition)
	}
	dev, err = n.loop.Attach(ctx, file, false, blockSize)
	if err != nil {
		return "", nil, fmt.Errorf("attach %s: %w", file, err)
	}
	n.log.Info("loop device attached", "volume", volID, "device", dev)
	return dev, func() {
		if err := n.loop.Detach(context.WithoutCancel(ctx), dev); err != nil {
			n.log.Error("detach after a failed stage", "volume", volID, "device", dev, "err", err)
		}
	}, nil
}

// Detach detaches a loop device that no mount of ours uses any more. If a
// process elsewhere still holds it open (a mount namespace that copied the
// mount, a stray blkid), the kernel has already marked it to detach at its
// last close: that is logged, not failed, so that unstage converges
// instead of retrying forever on something it cannot change.
func (n *Node) Detach(ctx context.Context, volID, dev string) error {
	err := n.loop.Detach(ctx, dev)
	switch {
	case err == nil:
		n.log.Info("loop device detached", "volume", volID, "device", dev)
		return nil
	case errors.Is(err, unix.EBUSY):
		n.log.Warn("loop device still open elsewhere; the kernel detaches it at its last close", "volume", volID, "device", dev, "err", err)
		return nil
	}
	return fmt.Errorf("detach %s: %w", dev, err)
}

// DetachBeforeDelete detaches devs, the loop devices of volume volID's
// image, which is about to be deleted. Unlike Detach, a device some
// process still holds open is refused (FAILED_PRECONDITION): the delete
// must not leave it behind, pointing at a deleted image and holding its
// space.
func (n *Node) DetachBeforeDelete(ctx context.Context, volID string, devs []string) error {
	for _, dev := range devs {
		err := n.loop.Detach(ctx, dev)
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("volume %s is attached to %s, which a process still holds open; unstage it first: %w", volID, dev, errdefs.ErrFailedPrecondition)
		}
		if err != nil {
			return fmt.Errorf("detach %s before delete: %w", dev, err)
		}
		n.log.Info("loop device detached before delete", "volume", volID, "device", dev)
	}
	return nil
}
