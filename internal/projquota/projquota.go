// Package projquota owns Cairn's project quotas: capping the space and
// inodes of a directory volume on ext4 or XFS by tagging the directory with
// a project ID that its new files inherit, and setting that project's limits.
//
// Both filesystems go through one path: FS_IOC_FSGETXATTR/FS_IOC_FSSETXATTR
// for the project ID, and the generic quotactl commands (Q_GETQUOTA,
// Q_SETQUOTA, Q_XGETQSTATV) for limits and usage. XFS implements the generic
// commands through the same kernel interface as its Q_X* ones, so it needs no
// path of its own. quotactl_fd(2) is used where the kernel has it (5.14+),
// quotactl(2) on the block device named in /proc/self/mountinfo elsewhere.
//
// What the filesystem must provide, which Supported checks:
//   - ext4: made with -O quota,project (256-byte inodes), mounted with
//     -o prjquota, on a kernel with CONFIG_QUOTA and CONFIG_QFMT_V2 (without
//     them ext4 refuses to mount such a filesystem read-write at all);
//   - XFS: mounted with -o prjquota (or pquota), kernel CONFIG_XFS_QUOTA.
//
// Other filesystems (btrfs, tmpfs, overlay...) are reported unsupported.
// Project IDs are chosen by the caller and must be unique per filesystem;
// ID 0 is every unlabelled file's project and is never limited here.
//
// Tagging a directory labels that directory and whatever is created in it
// afterwards, not files already there, so tag a volume's directory while it
// is empty. Hard links and renames into a tagged directory from another
// project fail with EXDEV, which tools like mv handle by copying.
//
// All calls are single quick syscalls, so ctx is only checked on entry.
// They need root (CAP_SYS_ADMIN, and the initial user namespace to change a
// project ID).
package projquota

import (
	"context"
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/errdefs"
)

// Supported reports whether the filesystem holding path counts and enforces
// project quotas. It is false, without error, on filesystems that cannot
// (tmpfs, btrfs...) and on ext4/XFS mounted without project quota
// enforcement.
func Supported(ctx context.Context, path string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(path, &sfs); err != nil {
		return false, pathErr("statfs", path, err)
	}
	switch uint32(sfs.Type) {
	case uint32(unix.EXT4_SUPER_MAGIC), uint32(unix.XFS_SUPER_MAGIC):
	default:
		return false, nil
	}
	st := fsQuotaStatV{Version: fsQStatVVersion1}
	err := quotactl(path, qcmd(qXGetQStatV, prjQuota), 0, unsafe.Pointer(&st))
	if errno, ok := quotactlFailed(err); ok {
		switch errno {
		case unix.ENOSYS, unix.ESRCH, unix.EINVAL, unix.EOPNOTSUPP, unix.ENOTTY:
			// No quota support in the kernel or for this filesystem.
			return false, nil
		}
	}
	if errors.Is(err, unix.ENODEV) {
		return false, nil // quotactl(2) fallback: no device node to name it by
	}
	if err != nil {
		return false, pathErr("quota state", path, err)
	}
	const want = fsQuotaPDQAcct | fsQuotaPDQEnfd
	return st.Flags&want == want, nil
}

// SetProject tags dir with projectID so that its usage counts against that
// project, and, when dir is a directory, sets FS_XFLAG_PROJINHERIT so that
// files and directories created in it inherit the ID. Existing contents
// keep their project. ID 0 removes the tag.
func SetProject(ctx context.Context, dir string, projectID uint32) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return pathErr("set project", dir, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return pathErr("set project", dir, err)
	}
	var fsx fsxattr
	if err := ioctl(fd, fsIocFSGetXattr, unsafe.Pointer(&fsx)); err != nil {
		return pathErr("set project: FS_IOC_FSGETXATTR", dir, err)
	}
	fsx.ProjID = projectID
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		// Inheritance is what makes a tagged directory a quota tree. XFS
		// refuses the flag on anything but a directory.
		if projectID != 0 {
			fsx.XFlags |= fsXFlagProjInherit
		} else {
			fsx.XFlags &^= fsXFlagProjInherit
		}
	}
	if err := ioctl(fd, fsIocFSSetXattr, unsafe.Pointer(&fsx)); err != nil {
		// ext4 without the project feature answers EOPNOTSUPP.
		return pathErr("set project: FS_IOC_FSSETXATTR", dir, err)
	}
	return nil
}

// GetProject returns the project ID of path (0 if untagged).
func GetProject(ctx context.Context, path string) (uint32, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	fsx, err := getXattr(path)
	if err != nil {
		return 0, pathErr("get project", path, err)
	}
	return fsx.ProjID, nil
}

func getXattr(path string) (fsxattr, error) {
	var fsx fsxattr
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fsx, err
	}
	defer unix.Close(fd)
	if err := ioctl(fd, fsIocFSGetXattr, unsafe.Pointer(&fsx)); err != nil {
		return fsx, fmt.Errorf("FS_IOC_FSGETXATTR: %w", err)
	}
	return fsx, nil
}

// SetLimit sets the hard limit on the bytes that project projectID may use
// on the filesystem holding path; writes past it fail with EDQUOT on ext4
// and ENOSPC on XFS (both errdefs.ErrResourceExhausted). hardBytes is
// rounded up to the filesystem's quota unit: 1 KiB on ext4, the block size
// on XFS; Usage reports the stored value. 0 removes the byte limit. Soft
// limits are not used, and SetLimit clears any byte soft limit. The
// project's inode limit is left alone.
//
// On ext4, as with any filesystem using the kernel's generic quota code,
// processes with CAP_SYS_RESOURCE (root on the host, privileged containers)
// are exempt from hard limits; XFS enforces project limits on them too.
func SetLimit(ctx context.Context, path string, projectID uint32, hardBytes uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if projectID == 0 {
		return fmt.Errorf("projquota: set limit on %q: %w: project 0 holds every untagged file", path, errdefs.ErrInvalidArgument)
	}
	q := ifDqblk{
		BHardLimit: hardBytes/qifBlockSize + min(hardBytes%qifBlockSize, 1),
		Valid:      qifBLimits,
	}
	if err := quotactl(path, qcmd(qSetQuota, prjQuota), projectID, unsafe.Pointer(&q)); err != nil {
		return pathErr(fmt.Sprintf("set limit of project %d", projectID), path, err)
	}
	return nil
}

// SetInodeLimit sets the hard limit on the number of inodes (files,
// directories...) project projectID may use; 0 removes it. The byte limit is
// left alone.
func SetInodeLimit(ctx context.Context, path string, projectID uint32, hardInodes uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if projectID == 0 {
		return fmt.Errorf("projquota: set inode limit on %q: %w: project 0 holds every untagged file", path, errdefs.ErrInvalidArgument)
	}
	q := ifDqblk{IHardLimit: hardInodes, Valid: qifILimits}
	if err := quotactl(path, qcmd(qSetQuota, prjQuota), projectID, unsafe.Pointer(&q)); err != nil {
		return pathErr(fmt.Sprintf("set inode limit of project %d", projectID), path, err)
	}
	return nil
}

// ClearLimit removes every limit of project projectID, for use when its
// volume is deleted; a project with no limits and no usage leaves nothing
// behind in the quota file. Clearing a project that has no limits is not an
// error.
func ClearLimit(ctx context.Context, path string, projectID uint32) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if projectID == 0 {
		return fmt.Errorf("projquota: clear limit on %q: %w: project 0 holds every untagged file", path, errdefs.ErrInvalidArgument)
	}
	q := ifDqblk{Valid: qifBLimits | qifILimits}
	if err := quotactl(path, qcmd(qSetQuota, prjQuota), projectID, unsafe.Pointer(&q)); err != nil {
		return pathErr(fmt.Sprintf("clear limits of project %d", projectID), path, err)
	}
	return nil
}

// Usage returns the bytes and inodes project projectID uses on the
// filesystem holding path, and its byte hard limit (0: none). Bytes include
// space reserved for data not yet written back, so no sync is needed.
// A project the filesystem has never seen uses nothing.
func Usage(ctx context.Context, path string, projectID uint32) (usedBytes, hardLimitBytes, usedInodes uint64, err error) {
	if err := ctx.Err(); err != nil {
		return 0, 0, 0, err
	}
	var q ifDqblk
	err = quotactl(path, qcmd(qGetQuota, prjQuota), projectID, unsafe.Pointer(&q))
	if errno, ok := quotactlFailed(err); ok && errno == unix.ENOENT {
		return 0, 0, 0, nil // XFS has no dquot for a project never used
	}
	if err != nil {
		return 0, 0, 0, pathErr(fmt.Sprintf("usage of project %d", projectID), path, err)
	}
	return q.CurSpace, q.BHardLimit * qifBlockSize, q.CurInodes, nil
}

func ioctl(fd int, req uintptr, arg unsafe.Pointer) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if errno != 0 {
		return errno
	}
	return nil
}
