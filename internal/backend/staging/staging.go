// Package staging owns the on-disk protocol that makes pool changes crash
// safe: entries are built under new-<id> and renamed into place, removed by
// renaming to rm-<id> first, and the metadata commit happens between the
// rename and the point of no return. Every pool type uses it, so the
// protocol is written (and tested) once.
//
// A Dir is one directory of entries (volumes or snapshots) named by ID. An
// entry can be anything a rename moves: a directory, a btrfs subvolume, an
// image file.
package staging

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/crashpoint"
	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/mounttable"
)

// Prefixes of entries in flight.
const (
	NewPrefix = "new-"
	RmPrefix  = "rm-"
)

// Dir is a directory of entries named by ID.
type Dir struct {
	Path string
	// Remove deletes one entry of this directory's kind (os.RemoveAll for a
	// directory, a subvolume delete for btrfs). It must tolerate a missing path.
	Remove func(ctx context.Context, path string) error
}

// Entry is the final path of entry id.
func (d Dir) Entry(id string) string { return filepath.Join(d.Path, id) }

// Exists reports whether entry id is in place.
func (d Dir) Exists(id string) (bool, error) {
	_, err := os.Lstat(d.Entry(id))
	if err == nil {
		return true, nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return false, err
}

// Create builds entry id: build makes it at a temporary path, which is then
// renamed into place, and commit runs the metadata transaction. If commit
// fails the entry is removed again. If the entry already exists (a retry
// after a crash, or a repeated call) build is skipped and only commit runs.
func (d Dir) Create(ctx context.Context, id string, build func(ctx context.Context, tmp string) error, commit func() error) error {
	final := d.Entry(id)
	exists, err := d.Exists(id)
	if err != nil {
		return err
	}
	if !exists {
		tmp := filepath.Join(d.Path, NewPrefix+id)
		if err := d.Remove(ctx, tmp); err != nil { // a leftover of a crashed attempt
			return fmt.Errorf("clear %s: %w", tmp, err)
		}
		crashpoint.Hit("create:start")
		if err := build(ctx, tmp); err != nil {
			if rmErr := d.Remove(context.WithoutCancel(ctx), tmp); rmErr != nil {
				err = errors.Join(err, fmt.Errorf("clean up %s: %w", tmp, rmErr))
			}
			return err
		}
		if err := os.Rename(tmp, final); err != nil {
			return fmt.Errorf("rename into place: %w", err)
		}
		if err := afterRename(d.Path); err != nil {
			return err
		}
	}
	crashpoint.Hit("create:renamed")
	if err := commit(); err != nil {
		if rmErr := d.Remove(context.WithoutCancel(ctx), final); rmErr != nil {
			err = errors.Join(err, fmt.Errorf("roll back %s: %w", final, rmErr))
		}
		return err
	}
	crashpoint.Hit("create:committed")
	return nil
}

// Delete removes entry id: it is renamed to rm-<id>, commit runs, and only
// then is the data removed. If commit fails the rename is undone. A missing
// entry still commits, so that metadata and disk converge.
func (d Dir) Delete(ctx context.Context, id string, commit func() error) error {
	final := d.Entry(id)
	doomed := filepath.Join(d.Path, RmPrefix+id)
	renamed := false
	switch err := os.Rename(final, doomed); {
	case err == nil:
		renamed = true
		if err := afterRename(d.Path); err != nil {
			return err
		}
	case errors.Is(err, fs.ErrNotExist):
	default:
		return fmt.Errorf("rename %s for removal: %w", final, err)
	}
	crashpoint.Hit("delete:renamed")
	if err := commit(); err != nil {
		if renamed {
			if rbErr := os.Rename(doomed, final); rbErr != nil {
				err = errors.Join(err, fmt.Errorf("roll back rename: %w", rbErr))
			}
		}
		return err
	}
	crashpoint.Hit("delete:committed")
	if err := d.Remove(ctx, doomed); err != nil {
		// Committed: the entry is gone for the driver. Reconcile finishes
		// the removal at the next start.
		return fmt.Errorf("removing %s after commit (reconcile will retry): %w", doomed, err)
	}
	return nil
}

// Result is what Reconcile found.
type Result struct {
	Removed []string
	Missing []string
	Errors  []string
}

// Reconcile removes staged leftovers and entries not in known, and lists
// known IDs that have no entry. An rm-<id> whose ID is known is a delete
// that died before its commit; it is renamed back to <id>. Only names
// directly under d.Path are considered; nothing outside it is touched.
func (d Dir) Reconcile(ctx context.Context, known map[string]bool) (Result, error) {
	var res Result
	entries, err := os.ReadDir(d.Path)
	if err != nil {
		return res, fmt.Errorf("reconcile %s: %w", d.Path, err)
	}
	present := map[string]bool{}
	for _, e := range entries {
		name := e.Name()
		if known[name] { // IDs never start with the staging prefixes
			present[name] = true
			continue
		}
		if strings.HasPrefix(name, ".") { // the pool's own bookkeeping
			continue
		}
		p := filepath.Join(d.Path, name)
		// rm-<id> of an ID the store still knows is a delete that died
		// before its commit: the store is the truth, so undo the rename.
		if id, ok := strings.CutPrefix(name, RmPrefix); ok && known[id] {
			if _, err := os.Lstat(d.Entry(id)); errors.Is(err, fs.ErrNotExist) {
				if err := os.Rename(p, d.Entry(id)); err != nil {
					res.Errors = append(res.Errors, fmt.Sprintf("%s: roll back uncommitted delete: %v", p, err))
					continue
				}
				if err := syncDir(d.Path); err != nil {
					res.Errors = append(res.Errors, err.Error())
				}
				present[id] = true
				continue
			}
		}
		if err := d.Remove(ctx, p); err != nil {
			res.Errors = append(res.Errors, fmt.Sprintf("%s: %v", p, err))
			continue
		}
		res.Removed = append(res.Removed, p)
	}
	for id := range known {
		if !present[id] {
			res.Missing = append(res.Missing, id)
		}
	}
	return res, nil
}

// RemoveAll is a Remove for plain directories and files. It refuses to
// cross into other filesystems (a volume's bind mount that leaked) rather
// than deleting data that lives elsewhere.
func RemoveAll(ctx context.Context, path string) error {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return err
	}
	var parent unix.Stat_t
	if err := unix.Stat(filepath.Dir(path), &parent); err != nil {
		return err
	}
	if st.Dev != parent.Dev {
		return fmt.Errorf("%s is a mount point: %w", path, errdefs.ErrFailedPrecondition)
	}
	if err := mountsBelow(path); err != nil {
		return err
	}
	return os.RemoveAll(path)
}

// mountsBelow fails if anything is mounted at or below path, since
// os.RemoveAll would walk into it.
func mountsBelow(path string) error {
	mps, err := mounttable.MountPoints("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	prefix := filepath.Clean(path)
	for _, mp := range mps {
		if mp == prefix || strings.HasPrefix(mp, prefix+"/") {
			return fmt.Errorf("%s is mounted under %s: %w", mp, path, errdefs.ErrFailedPrecondition)
		}
	}
	return nil
}

func syncDir(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	return nil
}

// ReconcilePool reconciles a pool's volumes and snapshots directories
// against the store's inventory, as every pool type lays them out, and
// merges the results into one report.
func ReconcilePool(ctx context.Context, volumes, snapshots Dir, inv backend.Inventory) (backend.Report, error) {
	var rep backend.Report
	for _, part := range []struct {
		dir   Dir
		known map[string]bool
	}{{volumes, inv.Volumes}, {snapshots, inv.Snapshots}} {
		res, err := part.dir.Reconcile(ctx, part.known)
		if err != nil {
			return rep, err
		}
		rep.Removed = append(rep.Removed, res.Removed...)
		rep.Missing = append(rep.Missing, res.Missing...)
		rep.Errors = append(rep.Errors, res.Errors...)
	}
	return rep, nil
}

// ContentEntry resolves a content source (restore or clone) to its entry in
// a pool laid out as volumes and snapshots directories. It fails with
// errdefs.ErrInvalidArgument unless exactly one ID is set, and with
// errdefs.ErrNotFound when that entry does not exist; what the entry must
// be (a directory, a subvolume, an image) is the pool's to check.
func ContentEntry(volumes, snapshots Dir, src backend.ContentSource) (string, error) {
	var d Dir
	var id, what string
	switch {
	case src.SnapshotID != "" && src.VolumeID == "":
		d, id, what = snapshots, src.SnapshotID, "snapshot"
	case src.VolumeID != "" && src.SnapshotID == "":
		d, id, what = volumes, src.VolumeID, "volume"
	default:
		return "", fmt.Errorf("a content source names one snapshot or one volume, not %+v: %w", src, errdefs.ErrInvalidArgument)
	}
	exists, err := d.Exists(id)
	if err != nil {
		return "", err
	}
	if !exists {
		return "", fmt.Errorf("%s %s in %s: %w", what, id, filepath.Dir(d.Path), errdefs.ErrNotFound)
	}
	return d.Entry(id), nil
}
