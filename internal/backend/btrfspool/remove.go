package btrfspool

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/backend/staging"
	"github.com/cairn-csi/cairn/internal/btrfs"
	"github.com/cairn-csi/cairn/internal/errdefs"
)

// btrfsFirstFreeObjectID is the inode number of every subvolume's root
// directory (BTRFS_FIRST_FREE_OBJECTID).
const btrfsFirstFreeObjectID = 256

// maxNesting bounds how deep removeEntry follows subvolumes nested in
// subvolumes, so that a pathological tree fails instead of recursing on.
const maxNesting = 32

// removeEntry is the staging.Dir Remove of both directories: it deletes a
// subvolume, with any subvolumes nested in it, and falls back to
// staging.RemoveAll for anything else (a plain directory or file left by
// hand or by an older layout). A missing path is not an error.
func removeEntry(ctx context.Context, path string) error {
	sub, err := btrfs.IsSubvolume(path)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return err
	}
	if !sub {
		return staging.RemoveAll(ctx, path)
	}
	return deleteSubvolume(ctx, path, 0)
}

// deleteSubvolume deletes subvolume path. The kernel refuses a subvolume
// that contains others (ENOTEMPTY), and any workload may create one in its
// volume, so those are found and deleted first. Only then is the tree
// walked: the common delete stays one ioctl, whatever the volume holds.
func deleteSubvolume(ctx context.Context, path string, depth int) error {
	err := btrfs.DeleteSubvolume(ctx, path)
	if !errors.Is(err, unix.ENOTEMPTY) {
		return err
	}
	if depth >= maxNesting {
		return fmt.Errorf("%s: subvolumes nested more than %d deep: %w", path, maxNesting, err)
	}
	nested, werr := nestedSubvolumes(ctx, path)
	if werr != nil {
		return errors.Join(err, werr)
	}
	for _, n := range nested {
		if err := deleteSubvolume(ctx, n, depth+1); err != nil {
			return fmt.Errorf("delete %s nested in %s: %w", n, path, err)
		}
	}
	return btrfs.DeleteSubvolume(ctx, path)
}

// nestedSubvolumes lists the subvolumes directly nested in subvolume root
// (not those nested in them). It never descends into a mount point: what
// is mounted there (a bind mount of another volume, say) is not part of
// root and must survive its deletion.
func nestedSubvolumes(ctx context.Context, root string) ([]string, error) {
	var out []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if path == root || !d.IsDir() {
			return nil
		}
		var stx unix.Statx_t
		if err := unix.Statx(unix.AT_FDCWD, path, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_INO, &stx); err != nil {
			return fmt.Errorf("statx %s: %w", path, err)
		}
		if stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT == 0 {
			// Kernels before 5.8 cannot say; do not guess.
			return fmt.Errorf("statx %s: the kernel does not report mount points: %w", path, errdefs.ErrNotSupported)
		}
		if stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0 {
			return fs.SkipDir
		}
		if stx.Ino != btrfsFirstFreeObjectID {
			return nil
		}
		if sub, err := btrfs.IsSubvolume(path); err != nil || !sub {
			return err
		}
		out = append(out, path)
		return fs.SkipDir
	})
	if err != nil {
		return nil, fmt.Errorf("find subvolumes nested in %s: %w", root, err)
	}
	return out, nil
}
