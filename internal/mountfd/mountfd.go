// Package mountfd owns the node's mount points as the kernel sees them:
// opening the paths a container orchestrator hands over without following
// a symbolic link in any component, creating publish targets the same way,
// mounting onto the opened descriptor (so a path cannot be swapped between
// the check and the mount), and unmounting one layer of one path. It makes
// system calls only: no process is forked on this path.
//
// Paths from kubelet are attacker-reachable input (a pod can own parts of
// the directories above them), so every function here refuses a symlink
// anywhere in the path with an error of class errdefs.ErrInvalidArgument.
package mountfd

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/errdefs"
)

// ErrSymlink is returned when a component of a path is a symbolic link.
var ErrSymlink = fmt.Errorf("a component of the path is a symbolic link, which is refused: %w", errdefs.ErrInvalidArgument)

// noSymlinks resolves a path with no symbolic links and no /proc magic
// links: ELOOP then means "a component was a symlink".
const noSymlinks = unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS

// Handle is an O_PATH descriptor of a path that was opened without following
// symbolic links. It pins what the path named when it was opened: for a
// mount point, the root of the mount on top.
type Handle struct {
	fd   int
	path string
}

// Path is the path the handle was opened at.
func (h *Handle) Path() string { return h.path }

// FD is the descriptor; it stays owned by h.
func (h *Handle) FD() int { return h.fd }

// ProcPath names the handle's object through /proc/self/fd, for system
// calls that take a path but must act on exactly this object.
func (h *Handle) ProcPath() string { return "/proc/self/fd/" + strconv.Itoa(h.fd) }

// Close releases the descriptor.
func (h *Handle) Close() error {
	if h == nil || h.fd < 0 {
		return nil
	}
	err := unix.Close(h.fd)
	h.fd = -1
	return err
}

func openHow(flags uint64) *unix.OpenHow {
	return &unix.OpenHow{Flags: flags | unix.O_PATH | unix.O_CLOEXEC, Resolve: noSymlinks}
}

func classify(path string, err error) error {
	switch {
	case errors.Is(err, unix.ELOOP):
		return fmt.Errorf("%s: %w", path, ErrSymlink)
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("%s: %w", path, fs.ErrNotExist)
	case errors.Is(err, unix.ENOTDIR):
		return fmt.Errorf("%s: a component of the path is not a directory: %w", path, errdefs.ErrInvalidArgument)
	}
	return &fs.PathError{Op: "open", Path: path, Err: err}
}

func checkAbs(path string) error {
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return fmt.Errorf("%q is not an absolute, clean path: %w", path, errdefs.ErrInvalidArgument)
	}
	return nil
}

// Open opens path (absolute and clean) without following a symbolic link in
// any component. A missing path is fs.ErrNotExist.
func Open(path string) (*Handle, error) {
	if err := checkAbs(path); err != nil {
		return nil, err
	}
	fd, err := openat2(unix.AT_FDCWD, path, openHow(0))
	if err != nil {
		return nil, classify(path, err)
	}
	return &Handle{fd: fd, path: path}, nil
}

// OpenOwn opens a path cairn itself made (a volume directory under a pool
// root, a loop device node). The administrator's pool root may sit behind a
// symbolic link, so the prefix is resolved as usual; the last component is
// never followed.
func OpenOwn(path string) (*Handle, error) {
	if err := checkAbs(path); err != nil {
		return nil, err
	}
	fd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, classify(path, err)
	}
	h := &Handle{fd: fd, path: path}
	info, err := h.Stat()
	if err == nil && info.Mode&unix.S_IFMT == unix.S_IFLNK {
		err = fmt.Errorf("%s: %w", path, ErrSymlink)
	}
	if err != nil {
		h.Close()
		return nil, err
	}
	return h, nil
}

func openat2(dirfd int, path string, how *unix.OpenHow) (int, error) {
	for {
		fd, err := unix.Openat2(dirfd, path, how)
		if !errors.Is(err, unix.EINTR) && !errors.Is(err, unix.EAGAIN) {
			return fd, err
		}
	}
}

// MakeTarget opens the publish target at path, creating it and any missing
// parent directories (mode 0750) without following a symbolic link: a
// directory for a filesystem, an empty regular file (mode 0640) for a block
// device. An existing target of the wrong type is refused. It reports
// whether it created the target, so a failed mount can remove it again.
func MakeTarget(path string, file bool) (h *Handle, created bool, err error) {
	if err := checkAbs(path); err != nil {
		return nil, false, err
	}
	if path == "/" {
		return nil, false, fmt.Errorf("target %q: %w", path, errdefs.ErrInvalidArgument)
	}
	dirfd, err := openat2(unix.AT_FDCWD, "/", openHow(unix.O_DIRECTORY))
	if err != nil {
		return nil, false, classify("/", err)
	}
	elems := strings.Split(strings.TrimPrefix(path, "/"), "/")
	walked := ""
	for _, el := range elems[:len(elems)-1] {
		walked += "/" + el
		next, err := childDir(dirfd, el, true)
		unix.Close(dirfd)
		if err != nil {
			return nil, false, classify(walked, err)
		}
		dirfd = next
	}
	defer unix.Close(dirfd)
	name := elems[len(elems)-1]
	if file {
		fd, err := unix.Openat(dirfd, name, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o640)
		switch {
		case err == nil:
			unix.Close(fd)
			created = true
		case !errors.Is(err, unix.EEXIST):
			return nil, false, classify(path, err)
		}
	} else {
		err := unix.Mkdirat(dirfd, name, 0o750)
		switch {
		case err == nil:
			created = true
		case !errors.Is(err, unix.EEXIST):
			return nil, false, classify(path, err)
		}
	}
	fd, err := openat2(dirfd, name, openHow(0))
	if err != nil {
		return nil, false, classify(path, err)
	}
	h = &Handle{fd: fd, path: path}
	info, err := h.Stat()
	if err == nil {
		switch {
		case file && !info.Regular() && !info.BlockDevice():
			err = fmt.Errorf("target %q exists and is not a regular file: %w", path, errdefs.ErrInvalidArgument)
		case !file && !info.Dir():
			err = fmt.Errorf("target %q exists and is not a directory: %w", path, errdefs.ErrInvalidArgument)
		}
	}
	if err != nil {
		h.Close()
		return nil, false, err
	}
	return h, created, nil
}

// childDir opens (optionally creating) directory name below dirfd without
// following a symbolic link.
func childDir(dirfd int, name string, create bool) (int, error) {
	if create {
		if err := unix.Mkdirat(dirfd, name, 0o750); err != nil && !errors.Is(err, unix.EEXIST) {
			return -1, err
		}
	}
	return openat2(dirfd, name, openHow(unix.O_DIRECTORY))
}

// RemoveTarget removes an empty directory or a file at path, never
// following a symbolic link, and never anything that is still a mount
// point. A missing path is not an error.
func RemoveTarget(path string) error {
	if err := checkAbs(path); err != nil {
		return err
	}
	parent, err := Open(filepath.Dir(path))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer parent.Close()
	name := filepath.Base(path)
	var st unix.Stat_t
	if err := unix.Fstatat(parent.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	flags := 0
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		flags = unix.AT_REMOVEDIR
	}
	if err := unix.Unlinkat(parent.fd, name, flags); err != nil && !errors.Is(err, unix.ENOENT) {
		return &fs.PathError{Op: "remove", Path: path, Err: err}
	}
	return nil
}

// Info is what a handle's object is.
type Info struct {
	Mode      uint32 // S_IFMT bits and permissions
	Dev, Ino  uint64 // the object's device and inode
	Rdev      uint64 // for device nodes, the device they name
	MountRoot bool   // the object is the root of a mount: a mount point
	MountID   uint64
	ReadOnly  bool // the mount it is on is read-only
}

// Dir, Regular and BlockDevice report the object's type.
func (i Info) Dir() bool         { return i.Mode&unix.S_IFMT == unix.S_IFDIR }
func (i Info) Regular() bool     { return i.Mode&unix.S_IFMT == unix.S_IFREG }
func (i Info) BlockDevice() bool { return i.Mode&unix.S_IFMT == unix.S_IFBLK }

// Stat describes the handle's object, including whether it is a mount
// point, from statx and statfs: no mount table is read.
func (h *Handle) Stat() (Info, error) {
	var stx unix.Statx_t
	mask := unix.STATX_TYPE | unix.STATX_MODE | unix.STATX_INO | unix.STATX_MNT_ID
	if err := unix.Statx(h.fd, "", unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW, mask, &stx); err != nil {
		return Info{}, &fs.PathError{Op: "statx", Path: h.path, Err: err}
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(h.fd, &sfs); err != nil {
		return Info{}, &fs.PathError{Op: "statfs", Path: h.path, Err: err}
	}
	return Info{
		Mode:      uint32(stx.Mode),
		Dev:       unix.Mkdev(stx.Dev_major, stx.Dev_minor),
		Ino:       stx.Ino,
		Rdev:      unix.Mkdev(stx.Rdev_major, stx.Rdev_minor),
		MountRoot: stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 && stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0,
		MountID:   stx.Mnt_id,
		ReadOnly:  sfs.Flags&unix.ST_RDONLY != 0,
	}, nil
}

// Bind bind-mounts source's object (a directory, or a device node onto a
// file) at target, with attrs applied before the mount becomes visible:
// a read-only publish is never writable, not even for an instant.
func Bind(source, target *Handle, attrs Attrs) error {
	tree, err := unix.OpenTree(source.fd, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH)
	if err != nil {
		return fmt.Errorf("clone mount of %s: %w", source.path, err)
	}
	defer unix.Close(tree)
	if set := attrs.set(); set != 0 || attrs.clear() != 0 {
		ma := &unix.MountAttr{Attr_set: set, Attr_clr: attrs.clear()}
		if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH, ma); err != nil {
			return fmt.Errorf("set mount attributes for %s: %w", target.path, err)
		}
	}
	if err := unix.MoveMount(tree, "", target.fd, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		return fmt.Errorf("bind %s at %s: %w", source.path, target.path, err)
	}
	return nil
}

// MountFS mounts the filesystem of type fstype on device at target, with
// the per-mount attrs and the filesystem's own options (already allow-listed
// by the caller) as data.
func MountFS(device string, target *Handle, fstype string, attrs Attrs, fsOptions []string) error {
	flags := attrs.msFlags()
	if err := unix.Mount(device, target.ProcPath(), fstype, flags, strings.Join(fsOptions, ",")); err != nil {
		return fmt.Errorf("mount %s (%s) at %s: %w", device, fstype, target.path, err)
	}
	return nil
}

// Unmount removes the top mount at path. The parent directory is opened
// without following symbolic links and the last component is not followed
// either, so the mount removed is the one at this path and nowhere else.
// A busy mount fails with EBUSY; nothing is detached lazily.
func Unmount(path string) error {
	if err := checkAbs(path); err != nil {
		return err
	}
	parent, err := Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer parent.Close()
	at := parent.ProcPath() + "/" + filepath.Base(path)
	for {
		err = unix.Unmount(at, unix.UMOUNT_NOFOLLOW)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		return &fs.PathError{Op: "unmount", Path: path, Err: err}
	}
	return nil
}

// Exists reports whether path names anything, without following a symlink
// at any component (a symlink is reported as an error of ErrSymlink).
func Exists(path string) (bool, error) {
	h, err := Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	h.Close()
	return true, nil
}

// StatPath describes what is at path, which must exist, without following
// a symbolic link in any component.
func StatPath(path string) (Info, error) {
	h, err := Open(path)
	if err != nil {
		return Info{}, err
	}
	defer h.Close()
	return h.Stat()
}
