package driver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/loopdev"
	"github.com/cairn-csi/cairn/internal/mountfd"
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
	// List returns every attached loop device. A device whose backing file
	// was unlinked has Deleted set; BackingFile is its last path.
	List(ctx context.Context) ([]loopdev.Device, error)
}

// LoopBackingIDs is what LoopDevices may also do: say which file (device
// and inode) a loop device holds, for a device whose reported path names
// nothing in this mount namespace (attached by a process in another one,
// such as the container of a node plugin that was replaced).
type LoopBackingIDs interface {
	BackingID(dev string) (fsDev, ino uint64, ok bool)
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
			// A LUKS mapping stacked on the device is the volume too.
			id.rdevs = append(append(id.rdevs, st.Rdev), holderDevs(dev)...)
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
	mounted  bool
	ours     bool // the mount on top is a mount of the volume in question
	readOnly bool
	info     mountfd.Info
}

// inspect looks at path without following a symbolic link in any component
// (one is refused with InvalidArgument), from statx and statfs of the path
// alone: no mount table is read unless a device-backed btrfs needs it.
func (d *Driver) inspect(path string, id mountIdentity) (mountState, error) {
	var s mountState
	h, err := mountfd.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return s, err
	}
	defer h.Close()
	info, err := h.Stat()
	if err != nil {
		return s, err
	}
	s.exists, s.mounted, s.readOnly, s.info = true, info.MountRoot, info.ReadOnly, info
	if s.mounted {
		s.ours = id.matchesInfo(info)
	}
	return s, nil
}

// matchesInfo is matches for an opened mount point. A btrfs filesystem on a
// loop device reports an anonymous st_dev, so for device sources the mount's
// source device is looked up by mount ID as a last resort.
func (id mountIdentity) matchesInfo(info mountfd.Info) bool {
	switch {
	case id.empty():
		return false
	case id.ino != 0:
		return info.Dev == id.dev && info.Ino == id.ino
	case info.BlockDevice():
		return slices.Contains(id.rdevs, info.Rdev)
	case slices.Contains(id.rdevs, info.Dev):
		return true
	}
	infos, err := mount.ParseMountInfo("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, mi := range infos {
		if uint64(mi.ID) != info.MountID || !strings.HasPrefix(mi.Source, "/dev/") {
			continue
		}
		st, err := statT(mi.Source)
		return err == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK && slices.Contains(id.rdevs, st.Rdev)
	}
	return false
}

// unmountOurs peels the mounts of the volume with identity id off path,
// top first, and stops at the first layer that is not the volume's: that
// one belongs to someone else and is left exactly as it is (foreign is
// then true). It returns how many layers it removed.
func (d *Driver) unmountOurs(ctx context.Context, path string, id mountIdentity) (n int, foreign bool, err error) {
	for ; n < maxStackedMounts; n++ {
		if err := ctx.Err(); err != nil {
			return n, false, err
		}
		st, err := d.inspect(path, id)
		if err != nil {
			return n, false, err
		}
		if !st.mounted {
			return n, false, nil
		}
		if !st.ours {
			return n, true, nil
		}
		if err := mountfd.Unmount(path); err != nil {
			return n, false, err
		}
	}
	return n, false, fmt.Errorf("%s still mounted after %d unmounts: %w", path, maxStackedMounts, errdefs.ErrFailedPrecondition)
}

// underPool reports which protected root (a pool's root, or the driver's
// data directory) path is, or is below. Node calls refuse such paths: a
// staging or target path inside a pool would mount one volume over
// another's data, and unpublish would remove a volume's directory.
func (d *Driver) underPool(path string) (string, bool) {
	for _, root := range d.protected {
		if path == root || strings.HasPrefix(path, root+"/") {
			return root, true
		}
	}
	return "", false
}

// checkNodePath is requirePath plus the refusal of pool paths, for the
// paths the CO hands to node calls.
func (d *Driver) checkNodePath(field, p string) error {
	if err := requirePath(field, p); err != nil {
		return err
	}
	if root, ok := d.underPool(filepath.Clean(p)); ok {
		return invalid("%s %q is inside %q, which belongs to cairn; the CO's staging and target paths must be outside every pool and the data directory", field, truncate(p), root)
	}
	return nil
}

// bindAt bind-mounts source (a path cairn owns: a volume directory, a loop
// device) or the already-opened src at the opened target.
func bindAt(source string, src *mountfd.Handle, target *mountfd.Handle, attrs mountfd.Attrs) error {
	if src == nil {
		h, err := mountfd.OpenOwn(source)
		if err != nil {
			return err
		}
		defer h.Close()
		src = h
	}
	return mountfd.Bind(src, target, attrs)
}

func hasOption(opts []string, o string) bool {
	for _, x := range opts {
		if strings.TrimSpace(x) == o {
			return true
		}
	}
	return false
}
