package node

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/mountfd"
)

// maxStackedMounts bounds how many layers unmount peels off one path: a
// path mounted over and over by a buggy caller is cleaned, never looped on.
const maxStackedMounts = 64

// Identity is what a path must look like to be a mount of a volume:
// the same inode on the same device as the volume's data (a directory
// bind mount), a filesystem on the volume's loop device, or a block device
// node bind-mounted onto a file. The zero Identity matches nothing.
type Identity struct {
	dev, ino uint64 // directory sources: the source directory
	rdevs    []uint64
}

// DeviceIdentity is the identity of whatever is on block device rdev.
func DeviceIdentity(rdev uint64) Identity { return Identity{rdevs: []uint64{rdev}} }

func statT(path string) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Stat(path, &st)
	return st, err
}

// IdentityOf computes the identity of a volume's source on this node.
func (n *Node) IdentityOf(ctx context.Context, src backend.Source) (Identity, error) {
	switch src.Kind {
	case backend.SourceDirectory:
		st, err := statT(src.Path)
		if err != nil {
			return Identity{}, fmt.Errorf("volume source %s: %w", src.Path, err)
		}
		return Identity{dev: st.Dev, ino: st.Ino}, nil
	case backend.SourceImageFile, backend.SourceBlockDevice:
		devs := []string{src.Path}
		if src.Kind == backend.SourceImageFile {
			if n.loop == nil {
				return Identity{}, fmt.Errorf("image volumes need loop devices, which this driver was not given: %w", errdefs.ErrFailedPrecondition)
			}
			var err error
			if devs, err = n.loop.Find(ctx, src.Path); err != nil {
				return Identity{}, err
			}
		}
		var id Identity
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
	return Identity{}, fmt.Errorf("unknown source kind %v", src.Kind)
}

// matches reports whether mount point mp (already known to be a mount) is
// one of the identity's.
func (id Identity) matches(mp string) bool {
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
func (id Identity) matchesMount(mi mount.MountInfo) bool {
	if id.matches(mi.MountPoint) {
		return true
	}
	if id.ino != 0 || !strings.HasPrefix(mi.Source, "/dev/") {
		return false
	}
	st, err := statT(mi.Source)
	return err == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK && slices.Contains(id.rdevs, st.Rdev)
}

// Empty reports whether the identity matches nothing (a volume whose
// image is attached nowhere).
func (id Identity) Empty() bool { return id.ino == 0 && len(id.rdevs) == 0 }

// MountsOf lists the mount points of a volume on this node: the answer to
// "is this volume published (or staged), and where?".
func (n *Node) MountsOf(ctx context.Context, src backend.Source) ([]string, error) {
	id, err := n.IdentityOf(ctx, src)
	if err != nil || id.Empty() {
		return nil, err
	}
	return n.MountPointsOf(id)
}

// MountPointsOf lists the mount points in the mount table that match id.
func (n *Node) MountPointsOf(id Identity) ([]string, error) {
	infos, err := n.table.Mounts()
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

// State describes what is at a path now.
type State struct {
	Exists   bool
	Mounted  bool
	Ours     bool // the mount on top is a mount of the volume in question
	ReadOnly bool
	Info     mountfd.Info
}

// Inspect looks at path without following a symbolic link in any component
// (one is refused with InvalidArgument), from statx and statfs of the path
// alone: no mount table is read unless a device-backed btrfs needs it.
func (n *Node) Inspect(path string, id Identity) (State, error) {
	var s State
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
	s.Exists, s.Mounted, s.ReadOnly, s.Info = true, info.MountRoot, info.ReadOnly, info
	if s.Mounted {
		s.Ours = n.matchesInfo(id, info)
	}
	return s, nil
}

// matchesInfo is matches for an opened mount point. A btrfs filesystem on a
// loop device reports an anonymous st_dev, so for device sources the mount's
// source device is looked up by mount ID as a last resort.
func (n *Node) matchesInfo(id Identity, info mountfd.Info) bool {
	switch {
	case id.Empty():
		return false
	case id.ino != 0:
		return info.Dev == id.dev && info.Ino == id.ino
	case info.BlockDevice():
		return slices.Contains(id.rdevs, info.Rdev)
	case slices.Contains(id.rdevs, info.Dev):
		return true
	}
	infos, err := n.table.Mounts()
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

// UnmountOurs peels the mounts of the volume with identity id off path,
// top first, and stops at the first layer that is not the volume's: that
// one belongs to someone else and is left exactly as it is (foreign is
// then true). It returns how many layers it removed.
func (n *Node) UnmountOurs(ctx context.Context, path string, id Identity) (count int, foreign bool, err error) {
	for ; count < maxStackedMounts; count++ {
		if err := ctx.Err(); err != nil {
			return count, false, err
		}
		st, err := n.Inspect(path, id)
		if err != nil {
			return count, false, err
		}
		if !st.Mounted {
			return count, false, nil
		}
		if !st.Ours {
			return count, true, nil
		}
		if err := mountfd.Unmount(path); err != nil {
			return count, false, err
		}
	}
	return count, false, fmt.Errorf("%s still mounted after %d unmounts: %w", path, maxStackedMounts, errdefs.ErrFailedPrecondition)
}

// BindAt bind-mounts source (a path cairn owns: a volume directory, a loop
// device) or the already-opened src at the opened target.
func BindAt(source string, src *mountfd.Handle, target *mountfd.Handle, attrs mountfd.Attrs) error {
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

// HasOption reports whether mount option o is among opts.
func HasOption(opts []string, o string) bool {
	for _, x := range opts {
		if strings.TrimSpace(x) == o {
			return true
		}
	}
	return false
}

// holderDevs lists the device numbers of the devices stacked on block
// device dev (a LUKS mapping on a loop device), from sysfs.
func holderDevs(dev string) []uint64 {
	st, err := statT(dev)
	if err != nil {
		return nil
	}
	dir := fmt.Sprintf("/sys/dev/block/%d:%d/holders", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []uint64
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/sys/class/block", e.Name(), "dev"))
		if err != nil {
			continue
		}
		var maj, min uint32
		if _, err := fmt.Sscanf(strings.TrimSpace(string(b)), "%d:%d", &maj, &min); err == nil {
			out = append(out, unix.Mkdev(maj, min))
		}
	}
	return out
}

// Exists reports whether anything is at path, looked up as Inspect does
// (a symbolic link in any component is refused): unpublish's "is there
// still a target?".
func (n *Node) Exists(path string) (bool, error) { return mountfd.Exists(path) }

// IsDir reports whether path exists and is a directory, looked up as
// Inspect does: stage's check that the staging path is a directory the CO
// made, so that the mount cannot land outside it.
func (n *Node) IsDir(path string) (exists, dir bool, err error) {
	info, err := mountfd.StatPath(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, false, nil
	}
	if err != nil {
		return false, false, err
	}
	return true, info.Dir(), nil
}
