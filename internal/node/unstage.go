package node

import (
	"context"
	"fmt"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/fscrypt"
	"github.com/cairn-csi/cairn/internal/luks"
)

// CloseMapping closes volume volID's LUKS mapping, if it is open.
func (n *Node) CloseMapping(ctx context.Context, volID string) error {
	if err := luks.Close(ctx, luks.MappingName(volID)); err != nil {
		return fmt.Errorf("close the encrypted mapping of volume %s: %w", volID, err)
	}
	return nil
}

// requireUnmounted refuses (FAILED_PRECONDITION) while the volume with
// source src is mounted anywhere on this node: its device must stay.
func (n *Node) requireUnmounted(ctx context.Context, volID string, src backend.Source) error {
	mps, err := n.MountsOf(ctx, src)
	if err != nil {
		return err
	}
	if len(mps) > 0 {
		return fmt.Errorf("volume %s is still mounted at %v; unpublish it first: %w", volID, mps, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// ReleaseImage closes the LUKS mapping of image volume volID and detaches
// its loop devices, once nothing mounts it: the end of an unstage.
func (n *Node) ReleaseImage(ctx context.Context, volID string, src backend.Source) error {
	if err := n.requireUnmounted(ctx, volID, src); err != nil {
		return err
	}
	if err := n.CloseMapping(ctx, volID); err != nil {
		return err
	}
	devs, err := n.loop.Find(ctx, src.Path)
	if err != nil {
		return err
	}
	for _, dev := range devs {
		if err := n.Detach(ctx, volID, dev); err != nil {
			return err
		}
	}
	return nil
}

// CloseMappingUnused closes the LUKS mapping of encrypted block device
// volume volID once nothing mounts it, so that its key leaves the kernel.
func (n *Node) CloseMappingUnused(ctx context.Context, volID string, src backend.Source) error {
	if err := n.requireUnmounted(ctx, volID, src); err != nil {
		return err
	}
	return n.CloseMapping(ctx, volID)
}

// ReleaseDeletedImage closes the mapping of volume volID, whose image no
// longer exists (deleted while staged), and detaches the loop devices
// still attached to that image. isImage says whether a loop device's
// reported backing file ("rm-<id> (deleted)") was the volume's image: the
// pools know, the node does not. A device still mounted is refused.
func (n *Node) ReleaseDeletedImage(ctx context.Context, volID string, isImage func(file string) bool) error {
	if err := n.CloseMapping(ctx, volID); err != nil {
		return err
	}
	devs, err := n.loop.List(ctx)
	if err != nil {
		return err
	}
	for _, dev := range devs {
		if !isImage(dev.BackingFile) {
			continue
		}
		var st unix.Stat_t
		if err := unix.Stat(dev.Path, &st); err != nil {
			continue // detached since List
		}
		mps, err := n.MountPointsOf(DeviceIdentity(st.Rdev))
		if err != nil {
			return err
		}
		if len(mps) > 0 {
			return fmt.Errorf("volume %s was deleted but its device %s is still mounted at %v; unpublish it first: %w", volID, dev.Path, mps, errdefs.ErrFailedPrecondition)
		}
		if err := n.Detach(ctx, volID, dev.Path); err != nil {
			return err
		}
	}
	return nil
}

// KeyringDir is where the key of directory volume src is removed: the
// ioctl goes to the filesystem's keyring through any directory on it, and
// the directory it is issued on is open meanwhile. Issued on the volume's
// own directory, that directory was in use, so the removal stayed
// incomplete and the directory unlocked (its names in plaintext) until
// the kernel happened to evict it. Its parent, the pool's unencrypted
// volumes directory, is on the same filesystem.
func KeyringDir(src backend.Source) string { return filepath.Dir(src.Path) }

// LockDir drops the key of encrypted directory volume volID once nothing
// mounts it, so that its data is ciphertext again until the next stage. A
// directory that is not encrypted, or a filesystem without fscrypt, has
// nothing to lock.
func (n *Node) LockDir(ctx context.Context, volID string, src backend.Source) error {
	kid, encrypted, err := n.DirEncryption(src)
	if err != nil || !encrypted {
		return err
	}
	mps, err := n.MountsOf(ctx, src)
	if err != nil {
		return err
	}
	if len(mps) > 0 {
		n.log.Warn("unstage: the volume is still mounted elsewhere; its key stays loaded", "volume", volID, "mounts", mps)
		return nil
	}
	busy, err := fscrypt.RemoveKey(KeyringDir(src), kid)
	if err != nil {
		return fmt.Errorf("drop the key of volume %s: %w", volID, err)
	}
	if busy {
		n.log.Warn("unstage: files of the volume are still open; they stay readable until closed, everything else is locked", "volume", volID)
	}
	n.log.Info("volume key dropped", "volume", volID, "key", kid.String())
	return nil
}
