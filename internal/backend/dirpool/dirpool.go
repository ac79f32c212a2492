// Package dirpool owns the "dir" pool type: each volume is a directory under
// the pool's path, bind-mounted by the node layer. It needs nothing but a
// directory, which makes it Cairn's embedded default.
//
// Volume sizes are enforced only where the filesystem has project quota
// (ext4 or XFS mounted with prjquota): each volume directory then gets a
// project ID and a hard limit (see quota.go). Elsewhere a volume can use
// the whole filesystem; Capacity says so (Enforced false), and the driver
// warns at start, in Probe's log line and in each volume's context.
//
// Layout under the pool path:
//
//	volumes/<id>        a volume's data
//	volumes/new-<id>    being created (new-<id>.prj: its copy, being made)
//	volumes/rm-<id>     being removed
//	snapshots/<id>      a snapshot's data (read-only copy)
//	.cairn-projid       the next project ID to try (project quota only)
package dirpool

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/backend/staging"
	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/fscrypt"
	"github.com/cairn-csi/cairn/internal/projquota"
)

// Type is the pool type name.
const Type = "dir"

// Pool is a dir pool.
type Pool struct {
	staging.Layout // volumes, snapshots; DeleteVolume, DeleteSnapshot, Source, Reconcile
	// quota is set when the filesystem enforces project quota: volume
	// directories then get project IDs and limits.
	quota bool
}

var _ backend.Backend = (*Pool)(nil)

// New opens the dir pool at root, creating its layout if needed. log may
// be nil.
func New(ctx context.Context, root string, log *slog.Logger) (*Pool, error) {
	p := &Pool{}
	l, err := staging.NewLayout(Type, root, log, p.removeVolumeDir, staging.RemoveAll)
	if err != nil {
		return nil, err
	}
	p.Layout = l
	if err := p.MakeDirs(); err != nil {
		return nil, err
	}
	if err := p.initQuota(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// Type implements backend.Backend.
func (p *Pool) Type() string { return Type }

// VolumeDirsNamedByID implements backend.DirsNamedByID: a volume is the
// directory volumes/<id>.
func (p *Pool) VolumeDirsNamedByID() bool { return true }

// Check implements backend.Backend: the volumes directory must be a
// writable directory.
func (p *Pool) Check(ctx context.Context) error {
	return p.CheckDirs(p.Volumes.Path)
}

// Capacity implements backend.Backend from the filesystem's free space.
// Limits reserve nothing, so it is the same for every volume size.
func (p *Pool) Capacity(ctx context.Context) (backend.Capacity, error) {
	return p.FilesystemCapacity(p.quota)
}

// CreateVolume implements backend.Backend.
func (p *Pool) CreateVolume(ctx context.Context, id string, spec backend.Spec, commit func(backend.Volume) error) (backend.Volume, error) {
	if spec.AccessType != backend.AccessMount {
		return backend.Volume{}, fmt.Errorf("dir pool serves filesystem volumes only, not %s: %w", spec.AccessType, errdefs.ErrInvalidArgument)
	}
	v := backend.Volume{ID: id, CapacityBytes: spec.CapacityBytes}
	err := p.withKeys(spec.Encryption, func(policy *fscrypt.KeyID) error {
		return p.Volumes.Create(ctx, id, func(ctx context.Context, tmp string) error {
			if err := os.Mkdir(tmp, 0o777); err != nil { // the workload owns it; fsGroup may chown
				return err
			}
			if policy != nil {
				if err := fscrypt.SetPolicy(tmp, *policy); err != nil {
					return err
				}
			}
			return p.prepareVolumeDir(ctx, id, tmp, spec.CapacityBytes)
		}, func() error { return commit(v) })
	})
	if err != nil {
		return backend.Volume{}, fmt.Errorf("create volume %s: %w", id, err)
	}
	return v, nil
}

// Usage implements backend.Backend. With project quota the figures are the
// volume's project against its limit; without, a directory's limit is the
// filesystem's, so the figures are the filesystem's.
func (p *Pool) Usage(ctx context.Context, id string) (backend.Usage, error) {
	src, err := p.Source(ctx, id)
	if err != nil {
		return backend.Usage{}, err
	}
	proj, err := p.project(ctx, src.Path)
	if err != nil {
		return backend.Usage{}, fmt.Errorf("volume %s: %w", id, err)
	}
	if proj != 0 {
		u, err := p.quotaUsage(ctx, src.Path, proj)
		if err != nil {
			return backend.Usage{}, fmt.Errorf("volume %s: %w", id, err)
		}
		return u, nil
	}
	return backend.StatfsUsage(src.Path)
}

// ExpandVolume implements backend.Expander: the limit, where there is one,
// then the recorded size grow. The limit applies to the next write, so
// nothing needs doing on the node.
func (p *Pool) ExpandVolume(ctx context.Context, id string, newBytes int64) (int64, error) {
	src, err := p.Source(ctx, id)
	if err != nil {
		return 0, err
	}
	cur, err := recordedCapacity(src.Path)
	if err != nil {
		return 0, fmt.Errorf("volume %s: %w", id, err)
	}
	if newBytes <= cur {
		return cur, nil
	}
	proj, err := p.project(ctx, src.Path)
	if err != nil {
		return 0, fmt.Errorf("volume %s: %w", id, err)
	}
	if proj != 0 {
		if err := projquota.SetLimit(ctx, p.Volumes.Path, proj, uint64(newBytes)); err != nil {
			return 0, fmt.Errorf("expand volume %s: %w", id, err)
		}
	}
	if err := setRecordedCapacity(src.Path, newBytes); err != nil {
		return 0, fmt.Errorf("volume %s: %w", id, err)
	}
	return newBytes, nil
}

// prepareVolumeDir gives a new, empty volume directory its recorded size
// and, where the filesystem enforces it, its project and limit.
func (p *Pool) prepareVolumeDir(ctx context.Context, id, dir string, capacity int64) error {
	if p.quota {
		if _, err := p.limitNewDir(ctx, dir, capacity); err != nil {
			return err
		}
	}
	return setRecordedCapacity(dir, capacity)
}

// The capacity of a volume is recorded on its directory, so the pool can
// answer for it without the driver's store. trusted.* is invisible and
// immutable to the unprivileged workload; user.* is the fallback for
// unprivileged runs (tests).
var capacityXattrs = []string{"trusted.cairn.capacity", "user.cairn.capacity"}

func setRecordedCapacity(dir string, n int64) error {
	var err error
	for _, name := range capacityXattrs {
		if err = unix.Setxattr(dir, name, []byte(strconv.FormatInt(n, 10)), 0); err == nil {
			return nil
		}
	}
	return fmt.Errorf("record capacity on %s: %w", dir, err)
}

func recordedCapacity(dir string) (int64, error) {
	buf := make([]byte, 32)
	var err error
	for _, name := range capacityXattrs {
		var n int
		if n, err = unix.Getxattr(dir, name, buf); err == nil {
			return strconv.ParseInt(string(buf[:n]), 10, 64)
		}
	}
	return 0, fmt.Errorf("read recorded capacity of %s: %w", dir, err)
}
