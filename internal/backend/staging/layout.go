package staging

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/errdefs"
)

// DirMode is the mode of a pool's volumes and snapshots directories. Only
// the plugin (root) walks them: a workload reaches its volume through the
// mount at its target path, whose lookup never passes through the pool, so
// nobody else needs even search permission on the pool's layout.
const DirMode = 0o700

// Layout is the skeleton every pool rooted at a directory embeds: the
// volumes and snapshots directories, the delete and reconcile that the
// staging protocol gives them, and, for pools whose entries are
// directories (dir, btrfs), Source and the content-path check. A pool
// whose entries are something else (image files) defines its own Source.
type Layout struct {
	Root      string // the pool's path, clean and absolute
	Volumes   Dir    // <root>/volumes
	Snapshots Dir    // <root>/snapshots
	Log       *slog.Logger
	kind      string // the pool type, for messages
}

// NewLayout checks root and lays out a pool of kind ("dir", "btrfs",
// "image") there, without touching the disk: see MakeDirs. The Remove
// functions delete one entry of each directory. log may be nil.
func NewLayout(kind, root string, log *slog.Logger, removeVolume, removeSnapshot func(ctx context.Context, path string) error) (Layout, error) {
	if !filepath.IsAbs(root) {
		return Layout{}, fmt.Errorf("%s pool path %q must be absolute: %w", kind, root, errdefs.ErrInvalidArgument)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	root = filepath.Clean(root)
	return Layout{
		Root:      root,
		Volumes:   Dir{Path: filepath.Join(root, "volumes"), Remove: removeVolume},
		Snapshots: Dir{Path: filepath.Join(root, "snapshots"), Remove: removeSnapshot},
		Log:       log,
		kind:      kind,
	}, nil
}

// MakeDirs creates the volumes and snapshots directories (and root) where
// they are missing. Existing directories keep their mode.
func (l Layout) MakeDirs() error {
	for _, d := range []string{l.Volumes.Path, l.Snapshots.Path} {
		if err := os.MkdirAll(d, DirMode); err != nil {
			return fmt.Errorf("pool %s: %w", l.Root, err)
		}
	}
	return nil
}

// CheckDirs is the part of Check every such pool shares: each of dirs
// (the pool's own paths) must be a directory this process can write.
func (l Layout) CheckDirs(dirs ...string) error {
	for _, d := range dirs {
		st, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("%s pool %s: %w", l.kind, l.Root, err)
		}
		if !st.IsDir() {
			return fmt.Errorf("%s pool %s: %s is not a directory: %w", l.kind, l.Root, d, errdefs.ErrFailedPrecondition)
		}
		if err := unix.Access(d, unix.W_OK|unix.X_OK); err != nil {
			return fmt.Errorf("%s pool %s: %s is not writable: %w", l.kind, l.Root, d, err)
		}
	}
	return nil
}

// FilesystemCapacity is a Capacity from the free space of the filesystem
// holding the pool. Limits (quota, qgroups, image lengths) reserve
// nothing, so it is the same for every volume size. enforced says whether
// the pool holds each volume to its size.
func (l Layout) FilesystemCapacity(enforced bool) (backend.Capacity, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(l.Root, &st); err != nil {
		return backend.Capacity{}, fmt.Errorf("statfs %s: %w", l.Root, err)
	}
	bs := int64(st.Bsize)
	avail := int64(st.Bavail) * bs
	return backend.Capacity{
		TotalBytes:     int64(st.Blocks) * bs,
		AvailableBytes: avail,
		MaxVolumeBytes: avail,
		Enforced:       enforced,
	}, nil
}

// DeleteVolume implements backend.Backend with the staged delete.
func (l Layout) DeleteVolume(ctx context.Context, id string, commit func() error) error {
	if err := l.Volumes.Delete(ctx, id, commit); err != nil {
		return fmt.Errorf("delete volume %s: %w", id, err)
	}
	return nil
}

// DeleteSnapshot implements backend.Snapshotter with the staged delete.
// Volumes restored from the snapshot are entries of their own and keep
// their data.
func (l Layout) DeleteSnapshot(ctx context.Context, snapID string, commit func() error) error {
	if err := l.Snapshots.Delete(ctx, snapID, commit); err != nil {
		return fmt.Errorf("delete snapshot %s: %w", snapID, err)
	}
	return nil
}

// Reconcile implements backend.Backend for both directories (see
// ReconcilePool). A pool with more to restore calls it first.
func (l Layout) Reconcile(ctx context.Context, inv backend.Inventory) (backend.Report, error) {
	return ReconcilePool(ctx, l.Volumes, l.Snapshots, inv)
}

// Source implements backend.Backend for pools whose volumes are
// directories. The entry itself must be a directory, not a symlink to one:
// a symlink planted in the pool must not redirect a bind mount.
func (l Layout) Source(ctx context.Context, id string) (backend.Source, error) {
	path := l.Volumes.Entry(id)
	if err := isDir(path); errors.Is(err, fs.ErrNotExist) {
		return backend.Source{}, fmt.Errorf("volume %s in pool %s: %w", id, l.Root, errdefs.ErrNotFound)
	} else if err != nil {
		return backend.Source{}, fmt.Errorf("volume %s: %w", id, err)
	}
	return backend.Source{Kind: backend.SourceDirectory, Path: path}, nil
}

// ContentPath resolves a content source (restore or clone) to its entry
// (ContentEntry) and checks it with check, which says what the pool's
// entries must be; nil checks that it is a directory, not a symlink.
func (l Layout) ContentPath(src backend.ContentSource, check func(path string) error) (string, error) {
	path, err := ContentEntry(l.Volumes, l.Snapshots, src)
	if err != nil {
		return "", err
	}
	if check == nil {
		check = isDir
	}
	if err := check(path); err != nil {
		return "", fmt.Errorf("content source %+v: %w", src, err)
	}
	return path, nil
}

// isDir fails unless path is a directory itself (not a symlink to one),
// with errdefs.ErrFailedPrecondition when something else is there.
func isDir(path string) error {
	st, err := os.Lstat(path)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory: %w", path, errdefs.ErrFailedPrecondition)
	}
	return nil
}
