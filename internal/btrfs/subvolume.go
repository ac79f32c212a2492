// Package btrfs owns Cairn's use of btrfs: subvolumes, snapshots and quota
// groups (qgroups), all driven through ioctls on file descriptors so that the
// node image does not need btrfs-progs and no output is parsed.
//
// It never mounts, formats or walks directories; callers pass paths on an
// already mounted btrfs filesystem. Every function needs root
// (CAP_SYS_ADMIN), which the node plugin has.
//
// # Context
//
// ioctls cannot be cancelled once issued, so ctx is checked before each step
// of a multi-step call, not during a single ioctl. The one ioctl that can wait
// for long (waiting for a quota rescan) runs in its own goroutine and is
// abandoned, not interrupted, when ctx ends.
//
// # Errors
//
// Errors wrap both the errno (errors.Is(err, unix.EEXIST)) and, where one
// fits, an errdefs class (errors.Is(err, errdefs.ErrAlreadyExists)).
//
// # Durability
//
// Snapshot creation commits a transaction. Subvolume creation and deletion
// do not: after a crash before the next commit (at most the commit interval,
// 30 s by default) a created subvolume may be gone or a deleted one back,
// which the backend's reconcile already handles.
package btrfs

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/errdefs"
)

// IsBtrfs reports whether path is on a btrfs filesystem.
func IsBtrfs(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, pathErr("statfs", path, err)
	}
	return isBtrfsMagic(&st), nil
}

func isBtrfsMagic(st *unix.Statfs_t) bool {
	// Statfs_t.Type is signed on some architectures; compare the low 32 bits.
	return uint32(st.Type) == uint32(unix.BTRFS_SUPER_MAGIC)
}

// IsSubvolume reports whether path is the root directory of a btrfs
// subvolume (or snapshot). It is false, with no error, for anything else
// that exists, including symlinks and paths on other filesystems.
func IsSubvolume(path string) (bool, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return false, pathErr("stat", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR || st.Ino != firstFreeObjectID {
		return false, nil
	}
	return IsBtrfs(path)
}

// CreateSubvolume creates an empty subvolume named name in parentDir.
// It fails with errdefs.ErrAlreadyExists if name exists.
func CreateSubvolume(ctx context.Context, parentDir, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	target := filepath.Join(parentDir, name)
	if err := checkName(name); err != nil {
		return pathErr("create subvolume", target, err)
	}
	pfd, err := openDir(parentDir)
	if err != nil {
		return pathErr("create subvolume", target, err)
	}
	defer unix.Close(pfd)

	var args volArgs
	setName(args.Name[:], name)
	if err := ioctl(pfd, iocSubvolCreate, unsafe.Pointer(&args)); err != nil {
		return pathErr("create subvolume", target, err)
	}
	return nil
}

// Snapshot creates name in parentDir as a snapshot of the subvolume
// srcSubvol. The snapshot is read-only when readOnly is set. parentDir must be
// on the same filesystem as srcSubvol. Snapshots do not recurse: subvolumes
// nested in srcSubvol appear as empty directories.
func Snapshot(ctx context.Context, srcSubvol, parentDir, name string, readOnly bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	target := filepath.Join(parentDir, name)
	if err := checkName(name); err != nil {
		return pathErr("snapshot", target, err)
	}
	sfd, err := openSubvol(srcSubvol)
	if err != nil {
		return pathErr("snapshot", srcSubvol, err)
	}
	defer unix.Close(sfd)
	pfd, err := openDir(parentDir)
	if err != nil {
		return pathErr("snapshot", target, err)
	}
	defer unix.Close(pfd)

	args := volArgsV2{FD: int64(sfd)}
	if readOnly {
		args.Flags = subvolRDOnly
	}
	setName(args.Name[:], name)
	if err := ioctl(pfd, iocSnapCreateV2, unsafe.Pointer(&args)); err != nil {
		return pathErr("snapshot", target, err)
	}
	return nil
}

// DeleteSubvolume deletes the subvolume or snapshot at path, read-only or
// not. A missing path is not an error, so retries converge. A subvolume that
// still contains other subvolumes is refused (errdefs.ErrFailedPrecondition,
// ENOTEMPTY). The directory entry goes at once; the space is reclaimed later
// by the kernel's cleaner thread.
//
// When quotas are enabled it also removes the subvolume's qgroup 0/<id>, so
// that a later subvolume that reuses the ID does not inherit its limit. See
// RemoveQgroup for why that removal may be left to the kernel.
func DeleteSubvolume(ctx context.Context, path string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	path = filepath.Clean(path)
	parent, name := filepath.Split(path)
	if parent == "" {
		parent = "."
	}
	if err := checkName(name); err != nil {
		return pathErr("delete subvolume", path, err)
	}

	fd, err := openSubvol(path)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return pathErr("delete subvolume", path, err)
	}
	id, idErr := subvolumeID(fd)
	ro, roErr := readOnly(fd)
	quotas, qErr := quotaEnabled(fd)
	unix.Close(fd)
	if err := errors.Join(idErr, roErr, qErr); err != nil {
		return pathErr("delete subvolume", path, err)
	}

	pfd, err := openDir(parent)
	if err != nil {
		return pathErr("delete subvolume", path, err)
	}
	defer unix.Close(pfd)

	err = destroyFn(pfd, name)
	if ro && (errors.Is(err, unix.EPERM) || errors.Is(err, unix.EROFS)) {
		// Kernels that refuse to delete a read-only subvolume accept it once
		// writable. Put the flag back if the delete still fails, so a failed
		// call never leaves a snapshot writable.
		if err := SetReadOnly(path, false); err != nil {
			return pathErr("delete subvolume", path, err)
		}
		if err = destroyFn(pfd, name); err != nil {
			if rerr := SetReadOnly(path, true); rerr != nil {
				err = errors.Join(err, rerr)
			}
		}
	}
	if errors.Is(err, unix.ENOENT) {
		return nil // deleted by a concurrent caller
	}
	if err != nil {
		return pathErr("delete subvolume", path, err)
	}

	if quotas {
		err := RemoveQgroup(ctx, parent, id)
		if err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("btrfs: delete subvolume %q: deleted, but: %w", path, err)
		}
	}
	return nil
}

// destroyFn is a seam for tests: the kernels we test on let root delete a
// read-only subvolume directly, so the fallback above is exercised by fault
// injection.
var destroyFn = destroy

func destroy(pfd int, name string) error {
	var args volArgs
	setName(args.Name[:], name)
	return ioctl(pfd, iocSnapDestroy, unsafe.Pointer(&args))
}

// SubvolumeID returns the ID (tree ID) of the subvolume containing path.
// For a subvolume root this is its own ID, and its qgroup is 0/<ID>.
func SubvolumeID(ctx context.Context, path string) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, pathErr("subvolume id", path, err)
	}
	defer unix.Close(fd)
	id, err := subvolumeID(fd)
	if err != nil {
		return 0, pathErr("subvolume id", path, err)
	}
	return id, nil
}

func subvolumeID(fd int) (uint64, error) {
	// Tree ID 0 asks for the tree of fd's inode; objectid 256 makes the
	// kernel stop there instead of resolving a path. No privilege needed.
	args := inoLookupArgs{ObjectID: firstFreeObjectID}
	if err := ioctl(fd, iocInoLookup, unsafe.Pointer(&args)); err != nil {
		return 0, fmt.Errorf("INO_LOOKUP: %w", err)
	}
	return args.TreeID, nil
}

// SetReadOnly sets or clears the read-only flag of the subvolume at path.
// Clearing it on a snapshot that was received with btrfs receive loses its
// received UUID; Cairn never uses send/receive.
func SetReadOnly(path string, ro bool) error {
	fd, err := openSubvol(path)
	if err != nil {
		return pathErr("set read-only", path, err)
	}
	defer unix.Close(fd)
	var flags uint64
	if err := ioctl(fd, iocSubvolGetFlags, unsafe.Pointer(&flags)); err != nil {
		return pathErr("set read-only", path, err)
	}
	want := flags &^ subvolRDOnly
	if ro {
		want |= subvolRDOnly
	}
	if want == flags {
		return nil
	}
	if err := ioctl(fd, iocSubvolSetFlags, unsafe.Pointer(&want)); err != nil {
		return pathErr("set read-only", path, err)
	}
	return nil
}

// IsReadOnly reports whether the subvolume at path is read-only.
func IsReadOnly(path string) (bool, error) {
	fd, err := openSubvol(path)
	if err != nil {
		return false, pathErr("get read-only", path, err)
	}
	defer unix.Close(fd)
	ro, err := readOnly(fd)
	if err != nil {
		return false, pathErr("get read-only", path, err)
	}
	return ro, nil
}

func readOnly(fd int) (bool, error) {
	var flags uint64
	if err := ioctl(fd, iocSubvolGetFlags, unsafe.Pointer(&flags)); err != nil {
		return false, fmt.Errorf("SUBVOL_GETFLAGS: %w", err)
	}
	return flags&subvolRDOnly != 0, nil
}

func openDir(path string) (int, error) {
	return unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
}

// openSubvol opens path and checks, on the open fd, that it is a subvolume
// root, so the check and the ioctls that follow see the same inode.
// O_NOFOLLOW keeps a symlink planted at path from redirecting us.
func openSubvol(path string) (int, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
			// A file, or a symlink (which O_NOFOLLOW|O_DIRECTORY reports
			// as either, depending on the kernel).
			return -1, fmt.Errorf("%w: not a subvolume: %w", errdefs.ErrInvalidArgument, err)
		}
		return -1, err
	}
	var sfs unix.Statfs_t
	var st unix.Stat_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if !isBtrfsMagic(&sfs) {
		unix.Close(fd)
		return -1, fmt.Errorf("%w: not on btrfs", errdefs.ErrInvalidArgument)
	}
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if st.Ino != firstFreeObjectID {
		unix.Close(fd)
		return -1, fmt.Errorf("%w: not a subvolume", errdefs.ErrInvalidArgument)
	}
	return fd, nil
}

// checkName rejects names the ioctls would misread: they take one path
// component, not a path.
func checkName(name string) error {
	switch {
	case name == "", name == ".", name == "..":
		return fmt.Errorf("%w: bad subvolume name %q", errdefs.ErrInvalidArgument, name)
	case strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("%w: subvolume name %q is not one path component", errdefs.ErrInvalidArgument, name)
	case len(name) > 255:
		return fmt.Errorf("%w: subvolume name longer than 255 bytes", errdefs.ErrInvalidArgument)
	}
	return nil
}
