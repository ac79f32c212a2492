package driver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/errdefs"
)

// LoopDevices is what the node needs of loop devices; internal/loopdev
// implements it with the kernel's ioctls, tests may fake it.
type LoopDevices interface {
	// Attach attaches file with its logical block size pinned to blockSize
	// (0: the kernel's choice) and returns the device path.
	Attach(ctx context.Context, file string, readOnly bool, blockSize uint32) (string, error)
	// Find returns the devices that file is attached to.
	Find(ctx context.Context, file string) ([]string, error)
	// Detach detaches dev; a detached device is not an error.
	Detach(ctx context.Context, dev string) error
	// Refresh makes dev see its file's current size.
	Refresh(ctx context.Context, dev string) error
	// List returns every attached loop device and its backing file as the
	// kernel reports it (with " (deleted)" when the file was unlinked).
	List(ctx context.Context) (map[string]string, error)
}

// maxStackedMounts bounds how many layers unmount peels off one path: a
// path mounted over and over by a buggy caller is cleaned, never looped on.
const maxStackedMounts = 64

// mountIdentity is what a path must look like to be a mount of a volume:
// the same inode on the same device as the volume's data (a directory
// bind mount), a filesystem on the volume's loop device, or a block device
// node bind-mounted onto a file.
type mountIdentity struct {
	dev, ino uint64 // directory sources: the source directory
	rdevs    []uint64
}

func statT(path string) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Stat(path, &st)
	return st, err
}

// identityOf computes the identity of a volume's source on this node.
func (d *Driver) identityOf(ctx context.Context, src backend.Source) (mountIdentity, error) {
	switch src.Kind {
	case backend.SourceDirectory:
		st, err := statT(src.Path)
		if err != nil {
			return mountIdentity{}, fmt.Errorf("volume source %s: %w", src.Path, err)
		}
		return mountIdentity{dev: st.Dev, ino: st.Ino}, nil
	case backend.SourceImageFile, backend.SourceBlockDevice:
		devs := []string{src.Path}
		if src.Kind == backend.SourceImageFile {
			if d.cfg.Loop == nil {
				return mountIdentity{}, fmt.Errorf("image volumes need loop devices, which this driver was not given: %w", errdefs.ErrFailedPrecondition)
			}
			var err error
			if devs, err = d.cfg.Loop.Find(ctx, src.Path); err != nil {
				return mountIdentity{}, err
			}
		}
		var id mountIdentity
		for _, dev := range devs {
			st, err := statT(dev)
			if err != nil {
				continue
			}
			id.rdevs = append(id.rdevs, st.Rdev)
		}
		return id, nil
	}
	return mountIdentity{}, fmt.Errorf("unknown source kind %v", src.Kind)
}

// matches reports whether mount point mp (already known to be a mount) is
// one of the identity's.
func (id mountIdentity) matches(mp string) bool {
	st, err := statT(mp)
	if err != nil {
		return false
	}
	if id.ino != 0 {
		return st.Dev == id.dev && st.Ino == id.ino
	}
	if st.Mode&unix.S_IFMT == unix.S_IFBLK {
		return slices.Contains(id.rdevs, st.Rdev)
	}
	return slices.Contains(id.rdevs, st.Dev)
}

// matchesMount is matches for a mountinfo entry. A btrfs filesystem on a
// loop device reports an anonymous st_dev (one per subvolume), not the
// device's number, so for device sources the entry's mount source (the
// device node mount(2) was given) is checked as well.
func (id mountIdentity) matchesMount(mi mount.MountInfo) bool {
	if id.matches(mi.MountPoint) {
		return true
	}
	if id.ino != 0 || !strings.HasPrefix(mi.Source, "/dev/") {
		return false
	}
	st, err := statT(mi.Source)
	return err == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK && slices.Contains(id.rdevs, st.Rdev)
}

func (id mountIdentity) empty() bool { return id.ino == 0 && len(id.rdevs) == 0 }

// mountsOf lists the mount points of a volume on this node.
func (d *Driver) mountsOf(ctx context.Context, src backend.Source) ([]string, error) {
	id, err := d.identityOf(ctx, src)
	if err != nil || id.empty() {
		return nil, err
	}
	return mountPointsOf(id)
}

// mountPointsOf lists the mount points that match id.
func mountPointsOf(id mountIdentity) ([]string, error) {
	infos, err := mount.ParseMountInfo("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, mi := range infos {
		if id.matchesMount(mi) && !slices.Contains(out, mi.MountPoint) {
			out = append(out, mi.MountPoint)
		}
	}
	return out, nil
}

// mountState describes what is at a path now.
type mountState struct {
	exists   bool
	symlink  bool
	mounted  bool
	ours     bool // a mount of the volume in question
	readOnly bool
}

// inspect looks at path without following a final symlink.
func (d *Driver) inspect(path string, id mountIdentity) (mountState, error) {
	var s mountState
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return s, err
	}
	s.exists = true
	if fi.Mode()&fs.ModeSymlink != 0 {
		s.symlink = true
		return s, nil
	}
	infos, err := mount.ParseMountInfo("/proc/self/mountinfo")
	if err != nil {
		return s, err
	}
	// The last entry for a path is the one on top.
	var top mount.MountInfo
	for _, mi := range infos {
		if mi.MountPoint == path {
			s.mounted = true
			s.readOnly = slices.Contains(mi.MountOptions, "ro")
			top = mi
		}
	}
	if s.mounted {
		s.ours = id.matchesMount(top)
	}
	return s, nil
}

// unmountAll peels every mount layer off path. It returns how many it
// removed. A symlink at path is refused: umount would follow it and
// unmount whatever is mounted where it points.
func (d *Driver) unmountAll(ctx context.Context, path string) (int, error) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		return 0, invalid("%q is a symbolic link; refusing to follow it", path)
	}
	n := 0
	for ; n < maxStackedMounts; n++ {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		mounted, err := d.mounter.IsMountPoint(path)
		if errors.Is(err, fs.ErrNotExist) || (err == nil && !mounted) {
			return n, nil
		}
		if err != nil {
			// A mount whose backing storage vanished cannot be stat'ed;
			// unmounting it is still the right thing.
			if !mount.IsCorruptedMnt(err) {
				return n, fmt.Errorf("inspect %s: %w", path, err)
			}
		}
		if err := d.mounter.Unmount(path); err != nil {
			return n, fmt.Errorf("unmount %s: %w", path, err)
		}
	}
	return n, fmt.Errorf("%s still mounted after %d unmounts: %w", path, maxStackedMounts, errdefs.ErrFailedPrecondition)
}

// mountOptions turns a capability's flags and readonly into bind options.
func bindOptions(readOnly bool, flags []string) []string {
	opts := []string{"bind"}
	if readOnly {
		opts = append(opts, "ro")
	}
	return append(opts, flags...)
}

func hasOption(opts []string, o string) bool {
	for _, x := range opts {
		if strings.TrimSpace(x) == o {
			return true
		}
	}
	return false
}
