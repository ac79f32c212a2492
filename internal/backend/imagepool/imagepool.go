//go:build linux

package imagepool

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/backend/staging"
	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/fileclone"
	"github.com/cairn-csi/cairn/internal/luks"
)

// Type is the pool type name.
const Type = "image"

const (
	// Granularity is what every image size is rounded up to: whole MiB
	// keep partitions and filesystem geometry aligned, and make sizes read
	// well in kubectl.
	Granularity = 1 << 20

	volumeMode   = 0o600 // only root (the node plugin) reads images
	snapshotMode = 0o400 // a snapshot is never written after it is made
)

// sourceXattrs record on a snapshot which volume it was taken of, so that
// a retried CreateSnapshot can tell its own snapshot from another's.
// trusted.* needs root and is invisible to workloads; user.* is the
// fallback for unprivileged runs (tests). Where neither can be set, the
// record is simply absent and the check is skipped.
var sourceXattrs = []string{"trusted.cairn.volume", "user.cairn.volume"}

// Pool is an image pool.
type Pool struct {
	// volumes, snapshots; DeleteVolume, DeleteSnapshot, Reconcile. Source
	// is the pool's own: its entries are image files, not directories.
	staging.Layout
	// volumeDirs are the volumes directory as configured and with symlinks
	// resolved: the kernel reports loop devices' backing files resolved.
	volumeDirs []string
}

var (
	_ backend.Backend        = (*Pool)(nil)
	_ backend.Snapshotter    = (*Pool)(nil)
	_ backend.ContentCreator = (*Pool)(nil)
	_ backend.Expander       = (*Pool)(nil)
	_ backend.ImageFiles     = (*Pool)(nil)
	_ backend.FormatRecorder = (*Pool)(nil)
	_ backend.BlockCapable   = (*Pool)(nil)
)

// New opens the image pool at root, creating its layout if needed. log may
// be nil.
func New(ctx context.Context, root string, log *slog.Logger) (*Pool, error) {
	l, err := staging.NewLayout(Type, root, log, removeFile, removeFile)
	if err != nil {
		return nil, err
	}
	root, log = l.Root, l.Log
	p := &Pool{Layout: l}
	if err := p.MakeDirs(); err != nil {
		return nil, err
	}
	p.volumeDirs = []string{p.Volumes.Path}
	if resolved, err := filepath.EvalSymlinks(p.Volumes.Path); err == nil && resolved != p.Volumes.Path {
		p.volumeDirs = append(p.volumeDirs, resolved)
	}
	// Say once how copies will be made: the difference between an instant
	// snapshot and a full copy matters to whoever sized the pool.
	if reflink, err := fileclone.SupportsReflink(ctx, p.Snapshots.Path); err != nil {
		log.Warn("image pool: cannot tell whether the filesystem has reflinks", "path", root, "err", err)
	} else if reflink {
		log.Info("image pool: snapshots and clones are reflinks (instant, space shared until written)", "path", root)
	} else {
		log.Info("image pool: snapshots and clones are sparse copies (the filesystem cannot share extents)", "path", root)
	}
	return p, nil
}

// removeFile is staging's Remove for image files. os.Remove also removes
// an empty directory (a leftover of another tool); it never recurses, so a
// non-empty directory is reported, not deleted.
func removeFile(_ context.Context, path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// Type implements backend.Backend.
func (p *Pool) Type() string { return Type }

// SupportsBlock reports that image volumes can be consumed as raw block
// devices (the node attaches the image to a loop device).
func (p *Pool) SupportsBlock() bool { return true }

// Check implements backend.Backend: both directories must be writable
// directories.
func (p *Pool) Check(ctx context.Context) error {
	return p.CheckDirs(p.Volumes.Path, p.Snapshots.Path)
}

// Capacity implements backend.Backend from the pool filesystem's free
// space. Sizes are enforced (an image cannot outgrow its length), but
// images are thin: see "Space" in the package comment for what
// MaxVolumeBytes does and does not promise.
func (p *Pool) Capacity(ctx context.Context) (backend.Capacity, error) {
	return p.FilesystemCapacity(true)
}

func (p *Pool) statfs() (total, avail int64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(p.Root, &st); err != nil {
		return 0, 0, fmt.Errorf("statfs %s: %w", p.Root, err)
	}
	bs := int64(st.Bsize)
	return int64(st.Blocks) * bs, int64(st.Bavail) * bs, nil
}

// roundSize returns the image size for a request of want bytes that must be
// at least floor (a source's size) and at most limit (0: no limit).
func roundSize(want, floor, limit int64) (int64, error) {
	n := max(want, floor, Granularity)
	if n > math.MaxInt64-Granularity {
		return 0, fmt.Errorf("%d bytes is too large for an image: %w", n, errdefs.ErrOutOfRange)
	}
	n = (n + Granularity - 1) / Granularity * Granularity
	if limit > 0 && n > limit {
		return 0, fmt.Errorf("image sizes are whole MiB: %d bytes rounds up to %d, above limit_bytes %d: %w", max(want, floor), n, limit, errdefs.ErrOutOfRange)
	}
	return n, nil
}

// CreateVolume implements backend.Backend. The image is a hole of the
// rounded size; no block is allocated until the workload writes.
func (p *Pool) CreateVolume(ctx context.Context, id string, spec backend.Spec, commit func(backend.Volume) error) (backend.Volume, error) {
	size, err := roundSize(spec.CapacityBytes, 0, spec.LimitBytes)
	if err != nil {
		return backend.Volume{}, fmt.Errorf("create volume %s: %w", id, err)
	}
	// Only the node formats mount volumes; a block volume's content is the
	// workload's, so it carries no format state and is never wiped.
	state := backend.FormatUnknown
	if spec.AccessType == backend.AccessMount {
		state = backend.FormatPending
	}
	if spec.Encryption != nil {
		if err := p.CanEncrypt(ctx); err != nil {
			return backend.Volume{}, err
		}
	}
	return p.create(ctx, id, spec, size, func(ctx context.Context, tmp string) error {
		if spec.Encryption == nil {
			return p.makeImage(tmp, size, state)
		}
		if err := p.makeImage(tmp, size+luks.HeaderBytes, state); err != nil {
			return err
		}
		return encryptNew(ctx, tmp, spec.Encryption)
	}, commit)
}

// create runs the staged create of volume id of size bytes, or, when the
// image is already in place (a retry), checks it fits spec and commits.
func (p *Pool) create(ctx context.Context, id string, spec backend.Spec, size int64, build func(ctx context.Context, tmp string) error, commit func(backend.Volume) error) (backend.Volume, error) {
	v := backend.Volume{ID: id, CapacityBytes: size}
	exists, err := p.Volumes.Exists(id)
	if err != nil {
		return backend.Volume{}, fmt.Errorf("create volume %s: %w", id, err)
	}
	if exists {
		cur, err := capacityOf(p.Volumes.Entry(id))
		if err != nil {
			return backend.Volume{}, fmt.Errorf("create volume %s: %w", id, err)
		}
		if cur < spec.CapacityBytes || spec.LimitBytes > 0 && cur > spec.LimitBytes {
			return backend.Volume{}, fmt.Errorf("create volume %s: it exists with %d bytes, outside [%d, %d]: %w",
				id, cur, spec.CapacityBytes, spec.LimitBytes, errdefs.ErrAlreadyExists)
		}
		v.CapacityBytes = cur // it may have been expanded since
	}
	if err := p.Volumes.Create(ctx, id, build, func() error { return commit(v) }); err != nil {
		return backend.Volume{}, fmt.Errorf("create volume %s: %w", id, err)
	}
	return v, nil
}

// makeImage creates a sparse image of size bytes at path with format
// state, synced.
func (p *Pool) makeImage(path string, size int64, state backend.FormatState) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, volumeMode)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return fmt.Errorf("size image %s: %w", path, err)
	}
	if state != backend.FormatUnknown {
		if err := setFormatState(int(f.Fd()), state); err != nil {
			// The volume still works: its first stage formats it, but a
			// kill during that mkfs cannot be told from a filesystem.
			p.Log.Warn("image pool: cannot record the format state; an interrupted first format will need repair by hand", "path", path, "err", err)
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	return f.Close()
}

// imageSize returns the size of the image at path, which must be a
// regular file.
func imageSize(path string) (int64, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return 0, err
	}
	if !fi.Mode().IsRegular() {
		return 0, fmt.Errorf("%s is not a regular file: %w", path, errdefs.ErrFailedPrecondition)
	}
	return fi.Size(), nil
}

// A loop device still attached to a deleted volume's image (staging.Layout's
// DeleteVolume) keeps its data reachable until it is detached; the node
// layer detaches devices of deleted images (the driver's reconcileLoops).

// Source implements backend.Backend.
func (p *Pool) Source(ctx context.Context, id string) (backend.Source, error) {
	path := p.Volumes.Entry(id)
	if _, err := imageSize(path); errors.Is(err, fs.ErrNotExist) {
		return backend.Source{}, fmt.Errorf("volume %s in pool %s: %w", id, p.Root, errdefs.ErrNotFound)
	} else if err != nil {
		return backend.Source{}, fmt.Errorf("volume %s: %w", id, err)
	}
	return backend.Source{Kind: backend.SourceImageFile, Path: path}, nil
}

// Usage implements backend.Backend for the image itself: its size, and
// the blocks allocated to it. What the filesystem inside uses is the node's
// business (statfs of the mount). Available is what the image can still
// take: its unallocated part, but no more than the pool has free, since
// images are thin.
func (p *Pool) Usage(ctx context.Context, id string) (backend.Usage, error) {
	src, err := p.Source(ctx, id)
	if err != nil {
		return backend.Usage{}, err
	}
	var st unix.Stat_t
	if err := unix.Stat(src.Path, &st); err != nil {
		return backend.Usage{}, fmt.Errorf("volume %s: %w", id, err)
	}
	// st_blocks counts 512-byte units whatever the filesystem's block size;
	// speculative preallocation (xfs) can briefly exceed the size.
	used := min(st.Blocks*512, st.Size)
	_, poolAvail, err := p.statfs()
	if err != nil {
		return backend.Usage{}, err
	}
	return backend.Usage{
		TotalBytes:     st.Size,
		UsedBytes:      used,
		AvailableBytes: min(st.Size-used, poolAvail),
	}, nil
}

// ExpandVolume implements backend.Expander by lengthening the image. The
// new part is a hole; the loop device and the filesystem inside see it
// only after the node refreshes them (NodeExpandVolume).
func (p *Pool) ExpandVolume(ctx context.Context, id string, newBytes int64) (int64, error) {
	src, err := p.Source(ctx, id)
	if err != nil {
		return 0, err
	}
	cur, err := capacityOf(src.Path)
	if err != nil {
		return 0, fmt.Errorf("volume %s: %w", id, err)
	}
	want, err := roundSize(newBytes, 0, 0)
	if err != nil {
		return 0, fmt.Errorf("expand volume %s: %w", id, err)
	}
	if want <= cur {
		return cur, nil
	}
	header := headerBytes(src.Path)
	f, err := os.OpenFile(src.Path, os.O_RDWR, 0)
	if err != nil {
		return 0, fmt.Errorf("expand volume %s: %w", id, err)
	}
	defer f.Close()
	if err := f.Truncate(want + header); err != nil {
		return 0, fmt.Errorf("expand volume %s to %d bytes: %w", id, want, err)
	}
	// The size is the volume's capacity record: it must survive a crash
	// before the driver's store says the volume grew.
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("expand volume %s: fsync: %w", id, err)
	}
	return want, nil
}

// CreateSnapshot implements backend.Snapshotter: a read-only copy of the
// volume's image, by reflink where the filesystem can.
func (p *Pool) CreateSnapshot(ctx context.Context, snapID, volID string, commit func(backend.Snapshot) error) (backend.Snapshot, error) {
	s := backend.Snapshot{ID: snapID, VolumeID: volID}
	exists, err := p.Snapshots.Exists(snapID)
	if err != nil {
		return s, fmt.Errorf("create snapshot %s: %w", snapID, err)
	}
	if exists {
		// A retry: the snapshot must be of the same volume.
		path := p.Snapshots.Entry(snapID)
		if of, ok := recordedSource(path); ok && of != volID {
			return s, fmt.Errorf("snapshot %s exists of volume %s, not %s: %w", snapID, of, volID, errdefs.ErrAlreadyExists)
		}
		fi, err := os.Lstat(path)
		if err != nil {
			return s, fmt.Errorf("create snapshot %s: %w", snapID, err)
		}
		s.SizeBytes, s.CreatedAt = fi.Size()-headerBytes(path), fi.ModTime()
	} else {
		src, err := p.Source(ctx, volID)
		if err != nil {
			return s, fmt.Errorf("create snapshot %s: %w", snapID, err)
		}
		if s.SizeBytes, err = capacityOf(src.Path); err != nil {
			return s, fmt.Errorf("create snapshot %s: %w", snapID, err)
		}
		// Whole seconds: what every filesystem can store as the mtime that
		// a retry reads back.
		s.CreatedAt = time.Now().Truncate(time.Second)
	}
	err = p.Snapshots.Create(ctx, snapID, func(ctx context.Context, tmp string) error {
		m, err := fileclone.CloneFile(ctx, p.Volumes.Entry(volID), tmp)
		if err != nil {
			return err
		}
		p.Log.Debug("image pool: snapshot copied", "snapshot", snapID, "volume", volID, "method", m.String())
		recordSource(tmp, volID)
		if err := copyFormatState(p.Volumes.Entry(volID), tmp); err != nil {
			return err
		}
		if err := os.Chtimes(tmp, s.CreatedAt, s.CreatedAt); err != nil {
			return err
		}
		return finishImage(tmp, snapshotMode, 0)
	}, func() error { return commit(s) })
	if err != nil {
		return backend.Snapshot{}, fmt.Errorf("create snapshot %s of %s: %w", snapID, volID, err)
	}
	return s, nil
}

// finishImage sets path's mode, lengthens it to size if it is shorter, and
// syncs it, so that the rename that follows publishes a complete image.
func finishImage(path string, mode os.FileMode, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Chmod(mode); err != nil {
		return err
	}
	if size > 0 {
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		if size > fi.Size() {
			if err := f.Truncate(size); err != nil {
				return fmt.Errorf("grow %s to %d bytes: %w", path, size, err)
			}
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	return f.Close()
}

func recordSource(path, volID string) {
	for _, name := range sourceXattrs {
		if unix.Setxattr(path, name, []byte(volID), 0) == nil {
			return
		}
	}
}

func recordedSource(path string) (string, bool) {
	buf := make([]byte, 256)
	for _, name := range sourceXattrs {
		if n, err := unix.Getxattr(path, name, buf); err == nil {
			return string(buf[:n]), true
		}
	}
	return "", false
}

// CreateVolumeFrom implements backend.ContentCreator: a copy of the
// snapshot's or volume's image (a reflink where the filesystem can),
// lengthened to the requested size. The filesystem inside keeps its old
// size until the node grows it at stage time (NodeExpandVolume).
func (p *Pool) CreateVolumeFrom(ctx context.Context, id string, spec backend.Spec, src backend.ContentSource, commit func(backend.Volume) error) (backend.Volume, error) {
	from, err := p.ContentPath(src, requireImage)
	if err != nil {
		return backend.Volume{}, fmt.Errorf("create volume %s: %w", id, err)
	}
	srcSize, err := capacityOf(from)
	if err != nil {
		return backend.Volume{}, fmt.Errorf("create volume %s: %w", id, err)
	}
	header := headerBytes(from)
	size, err := roundSize(spec.CapacityBytes, srcSize, spec.LimitBytes)
	if err != nil {
		return backend.Volume{}, fmt.Errorf("create volume %s: %w", id, err)
	}
	return p.create(ctx, id, spec, size, func(ctx context.Context, tmp string) error {
		m, err := fileclone.CloneFile(ctx, from, tmp)
		if err != nil {
			return err
		}
		p.Log.Debug("image pool: volume copied", "volume", id, "from", from, "method", m.String())
		// A copy of a formatted image is formatted, and a copy of one never
		// formatted is not: the state is the source's.
		if err := copyFormatState(from, tmp); err != nil {
			return err
		}
		if err := encryptCopy(ctx, tmp, spec.Encryption); err != nil {
			return err
		}
		return finishImage(tmp, volumeMode, size+header)
	}, commit)
}

// requireImage is the content-path check of an image pool: the source
// must be an image file itself, not a symlink or a directory.
func requireImage(path string) error {
	_, err := imageSize(path)
	return err
}

// VolumeForImage implements backend.ImageFiles. Any file directly in the
// volumes directory belongs to the volume it is named after, including
// staged names (new-<id>, rm-<id>): a loop device on rm-<id> is one on a
// volume being deleted, and the driver detaches it once the volume is gone.
func (p *Pool) VolumeForImage(path string) (string, bool) {
	dir, name := filepath.Split(filepath.Clean(path))
	dir = filepath.Clean(dir)
	in := false
	for _, d := range p.volumeDirs {
		in = in || dir == d
	}
	if !in {
		return "", false
	}
	if rest, ok := strings.CutPrefix(name, staging.NewPrefix); ok {
		name = rest
	} else if rest, ok := strings.CutPrefix(name, staging.RmPrefix); ok {
		name = rest
	}
	if name == "" || strings.HasPrefix(name, ".") {
		return "", false
	}
	return name, true
}

// formatXattrs hold a volume's format state on its image, so that it is
// renamed, copied (explicitly: reflinks and copies take only data) and
// unlinked with the image itself, needs no entry of its own that reconcile
// would have to know, and cannot outlive or predate the image. trusted.*
// needs root; user.* is the fallback for unprivileged runs.
var formatXattrs = []string{"trusted.cairn.format", "user.cairn.format"}

var formatValues = map[backend.FormatState]string{backend.FormatPending: "pending", backend.FormatDone: "done"}

// setFormatState records state on the open image fd; the caller syncs.
func setFormatState(fd int, state backend.FormatState) error {
	var errs []error
	for _, name := range formatXattrs {
		err := unix.Fsetxattr(fd, name, []byte(formatValues[state]), 0)
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", name, err))
	}
	return errors.Join(errs...)
}

// readFormatState returns the state recorded on the image at path;
// FormatUnknown when none is.
func readFormatState(path string) (backend.FormatState, error) {
	buf := make([]byte, 16)
	for _, name := range formatXattrs {
		n, err := unix.Getxattr(path, name, buf)
		switch {
		case err == nil:
			for st, v := range formatValues {
				if string(buf[:n]) == v {
					return st, nil
				}
			}
			return backend.FormatUnknown, fmt.Errorf("%s on %s holds %q: %w", name, path, buf[:n], errdefs.ErrFailedPrecondition)
		case errors.Is(err, unix.ENODATA), errors.Is(err, unix.ENOTSUP), errors.Is(err, unix.EPERM), errors.Is(err, unix.ERANGE):
			continue
		default:
			return backend.FormatUnknown, fmt.Errorf("read %s of %s: %w", name, path, err)
		}
	}
	return backend.FormatUnknown, nil
}

// copyFormatState gives the image at to the format state of from.
func copyFormatState(from, to string) error {
	st, err := readFormatState(from)
	if err != nil || st == backend.FormatUnknown {
		return err
	}
	f, err := os.OpenFile(to, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := setFormatState(int(f.Fd()), st); err != nil {
		return fmt.Errorf("copy format state to %s: %w", to, err)
	}
	return nil // the caller syncs the copy
}

// FormatState implements backend.FormatRecorder.
func (p *Pool) FormatState(ctx context.Context, id string) (backend.FormatState, error) {
	src, err := p.Source(ctx, id)
	if err != nil {
		return backend.FormatUnknown, err
	}
	return readFormatState(src.Path)
}

// MarkFormatted implements backend.FormatRecorder. The record is synced
// before it returns: "done" must never be lost once the workload may have
// written, or the next stage would wipe its data.
func (p *Pool) MarkFormatted(ctx context.Context, id string) error {
	src, err := p.Source(ctx, id)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(src.Path, os.O_RDONLY, 0)
	if err != nil {
		return fmt.Errorf("volume %s: %w", id, err)
	}
	defer f.Close()
	if err := setFormatState(int(f.Fd()), backend.FormatDone); err != nil {
		if st, _ := readFormatState(src.Path); st == backend.FormatUnknown {
			return nil // nothing was ever recorded here; nothing to update
		}
		return fmt.Errorf("volume %s: record formatted: %w", id, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("volume %s: record formatted: fsync: %w", id, err)
	}
	return nil
}
