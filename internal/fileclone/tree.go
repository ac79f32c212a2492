//go:build linux

package fileclone

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/errdefs"
)

// CloneTree copies the directory tree src to dst, which must not exist and
// is created. Regular files are copied as CloneFile does; directories,
// symlinks (verbatim, wherever they point), FIFOs, sockets and device nodes
// are recreated. Mode, owner, access and modification times are kept;
// extended attributes (ACLs included) are copied where the destination
// takes them. It returns Reflink only if every regular file was reflinked
// and there was at least one; otherwise SparseCopy.
//
// The walk goes through directory descriptors with O_NOFOLLOW, so neither a
// symlink in the tree nor one swapped in during the copy leads it outside
// src. Hard links are not preserved: each name becomes its own copy.
// Mount points inside src are not special: the mounted tree is copied.
// Owners are kept only when running privileged (EPERM is ignored), and
// device nodes need CAP_MKNOD. The copy is synced (syncfs) before
// CloneTree returns; on error dst is removed.
func CloneTree(ctx context.Context, src, dst string) (m Method, err error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("fileclone: clone tree %s: %w", src, err)
	}
	sfd, err := unix.Open(src, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
		return 0, fmt.Errorf("fileclone: clone tree %s: not a directory (a symlink is not followed): %w: %w", src, errdefs.ErrInvalidArgument, err)
	}
	if err != nil {
		return 0, fmt.Errorf("fileclone: clone tree %s: %w", src, err)
	}
	defer unix.Close(sfd)
	var st unix.Stat_t
	if err := unix.Fstat(sfd, &st); err != nil {
		return 0, fmt.Errorf("fileclone: clone tree %s: stat: %w", src, err)
	}

	if err := unix.Mkdir(dst, 0o700); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return 0, fmt.Errorf("fileclone: clone tree to %s: %w: %w", dst, errdefs.ErrAlreadyExists, err)
		}
		return 0, fmt.Errorf("fileclone: clone tree to %s: %w", dst, err)
	}
	defer func() {
		if err != nil {
			m = 0
			_ = os.RemoveAll(dst) // ours: Mkdir made it
		}
	}()
	dfd, err := unix.Open(dst, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("fileclone: clone tree to %s: %w", dst, err)
	}
	defer unix.Close(dfd)
	var dst0 unix.Stat_t
	if err := unix.Fstat(dfd, &dst0); err != nil {
		return 0, fmt.Errorf("fileclone: clone tree to %s: stat: %w", dst, err)
	}

	t := &tree{ctx: ctx, dstDev: uint64(dst0.Dev), dstIno: dst0.Ino}
	if err := t.copyDir(sfd, dfd, "."); err != nil {
		return 0, fmt.Errorf("fileclone: clone tree %s to %s: %w", src, dst, err)
	}
	if err := t.setMeta(sfd, dfd, unix.AT_FDCWD, dst, &st); err != nil {
		return 0, fmt.Errorf("fileclone: clone tree to %s: %w", dst, err)
	}
	// One syncfs instead of an fsync per file and directory.
	if err := unix.Syncfs(dfd); err != nil {
		return 0, fmt.Errorf("fileclone: clone tree to %s: syncfs: %w", dst, err)
	}
	if t.reflinked > 0 && t.copied == 0 {
		return Reflink, nil
	}
	return SparseCopy, nil
}

// tree is one CloneTree walk.
type tree struct {
	ctx               context.Context
	dstDev, dstIno    uint64 // the destination root, which src must not contain
	reflinked, copied int
}

// copyDir copies the entries of directory sfd into the empty directory
// dfd; rel is sfd's path inside the tree, for errors.
func (t *tree) copyDir(sfd, dfd int, rel string) error {
	names, err := readDirNames(sfd)
	if err != nil {
		return fmt.Errorf("%s: %w", rel, err)
	}
	for _, name := range names {
		if err := t.ctx.Err(); err != nil {
			return err
		}
		if err := t.copyEntry(sfd, dfd, name, path.Join(rel, name)); err != nil {
			return err
		}
	}
	return nil
}

func (t *tree) copyEntry(sdir, ddir int, name, rel string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(sdir, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("%s: stat: %w", rel, err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return t.copySubdir(sdir, ddir, name, rel)
	case unix.S_IFREG:
		return t.copyFile(sdir, ddir, name, rel)
	case unix.S_IFLNK:
		target, err := readlinkat(sdir, name)
		if err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		if err := unix.Symlinkat(target, ddir, name); err != nil {
			return fmt.Errorf("%s: symlink: %w", rel, err)
		}
	case unix.S_IFIFO, unix.S_IFSOCK, unix.S_IFCHR, unix.S_IFBLK:
		if err := unix.Mknodat(ddir, name, st.Mode&unix.S_IFMT|0o600, int(st.Rdev)); err != nil {
			return fmt.Errorf("%s: mknod: %w", rel, err)
		}
	default:
		return fmt.Errorf("%s: unknown file type %#o: %w", rel, st.Mode&unix.S_IFMT, errdefs.ErrNotSupported)
	}
	// Symlinks and special files are set up by name: opening them would
	// follow the link, block on a FIFO or wake a device.
	if err := t.setMetaAt(sdir, ddir, name, &st); err != nil {
		return fmt.Errorf("%s: %w", rel, err)
	}
	return nil
}

func (t *tree) copySubdir(sdir, ddir int, name, rel string) error {
	sfd, err := unix.Openat(sdir, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("%s: %w", rel, err)
	}
	defer unix.Close(sfd)
	// Metadata from the open directory, which is what gets copied even if
	// the name was swapped since the Fstatat.
	var st unix.Stat_t
	if err := unix.Fstat(sfd, &st); err != nil {
		return fmt.Errorf("%s: stat: %w", rel, err)
	}
	if uint64(st.Dev) == t.dstDev && st.Ino == t.dstIno {
		return fmt.Errorf("%s: the destination is inside the source: %w", rel, errdefs.ErrInvalidArgument)
	}
	if err := unix.Mkdirat(ddir, name, 0o700); err != nil {
		return fmt.Errorf("%s: mkdir: %w", rel, err)
	}
	dfd, err := unix.Openat(ddir, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("%s: %w", rel, err)
	}
	defer unix.Close(dfd)
	if err := t.copyDir(sfd, dfd, rel); err != nil {
		return err
	}
	// After the entries, or creating them would change the times, and a
	// read-only mode would stop an unprivileged copy.
	if err := t.setMeta(sfd, dfd, ddir, name, &st); err != nil {
		return fmt.Errorf("%s: %w", rel, err)
	}
	return nil
}

func (t *tree) copyFile(sdir, ddir int, name, rel string) error {
	sfd, err := unix.Openat(sdir, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("%s: %w", rel, err)
	}
	defer unix.Close(sfd)
	var st unix.Stat_t
	if err := unix.Fstat(sfd, &st); err != nil {
		return fmt.Errorf("%s: stat: %w", rel, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%s: changed type during the copy: %w", rel, errdefs.ErrAborted)
	}
	dfd, err := unix.Openat(ddir, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("%s: %w", rel, err)
	}
	defer unix.Close(dfd)
	m, err := cloneData(t.ctx, sfd, dfd, st.Size, true)
	if err != nil {
		return fmt.Errorf("%s: %w", rel, err)
	}
	if m == Reflink {
		t.reflinked++
	} else {
		t.copied++
	}
	if err := t.setMeta(sfd, dfd, ddir, name, &st); err != nil {
		return fmt.Errorf("%s: %w", rel, err)
	}
	return nil
}

// setMeta gives the open file or directory dfd, named name in directory
// ddir, the owner, mode, xattrs and times of sfd, whose stat is st.
func (t *tree) setMeta(sfd, dfd, ddir int, name string, st *unix.Stat_t) error {
	// Order matters: chown clears set-id bits and security.capability, so
	// it goes first; times go last, as setting the others changes ctime only.
	if err := unix.Fchown(dfd, int(st.Uid), int(st.Gid)); err != nil && !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("chown: %w", err)
	}
	if err := unix.Fchmod(dfd, st.Mode&0o7777); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	err := copyXattrs(
		func(b []byte) (int, error) { return unix.Flistxattr(sfd, b) },
		func(a string, b []byte) (int, error) { return unix.Fgetxattr(sfd, a, b) },
		func(a string, b []byte) error { return unix.Fsetxattr(dfd, a, b, 0) },
	)
	if err != nil {
		return err
	}
	return setTimes(ddir, name, st)
}

// setMetaAt is setMeta for a symlink or special file, by name.
func (t *tree) setMetaAt(sdir, ddir int, name string, st *unix.Stat_t) error {
	if err := unix.Fchownat(ddir, name, int(st.Uid), int(st.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil && !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("chown: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK { // a symlink's mode means nothing
		if err := unix.Fchmodat(ddir, name, st.Mode&0o7777, 0); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	// The l*xattr calls take paths; going through the directories'
	// descriptors in /proc keeps the lookup inside the tree.
	sp, dp := fdPath(sdir, name), fdPath(ddir, name)
	err := copyXattrs(
		func(b []byte) (int, error) { return unix.Llistxattr(sp, b) },
		func(a string, b []byte) (int, error) { return unix.Lgetxattr(sp, a, b) },
		func(a string, b []byte) error { return unix.Lsetxattr(dp, a, b, 0) },
	)
	if err != nil && !errors.Is(err, unix.ENOENT) { // ENOENT: no /proc here
		return err
	}
	return setTimes(ddir, name, st)
}

func setTimes(ddir int, name string, st *unix.Stat_t) error {
	ts := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNanoAt(ddir, name, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

func fdPath(dirfd int, name string) string { return fmt.Sprintf("/proc/self/fd/%d/%s", dirfd, name) }

// copyXattrs copies every extended attribute list names, best-effort: an
// attribute the destination will not take (unsupported namespace, no
// privilege, no support at all) is skipped. Running out of space is not.
func copyXattrs(list func([]byte) (int, error), get func(string, []byte) (int, error), set func(string, []byte) error) error {
	names, err := readXattr(list)
	if ignorableXattrErr(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list xattrs: %w", err)
	}
	for name := range bytes.SplitSeq(names, []byte{0}) {
		if len(name) == 0 {
			continue
		}
		attr := string(name)
		val, err := readXattr(func(b []byte) (int, error) { return get(attr, b) })
		if errors.Is(err, unix.ENODATA) || ignorableXattrErr(err) {
			continue // removed since listed, or not readable to us
		}
		if err != nil {
			return fmt.Errorf("get xattr %s: %w", attr, err)
		}
		if err := set(attr, val); err != nil && !ignorableXattrErr(err) {
			return fmt.Errorf("set xattr %s: %w", attr, err)
		}
	}
	return nil
}

func ignorableXattrErr(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EPERM) ||
		errors.Is(err, unix.EACCES) || errors.Is(err, unix.EINVAL)
}

// readXattr calls read with a buffer large enough for its result, growing
// it when the value grew between the size query and the read.
func readXattr(read func([]byte) (int, error)) ([]byte, error) {
	for range 8 {
		n, err := read(nil)
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return nil, nil
		}
		buf := make([]byte, n)
		n, err = read(buf)
		if errors.Is(err, unix.ERANGE) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
	return nil, fmt.Errorf("xattr keeps growing: %w", unix.ERANGE)
}

func readlinkat(dirfd int, name string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return "", fmt.Errorf("readlink: %w", err)
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}

// readDirNames returns the names in the directory open as fd, sorted so
// that copies happen in a stable order.
func readDirNames(fd int) ([]string, error) {
	var names []string
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Getdents(fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("getdents: %w", err)
		}
		if n <= 0 {
			break
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
	slices.Sort(names)
	return names, nil
}
