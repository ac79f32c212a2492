package node

import (
	"context"
	"log/slog"

	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/cairn-csi/cairn/internal/loopdev"
	"github.com/cairn-csi/cairn/internal/mountfd"
)

// LoopDevices is what the node needs of loop devices; KernelLoops
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

// MountTable is the mount table the node reads to find where a volume is
// mounted. ProcMountTable reads the kernel's; tests hand in a fake.
type MountTable interface {
	Mounts() ([]mount.MountInfo, error)
}

// ProcMountTable is this process's mount table, /proc/self/mountinfo.
type ProcMountTable struct{}

// Mounts parses /proc/self/mountinfo.
func (ProcMountTable) Mounts() ([]mount.MountInfo, error) {
	return mount.ParseMountInfo("/proc/self/mountinfo")
}

// Host is what the node does to the machine besides bind mounts, the mount
// table and loop devices: run a filesystem tool (mkfs, e2fsck, resize2fs,
// xfs_growfs, btrfs) and mount or unmount a filesystem. KernelHost does it
// for real; unit tests fake it, so that MountImage's format, grow and
// mount decisions are tested without root.
type Host interface {
	// RunTool runs a tool and returns its combined output.
	RunTool(ctx context.Context, name string, args ...string) ([]byte, error)
	// MountFS mounts the filesystem on dev at the opened directory dir.
	MountFS(dev string, dir *mountfd.Handle, fsType string, attrs mountfd.Attrs, fsOpts []string) error
	// Unmount removes the top mount at path.
	Unmount(path string) error
}

// KernelHost is Host over exec (RunTool), mount(2) and umount(2)
// (internal/mountfd).
type KernelHost struct{}

// RunTool is the package's RunTool.
func (KernelHost) RunTool(ctx context.Context, name string, args ...string) ([]byte, error) {
	return RunTool(ctx, name, args...)
}

// MountFS is mountfd.MountFS.
func (KernelHost) MountFS(dev string, dir *mountfd.Handle, fsType string, attrs mountfd.Attrs, fsOpts []string) error {
	return mountfd.MountFS(dev, dir, fsType, attrs, fsOpts)
}

// Unmount is mountfd.Unmount.
func (KernelHost) Unmount(path string) error { return mountfd.Unmount(path) }

// Config is what a Node is built from.
type Config struct {
	Logger *slog.Logger
	// Loop attaches image files; nil when no pool serves image files.
	Loop LoopDevices
	// Mounter formats and mounts block devices (LVM volumes); nil: the
	// system's, behind a FirstMountGate.
	Mounter *mount.SafeFormatAndMount
	// Table is read for "where is this mounted?"; nil: ProcMountTable.
	Table MountTable
	// StateDir holds the freeze markers; "" keeps none.
	StateDir string
	// Host runs filesystem tools and mounts filesystems; nil: KernelHost.
	Host Host
}

// Node is the node layer of one driver process. It is safe for concurrent
// use; callers serialise work on one volume (the driver's per-volume lock).
type Node struct {
	log      *slog.Logger
	loop     LoopDevices
	mounter  *mount.SafeFormatAndMount
	table    MountTable
	stateDir string
	host     Host
}

// New makes a Node.
func New(cfg Config) *Node {
	n := &Node{log: cfg.Logger, loop: cfg.Loop, mounter: cfg.Mounter, table: cfg.Table, stateDir: cfg.StateDir, host: cfg.Host}
	if n.log == nil {
		n.log = slog.Default()
	}
	if n.mounter == nil {
		n.mounter = mount.NewSafeFormatAndMount(&FirstMountGate{Interface: mount.New("")}, utilexec.New())
	}
	if n.table == nil {
		n.table = ProcMountTable{}
	}
	if n.host == nil {
		n.host = KernelHost{}
	}
	return n
}

// Loops returns the loop devices the node was given, nil if none.
func (n *Node) Loops() LoopDevices { return n.loop }

// HasLoops reports whether the node can attach image files.
func (n *Node) HasLoops() bool { return n.loop != nil }

// StateDir is where the node keeps its own files ("" if nowhere).
func (n *Node) StateDir() string { return n.stateDir }
