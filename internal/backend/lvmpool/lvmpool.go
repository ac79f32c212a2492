//go:build linux

package lvmpool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/backend/staging"
	"github.com/cairn-csi/cairn/internal/crashpoint"
	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/luks"
)

// Type is the pool type name.
const Type = "lvm"

// Tags mark the LVs Cairn owns. Reconcile and every lookup look only at
// LVs that carry TagOwner and this pool's TagPool: an LV without them is
// someone else's, whatever its name.
const (
	TagOwner   = "cairn.csi.dev"
	TagPool    = "cairn.csi.dev/pool"    // =VG or =VG/THINPOOL
	TagKind    = "cairn.csi.dev/kind"    // =volume or =snapshot
	TagSource  = "cairn.csi.dev/source"  // a snapshot's volume ID
	TagCreated = "cairn.csi.dev/created" // a snapshot's creation time, Unix seconds
	// TagEncryption=luks2 marks an LV that starts with a LUKS2 header
	// (luks.HeaderBytes) Cairn wrote: the volume's capacity is the LV's
	// size less the header. Snapshots, restores and clones carry it on.
	TagEncryption  = "cairn.csi.dev/encryption"
	encryptionLUKS = "luks2"
	kindVolume     = "volume"
	kindSnapshot   = "snapshot"
)

// Defaults for Options.
const (
	DefaultOverProvisionRatio = 1.0
	DefaultFullPercent        = 90.0
)

// Options tune a pool. The zero value means the defaults.
type Options struct {
	// OverProvisionRatio lets the sum of a thin pool's volume sizes reach
	// this multiple of the thin pool's size (1: no over-provisioning).
	// Thick pools ignore it.
	OverProvisionRatio float64
	// FullPercent is the thin pool data or metadata use, in percent, at or
	// above which new volumes, clones and snapshots are refused, so that
	// the pool is never driven into overflow by Cairn. Thick pools ignore it.
	FullPercent float64
	// Run runs lvm2 commands; nil is ExecRunner.
	Run Runner
	// Log may be nil.
	Log *slog.Logger
}

// Pool is an LVM pool of thick (linear) volumes; *ThinPool embeds it for
// thin volumes. Snapshots, restores and clones exist only on *ThinPool, so
// that a thick pool does not implement backend.Snapshotter and the driver
// refuses those calls with a clear error naming the pool type.
type Pool struct {
	vg, thin string // thin is "" for a thick pool
	spec     string // VG or VG/THIN, as configured: the TagPool value
	opts     Options
	run      Runner
	log      *slog.Logger
	// vgLock serialises the check-then-create sequences on one VG: the
	// free-space check and the lvcreate that uses the space, across every
	// pool on that VG. lvm2's own VG lock covers each command, not the pair.
	vgLock *sync.Mutex
	warned sync.Map // thin pool warnings logged once per state
}

// ThinPool is an LVM thin pool: thin volumes with O(1) thin snapshots,
// restores and clones.
type ThinPool struct{ *Pool }

var (
	_ backend.Backend        = (*Pool)(nil)
	_ backend.Expander       = (*Pool)(nil)
	_ backend.Backend        = (*ThinPool)(nil)
	_ backend.Snapshotter    = (*ThinPool)(nil)
	_ backend.ContentCreator = (*ThinPool)(nil)
)

var _ backend.BlockCapable = (*Pool)(nil)

var (
	vgLocksMu sync.Mutex
	vgLocks   = map[string]*sync.Mutex{}
)

func lockFor(vg string) *sync.Mutex {
	vgLocksMu.Lock()
	defer vgLocksMu.Unlock()
	if vgLocks[vg] == nil {
		vgLocks[vg] = &sync.Mutex{}
	}
	return vgLocks[vg]
}

// lvmName is what lvm2 accepts as a VG or LV name. Cairn also keeps
// room for the staging prefixes within lvm2's 127-character limit.
var lvmName = regexp.MustCompile(`^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,119}$`)

// ParseSpec splits a pool path "VG" (thick) or "VG/THINPOOL" (thin).
func ParseSpec(spec string) (vg, thin string, err error) {
	vg, thin, _ = strings.Cut(spec, "/")
	if !lvmName.MatchString(vg) || vg == "." || vg == ".." {
		return "", "", fmt.Errorf("lvm pool %q: want VG or VG/THINPOOL with lvm2 names: %w", spec, errdefs.ErrInvalidArgument)
	}
	if strings.Contains(spec, "/") && (!lvmName.MatchString(thin) || thin == "." || thin == "..") {
		return "", "", fmt.Errorf("lvm pool %q: thin pool name %q is not an lvm2 name: %w", spec, thin, errdefs.ErrInvalidArgument)
	}
	return vg, thin, nil
}

// New opens the LVM pool spec ("VG" or "VG/THINPOOL"). The VG, and the
// thin pool if named, must exist: Cairn never creates or removes them. The
// result is a *ThinPool or a *Pool.
func New(ctx context.Context, spec string, opts Options) (backend.Backend, error) {
	vg, thin, err := ParseSpec(spec)
	if err != nil {
		return nil, err
	}
	if opts.OverProvisionRatio == 0 {
		opts.OverProvisionRatio = DefaultOverProvisionRatio
	}
	if opts.FullPercent == 0 {
		opts.FullPercent = DefaultFullPercent
	}
	if opts.OverProvisionRatio < 1 || math.IsInf(opts.OverProvisionRatio, 0) || math.IsNaN(opts.OverProvisionRatio) {
		return nil, fmt.Errorf("lvm pool %s: over-provisioning ratio %v must be at least 1: %w", spec, opts.OverProvisionRatio, errdefs.ErrInvalidArgument)
	}
	if opts.FullPercent <= 0 || opts.FullPercent > 100 {
		return nil, fmt.Errorf("lvm pool %s: full threshold %v%% must be in (0, 100]: %w", spec, opts.FullPercent, errdefs.ErrInvalidArgument)
	}
	if opts.Run == nil {
		opts.Run = ExecRunner
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	p := &Pool{vg: vg, thin: thin, spec: spec, opts: opts, run: opts.Run, log: opts.Log, vgLock: lockFor(vg)}
	if err := p.Check(ctx); err != nil {
		return nil, err
	}
	if thin == "" {
		p.log.Info("lvm pool: thick (linear) volumes; snapshots and clones are not available", "vg", vg)
		return p, nil
	}
	p.log.Info("lvm pool: thin volumes; snapshots, restores and clones are thin snapshots (O(1))",
		"vg", vg, "thinPool", thin, "overProvisionRatio", opts.OverProvisionRatio, "fullPercent", opts.FullPercent)
	return &ThinPool{p}, nil
}

// Type implements backend.Backend.
func (p *Pool) Type() string { return Type }

// SupportsBlock reports that LVs can be consumed as raw block devices.
func (p *Pool) SupportsBlock() bool { return true }

// VG and ThinPool name what the pool manages.
func (p *Pool) VG() string       { return p.vg }
func (p *Pool) ThinPool() string { return p.thin }

func (p *Pool) lvs(ctx context.Context, target string) ([]LV, error) {
	args := append(slices.Clone(reportArgs), "-o", lvFields, target)
	out, err := p.run(ctx, "lvs", args...)
	if err != nil {
		return nil, err
	}
	return ParseLVs(out)
}

// A view caches the VG's LV listing for the length of one call, so that
// the checks before a change (does the LV exist, is it ours, is there a
// leftover, how full is the thin pool) cost one lvs instead of one each:
// under load every lvm2 command costs a second or more. Any command that
// changes the VG (mutate) drops the cache.
type viewKey struct{}

type view struct {
	lvs   []LV
	valid bool
}

func withView(ctx context.Context) context.Context {
	if _, ok := ctx.Value(viewKey{}).(*view); ok {
		return ctx
	}
	return context.WithValue(ctx, viewKey{}, &view{})
}

// all lists the VG's LVs, from the call's view when it has one.
func (p *Pool) all(ctx context.Context) ([]LV, error) {
	v, _ := ctx.Value(viewKey{}).(*view)
	if v != nil && v.valid {
		return v.lvs, nil
	}
	lvs, err := p.lvs(ctx, p.vg)
	if err != nil {
		return nil, fmt.Errorf("lvm pool %s: %w", p.spec, err)
	}
	if v != nil {
		v.lvs, v.valid = lvs, true
	}
	return lvs, nil
}

// mutate runs an lvm2 command that changes the VG.
func (p *Pool) mutate(ctx context.Context, name string, args ...string) error {
	if v, _ := ctx.Value(viewKey{}).(*view); v != nil {
		v.valid = false
	}
	_, err := p.run(ctx, name, args...)
	return err
}

// get returns LV name of the VG; ok is false if there is none.
func (p *Pool) get(ctx context.Context, name string) (LV, bool, error) {
	lvs, err := p.all(ctx)
	if err != nil {
		return LV{}, false, err
	}
	for _, lv := range lvs {
		if lv.Name == name {
			return lv, true, nil
		}
	}
	return LV{}, false, nil
}

// owned returns the LV name if it is this pool's LV of kind.
func (p *Pool) owned(ctx context.Context, name, kind string) (LV, bool, error) {
	lv, ok, err := p.get(ctx, name)
	if err != nil || !ok {
		return lv, false, err
	}
	if !p.ours(lv) {
		return lv, false, fmt.Errorf("LV %s/%s exists but is not Cairn's (no %s tags for pool %s); Cairn leaves it alone: %w",
			p.vg, name, TagOwner, p.spec, errdefs.ErrAlreadyExists)
	}
	if k, _ := lv.Tag(TagKind); k != kind {
		return lv, false, nil
	}
	return lv, true, nil
}

func (p *Pool) ours(lv LV) bool {
	v, _ := lv.Tag(TagPool)
	return lv.HasTag(TagOwner) && v == p.spec
}

func (p *Pool) tags(kind string, extra ...string) []string {
	out := []string{"--addtag", TagOwner, "--addtag", TagPool + "=" + p.spec, "--addtag", TagKind + "=" + kind}
	for _, e := range extra {
		out = append(out, "--addtag", e)
	}
	return out
}

// checkName refuses IDs lvm2 cannot use as LV names.
func checkName(id string) error {
	if !lvmName.MatchString(id) || id == "." || id == ".." || strings.HasPrefix(id, staging.NewPrefix) || strings.HasPrefix(id, staging.RmPrefix) {
		return fmt.Errorf("ID %q cannot name an LVM logical volume (letters, digits, + _ . -, at most 120): %w", id, errdefs.ErrInvalidArgument)
	}
	return nil
}

// Check implements backend.Backend: the VG exists and is complete, and the
// thin pool, if any, exists and is a thin pool. The error says exactly
// which of these is missing.
func (p *Pool) Check(ctx context.Context) error {
	vg, err := p.vgInfo(ctx)
	if err != nil {
		return err
	}
	if vg.Partial() {
		return fmt.Errorf("lvm pool %s: volume group %s is missing physical volumes (vg_attr %s): %w", p.spec, p.vg, vg.Attr, errdefs.ErrUnavailable)
	}
	if p.thin == "" {
		return nil
	}
	tp, err := p.thinPool(ctx)
	if err != nil {
		return err
	}
	if !tp.PoolZeros {
		p.warnOnce("nozero", "lvm pool: the thin pool does not zero new blocks (lvchange -Zy): a new volume can read data of deleted ones", "thinPool", p.spec)
	}
	if full, what, pct := p.overFull(tp); full {
		p.warnOnce("full", "lvm pool: thin pool nearly full; new volumes and snapshots are refused", "thinPool", p.spec, "which", what, "percent", pct, "limit", p.opts.FullPercent)
	} else {
		p.warned.Delete("full")
	}
	return nil
}

func (p *Pool) warnOnce(key, msg string, args ...any) {
	if _, loaded := p.warned.LoadOrStore(key, true); !loaded {
		p.log.Warn(msg, args...)
	}
}

func (p *Pool) vgInfo(ctx context.Context) (VG, error) {
	args := append(slices.Clone(reportArgs), "-o", vgFields, p.vg)
	out, err := p.run(ctx, "vgs", args...)
	if errdefs.Is(err, errdefs.ErrNotFound) {
		return VG{}, fmt.Errorf("lvm pool %s: volume group %q not found (Cairn never creates one: vgcreate %s <PVs>, see docs/operations.md): %w", p.spec, p.vg, p.vg, errdefs.ErrFailedPrecondition)
	}
	if err != nil {
		return VG{}, fmt.Errorf("lvm pool %s: %w", p.spec, err)
	}
	vgs, err := ParseVGs(out)
	if err != nil {
		return VG{}, err
	}
	for _, v := range vgs {
		if v.Name == p.vg {
			return v, nil
		}
	}
	return VG{}, fmt.Errorf("lvm pool %s: volume group %q not in the vgs report: %w", p.spec, p.vg, errdefs.ErrFailedPrecondition)
}

func (p *Pool) thinPool(ctx context.Context) (LV, error) {
	tp, ok, err := p.get(ctx, p.thin)
	if err != nil {
		return LV{}, fmt.Errorf("lvm pool %s: %w", p.spec, err)
	}
	if !ok {
		return LV{}, fmt.Errorf("lvm pool %s: volume group %s has no LV %q (Cairn never creates thin pools: lvcreate --type thin-pool -L SIZE -n %s %s, see docs/operations.md): %w",
			p.spec, p.vg, p.thin, p.thin, p.vg, errdefs.ErrFailedPrecondition)
	}
	if tp.SegType != "thin-pool" {
		return LV{}, fmt.Errorf("lvm pool %s: %s/%s is a %s LV, not a thin pool: %w", p.spec, p.vg, p.thin, tp.SegType, errdefs.ErrFailedPrecondition)
	}
	if tp.Partial() {
		return LV{}, fmt.Errorf("lvm pool %s: thin pool %s/%s is partial (missing physical volumes): %w", p.spec, p.vg, p.thin, errdefs.ErrUnavailable)
	}
	return tp, nil
}

// overFull reports whether the thin pool's data or metadata use has
// reached the refusal threshold.
func (p *Pool) overFull(tp LV) (bool, string, float64) {
	switch {
	case tp.DataPct >= p.opts.FullPercent:
		return true, "data", tp.DataPct
	case tp.MetaPct >= p.opts.FullPercent:
		return true, "metadata", tp.MetaPct
	}
	return false, "", 0
}

// Capacity implements backend.Backend. A thick pool has the VG's free
// extents. A thin pool has its size times the over-provisioning ratio,
// less the sizes of the thin volumes in it (snapshots share their origin's
// blocks and are not counted); nothing at all once its data or metadata
// use reaches the full threshold.
func (p *Pool) Capacity(ctx context.Context) (backend.Capacity, error) {
	ctx = withView(ctx)
	if p.thin == "" {
		vg, err := p.vgInfo(ctx)
		if err != nil {
			return backend.Capacity{}, err
		}
		return backend.Capacity{TotalBytes: vg.Size, AvailableBytes: vg.Free, MaxVolumeBytes: vg.Free, Enforced: true}, nil
	}
	c, _, err := p.thinCapacity(ctx)
	return c, err
}

// thinCapacity is Capacity for a thin pool, and the thin pool's row.
func (p *Pool) thinCapacity(ctx context.Context) (backend.Capacity, LV, error) {
	tp, err := p.thinPool(ctx)
	if err != nil {
		return backend.Capacity{}, tp, err
	}
	all, err := p.all(ctx)
	if err != nil {
		return backend.Capacity{}, tp, err
	}
	var provisioned int64
	for _, lv := range all {
		if lv.SegType != "thin" || lv.PoolLV != p.thin {
			continue
		}
		if k, _ := lv.Tag(TagKind); k == kindSnapshot && p.ours(lv) {
			continue
		}
		provisioned += lv.Size
	}
	total := int64(float64(tp.Size) * p.opts.OverProvisionRatio)
	avail := max(total-provisioned, 0)
	if full, _, _ := p.overFull(tp); full {
		avail = 0
	}
	return backend.Capacity{TotalBytes: total, AvailableBytes: avail, MaxVolumeBytes: avail, Enforced: true}, tp, nil
}

// room refuses a new volume of size bytes (or, with size 0, a snapshot)
// that the pool cannot hold. The caller holds vgLock.
func (p *Pool) room(ctx context.Context, size int64) error {
	if p.thin == "" {
		vg, err := p.vgInfo(ctx)
		if err != nil {
			return err
		}
		if size > vg.Free {
			return fmt.Errorf("volume group %s has %d bytes free, %d needed: %w", p.vg, vg.Free, size, errdefs.ErrResourceExhausted)
		}
		return nil
	}
	c, tp, err := p.thinCapacity(ctx)
	if err != nil {
		return err
	}
	if full, what, pct := p.overFull(tp); full {
		return fmt.Errorf("thin pool %s is %.1f%% full (%s), at or above the %.0f%% limit: extend it (lvextend) or free space before creating more: %w",
			p.spec, pct, what, p.opts.FullPercent, errdefs.ErrResourceExhausted)
	}
	if size > c.AvailableBytes {
		return fmt.Errorf("thin pool %s can provision %d more bytes (size %d x over-provisioning ratio %g, less what its volumes have), %d needed: %w",
			p.spec, c.AvailableBytes, tp.Size, p.opts.OverProvisionRatio, size, errdefs.ErrResourceExhausted)
	}
	return nil
}

// roundSize returns the LV size for a request of want bytes, at least
// floor and at most limit (0: none), in whole extents: lvm2 allocates
// nothing smaller, so the capacity reported is exactly the LV's.
func roundSize(want, floor, limit, extent int64) (int64, error) {
	if extent <= 0 {
		return 0, fmt.Errorf("extent size %d: %w", extent, errdefs.ErrFailedPrecondition)
	}
	n := max(want, floor, extent)
	if n > math.MaxInt64-extent {
		return 0, fmt.Errorf("%d bytes is too large for an LV: %w", n, errdefs.ErrOutOfRange)
	}
	n = (n + extent - 1) / extent * extent
	if limit > 0 && n > limit {
		return 0, fmt.Errorf("LV sizes are whole %d-byte extents: %d bytes rounds up to %d, above limit_bytes %d: %w", extent, max(want, floor), n, limit, errdefs.ErrOutOfRange)
	}
	return n, nil
}

func (p *Pool) extentSize(ctx context.Context) (int64, error) {
	if lvs, err := p.all(ctx); err == nil && len(lvs) > 0 && lvs[0].ExtentSz > 0 {
		return lvs[0].ExtentSz, nil
	}
	vg, err := p.vgInfo(ctx)
	return vg.ExtentSz, err
}

func bytesArg(n int64) string { return strconv.FormatInt(n, 10) + "b" }

// CreateVolume implements backend.Backend. The LV is created as
// new-<id> with Cairn's tags, renamed to <id>, and then committed; a
// crash leaves a new-* LV (or an uncommitted <id>) that Reconcile removes.
func (p *Pool) CreateVolume(ctx context.Context, id string, spec backend.Spec, commit func(backend.Volume) error) (backend.Volume, error) {
	ctx = withView(ctx)
	if err := checkName(id); err != nil {
		return backend.Volume{}, fmt.Errorf("create volume: %w", err)
	}
	ext, err := p.extentSize(ctx)
	if err != nil {
		return backend.Volume{}, err
	}
	var header int64
	var extra []string
	if spec.Encryption != nil {
		if err := p.CanEncrypt(ctx); err != nil {
			return backend.Volume{}, err
		}
		header, extra = luks.HeaderBytes, []string{TagEncryption + "=" + encryptionLUKS}
	}
	size, err := lvSize(spec.CapacityBytes, 0, spec.LimitBytes, header, ext)
	if err != nil {
		return backend.Volume{}, fmt.Errorf("create volume %s: %w", id, err)
	}
	return p.create(ctx, id, spec, size, func(ctx context.Context, tmp string) error {
		args := []string{"--yes", "--quiet", "--name", tmp}
		if p.thin != "" {
			args = append(args, "--virtualsize", bytesArg(size), "--thin", "--setactivationskip", "n")
		} else {
			// A thick LV reuses extents of deleted ones: wipe signatures so
			// that the node's format-if-blank never mounts a stale filesystem.
			args = append(args, "--size", bytesArg(size), "--wipesignatures", "y", "--zero", "y")
		}
		args = append(args, p.tags(kindVolume, extra...)...)
		args = append(args, p.lvTarget())
		if err := p.mutate(ctx, "lvcreate", args...); err != nil {
			return err
		}
		if spec.Encryption != nil {
			return luks.FormatVolume(ctx, p.device(tmp), spec.Encryption.Key)
		}
		return nil
	}, commit)
}

// lvTarget is where lvcreate makes a new volume.
func (p *Pool) lvTarget() string {
	if p.thin != "" {
		return p.vg + "/" + p.thin
	}
	return p.vg
}

// create runs the staged create of volume id of size bytes with build, or
// for a volume already in place (a retry) checks it fits spec and commits.
func (p *Pool) create(ctx context.Context, id string, spec backend.Spec, size int64, build func(ctx context.Context, tmp string) error, commit func(backend.Volume) error) (backend.Volume, error) {
	p.vgLock.Lock()
	defer p.vgLock.Unlock()
	v := backend.Volume{ID: id, CapacityBytes: size - specHeader(spec)}
	lv, exists, err := p.owned(ctx, id, kindVolume)
	if err != nil {
		return backend.Volume{}, fmt.Errorf("create volume %s: %w", id, err)
	}
	if !exists && lv.Name != "" {
		return backend.Volume{}, fmt.Errorf("create volume %s: a Cairn snapshot has that name: %w", id, errdefs.ErrAlreadyExists)
	}
	if exists {
		cur := capacity(lv)
		if cur < spec.CapacityBytes || spec.LimitBytes > 0 && cur > spec.LimitBytes {
			return backend.Volume{}, fmt.Errorf("create volume %s: it exists with %d bytes, outside [%d, %d]: %w",
				id, cur, spec.CapacityBytes, spec.LimitBytes, errdefs.ErrAlreadyExists)
		}
		v.CapacityBytes = cur
	} else {
		tmp := staging.NewPrefix + id
		if err := p.removeOwned(ctx, tmp); err != nil { // a leftover of a crashed attempt
			return backend.Volume{}, fmt.Errorf("create volume %s: clear %s: %w", id, tmp, err)
		}
		if err := p.room(ctx, size); err != nil {
			return backend.Volume{}, fmt.Errorf("create volume %s: %w", id, err)
		}
		crashpoint.Hit("create:start")
		if err := build(ctx, tmp); err != nil {
			if rmErr := p.removeOwned(context.WithoutCancel(ctx), tmp); rmErr != nil {
				err = errors.Join(err, fmt.Errorf("clean up %s: %w", tmp, rmErr))
			}
			return backend.Volume{}, fmt.Errorf("create volume %s: %w", id, err)
		}
		if err := p.rename(ctx, tmp, id); err != nil {
			return backend.Volume{}, fmt.Errorf("create volume %s: %w", id, err)
		}
	}
	crashpoint.Hit("create:renamed")
	if err := commit(v); err != nil {
		if rmErr := p.removeOwned(context.WithoutCancel(ctx), id); rmErr != nil {
			err = errors.Join(err, fmt.Errorf("roll back %s: %w", id, rmErr))
		}
		return backend.Volume{}, err
	}
	crashpoint.Hit("create:committed")
	return v, nil
}

func (p *Pool) rename(ctx context.Context, from, to string) error {
	err := p.mutate(ctx, "lvrename", "--quiet", p.vg, from, to)
	return err
}

// removeOwned removes LV name if it is this pool's; a missing LV is not an
// error, and an LV that is not Cairn's is never removed.
func (p *Pool) removeOwned(ctx context.Context, name string) error {
	lv, ok, err := p.get(ctx, name)
	if err != nil || !ok {
		return err
	}
	if !p.ours(lv) {
		return fmt.Errorf("LV %s/%s is not Cairn's; not removing it: %w", p.vg, name, errdefs.ErrFailedPrecondition)
	}
	err = p.mutate(ctx, "lvremove", "--yes", "--quiet", p.vg+"/"+name)
	return err
}

// DeleteVolume implements backend.Backend: rename to rm-<id>, commit,
// then lvremove. A thin volume's snapshots are independent thin LVs and
// stay.
func (p *Pool) DeleteVolume(ctx context.Context, id string, commit func() error) error {
	return p.delete(ctx, id, kindVolume, commit)
}

func (p *Pool) delete(ctx context.Context, id, kind string, commit func() error) error {
	ctx = withView(ctx)
	if checkName(id) != nil {
		return commit() // no LV can have this name
	}
	lv, ok, err := p.owned(ctx, id, kind)
	if errdefs.Is(err, errdefs.ErrAlreadyExists) {
		// Not Cairn's: never touched. The store's record goes.
		p.log.Warn("lvm pool: delete of an ID whose LV is not Cairn's; the LV is left alone", "lv", p.vg+"/"+id)
		return commit()
	}
	if err != nil {
		return fmt.Errorf("delete %s %s: %w", kind, id, err)
	}
	doomed := staging.RmPrefix + id
	renamed := false
	if ok {
		if lv.Active && kind == kindVolume {
			// Deactivate first: an LV still open (mounted, in use) fails
			// here, before anything changed, rather than after the commit.
			if err := p.mutate(ctx, "lvchange", "--quiet", "--activate", "n", p.vg+"/"+id); err != nil {
				return fmt.Errorf("delete %s %s: deactivate (is it still staged or open?): %w", kind, id, err)
			}
		}
		if err := p.rename(ctx, id, doomed); err != nil {
			return fmt.Errorf("delete %s %s: %w", kind, id, err)
		}
		renamed = true
	}
	crashpoint.Hit("delete:renamed")
	if err := commit(); err != nil {
		if renamed {
			if rbErr := p.rename(context.WithoutCancel(ctx), doomed, id); rbErr != nil {
				err = errors.Join(err, fmt.Errorf("roll back rename: %w", rbErr))
			} else if lv.Active {
				p.activate(context.WithoutCancel(ctx), id)
			}
		}
		return err
	}
	crashpoint.Hit("delete:committed")
	if renamed {
		// Ours: this call tagged-checked and renamed it.
		if err := p.mutate(ctx, "lvremove", "--yes", "--quiet", p.vg+"/"+doomed); err != nil {
			return fmt.Errorf("removing %s/%s after commit (reconcile will retry): %w", p.vg, doomed, err)
		}
	}
	return nil
}

func (p *Pool) activate(ctx context.Context, name string) error {
	err := p.mutate(ctx, "lvchange", "--quiet", "--activate", "y", "--ignoreactivationskip", p.vg+"/"+name)
	return err
}

// Source implements backend.Backend: the LV's device node, and whether it
// starts with Cairn's LUKS header. It only looks: an inactive LV's node
// does not exist until NodeStageVolume activates it (Activate). A partial
// one (a physical volume missing) is refused.
func (p *Pool) Source(ctx context.Context, id string) (backend.Source, error) {
	if checkName(id) != nil {
		return backend.Source{}, fmt.Errorf("volume %s in pool %s: %w", id, p.spec, errdefs.ErrNotFound)
	}
	lv, ok, err := p.owned(ctx, id, kindVolume)
	if errdefs.Is(err, errdefs.ErrAlreadyExists) || err == nil && !ok {
		return backend.Source{}, fmt.Errorf("volume %s in pool %s: %w", id, p.spec, errdefs.ErrNotFound)
	}
	if err != nil {
		return backend.Source{}, err
	}
	if lv.Partial() {
		return backend.Source{}, fmt.Errorf("volume %s: LV %s/%s is partial (a physical volume is missing): %w", id, p.vg, id, errdefs.ErrUnavailable)
	}
	return backend.Source{Kind: backend.SourceBlockDevice, Path: p.device(id), LUKS: headerOf(lv) > 0}, nil
}

// device is LV name's device node (a symlink lvm2 keeps while it is active).
func (p *Pool) device(name string) string { return "/dev/" + p.vg + "/" + name }

// Usage implements backend.Backend for the LV: a thin LV uses what its
// mapped blocks hold (data_percent of its size); a thick LV has all its
// extents allocated. The filesystem inside is the node's business.
func (p *Pool) Usage(ctx context.Context, id string) (backend.Usage, error) {
	if checkName(id) != nil {
		return backend.Usage{}, fmt.Errorf("volume %s: %w", id, errdefs.ErrNotFound)
	}
	lv, ok, err := p.owned(ctx, id, kindVolume)
	if errdefs.Is(err, errdefs.ErrAlreadyExists) || err == nil && !ok {
		return backend.Usage{}, fmt.Errorf("volume %s in pool %s: %w", id, p.spec, errdefs.ErrNotFound)
	}
	if err != nil {
		return backend.Usage{}, err
	}
	total := capacity(lv)
	if p.thin == "" {
		return backend.Usage{TotalBytes: total, UsedBytes: total}, nil
	}
	used := min(int64(float64(lv.Size)*lv.DataPct/100), total)
	return backend.Usage{TotalBytes: total, UsedBytes: used, AvailableBytes: total - used}, nil
}

// ExpandVolume implements backend.Expander with lvextend. The filesystem
// inside is grown by the node (NodeExpandVolume), online.
func (p *Pool) ExpandVolume(ctx context.Context, id string, newBytes int64) (int64, error) {
	ctx = withView(ctx)
	if checkName(id) != nil {
		return 0, fmt.Errorf("volume %s: %w", id, errdefs.ErrNotFound)
	}
	p.vgLock.Lock()
	defer p.vgLock.Unlock()
	lv, ok, err := p.owned(ctx, id, kindVolume)
	if errdefs.Is(err, errdefs.ErrAlreadyExists) || err == nil && !ok {
		return 0, fmt.Errorf("volume %s in pool %s: %w", id, p.spec, errdefs.ErrNotFound)
	}
	if err != nil {
		return 0, err
	}
	header := headerOf(lv)
	want, err := lvSize(newBytes, 0, 0, header, lv.ExtentSz)
	if err != nil {
		return 0, fmt.Errorf("expand volume %s: %w", id, err)
	}
	if want <= lv.Size {
		return capacity(lv), nil
	}
	if err := p.room(ctx, want-lv.Size); err != nil {
		return 0, fmt.Errorf("expand volume %s: %w", id, err)
	}
	if err := p.mutate(ctx, "lvextend", "--quiet", "--size", bytesArg(want), p.vg+"/"+id); err != nil {
		return 0, fmt.Errorf("expand volume %s to %d bytes: %w", id, want, err)
	}
	return want - header, nil
}

// Reconcile implements backend.Backend over this pool's tagged LVs only:
// staged leftovers (new-*, rm-*) and LVs the store does not know are
// removed, an rm-<id> of a known ID (a delete that died before its
// commit) is renamed back, and known IDs without an LV are reported.
func (p *Pool) Reconcile(ctx context.Context, inv backend.Inventory) (backend.Report, error) {
	var rep backend.Report
	all, err := p.lvs(ctx, p.vg)
	if err != nil {
		return rep, fmt.Errorf("reconcile lvm pool %s: %w", p.spec, err)
	}
	names := map[string]bool{}
	for _, lv := range all {
		names[lv.Name] = true
	}
	present := map[string]bool{}
	for _, lv := range all {
		if !p.ours(lv) {
			continue // never touch an LV that is not Cairn's
		}
		kind, _ := lv.Tag(TagKind)
		known := inv.Volumes
		if kind == kindSnapshot {
			known = inv.Snapshots
		}
		if known[lv.Name] {
			present[kind+"/"+lv.Name] = true
			continue
		}
		if id, ok := strings.CutPrefix(lv.Name, staging.RmPrefix); ok && known[id] && !names[id] {
			if err := p.rename(ctx, lv.Name, id); err != nil {
				rep.Errors = append(rep.Errors, fmt.Sprintf("%s/%s: roll back uncommitted delete: %v", p.vg, lv.Name, err))
				continue
			}
			present[kind+"/"+id] = true
			continue
		}
		if err := p.mutate(ctx, "lvremove", "--yes", "--quiet", p.vg+"/"+lv.Name); err != nil {
			rep.Errors = append(rep.Errors, fmt.Sprintf("%s/%s: %v", p.vg, lv.Name, err))
			continue
		}
		rep.Removed = append(rep.Removed, p.vg+"/"+lv.Name)
	}
	for _, part := range []struct {
		kind  string
		known map[string]bool
	}{{kindVolume, inv.Volumes}, {kindSnapshot, inv.Snapshots}} {
		for id := range part.known {
			if !present[part.kind+"/"+id] {
				rep.Missing = append(rep.Missing, id)
			}
		}
	}
	sort.Strings(rep.Missing)
	return rep, nil
}

// CreateSnapshot implements backend.Snapshotter: a thin snapshot, O(1)
// whatever the data size. lvm2 suspends the origin around it, and a
// suspend freezes a mounted filesystem first (lockfs), so a snapshot of a
// live volume holds a consistent filesystem. Snapshots keep lvm2's
// activation-skip flag: they take no device-mapper device until restored.
func (p *ThinPool) CreateSnapshot(ctx context.Context, snapID, volID string, commit func(backend.Snapshot) error) (backend.Snapshot, error) {
	ctx = withView(ctx)
	s := backend.Snapshot{ID: snapID, VolumeID: volID}
	if err := checkName(snapID); err != nil {
		return s, fmt.Errorf("create snapshot: %w", err)
	}
	p.vgLock.Lock()
	defer p.vgLock.Unlock()
	lv, exists, err := p.owned(ctx, snapID, kindSnapshot)
	if err != nil {
		return s, fmt.Errorf("create snapshot %s: %w", snapID, err)
	}
	if !exists && lv.Name != "" {
		return s, fmt.Errorf("create snapshot %s: a Cairn volume has that name: %w", snapID, errdefs.ErrAlreadyExists)
	}
	if exists {
		if of, _ := lv.Tag(TagSource); of != volID {
			return s, fmt.Errorf("snapshot %s exists of volume %s, not %s: %w", snapID, of, volID, errdefs.ErrAlreadyExists)
		}
		s.SizeBytes, s.CreatedAt = capacity(lv), createdAt(lv)
	} else {
		if checkName(volID) != nil {
			return s, fmt.Errorf("create snapshot %s: volume %s: %w", snapID, volID, errdefs.ErrNotFound)
		}
		src, ok, err := p.owned(ctx, volID, kindVolume)
		if errdefs.Is(err, errdefs.ErrAlreadyExists) || err == nil && !ok {
			return s, fmt.Errorf("create snapshot %s: volume %s in pool %s: %w", snapID, volID, p.spec, errdefs.ErrNotFound)
		}
		if err != nil {
			return s, err
		}
		if err := p.room(ctx, 0); err != nil {
			return s, fmt.Errorf("create snapshot %s: %w", snapID, err)
		}
		s.SizeBytes, s.CreatedAt = capacity(src), time.Now().Truncate(time.Second)
		tmp := staging.NewPrefix + snapID
		if err := p.removeOwned(ctx, tmp); err != nil {
			return s, fmt.Errorf("create snapshot %s: clear %s: %w", snapID, tmp, err)
		}
		crashpoint.Hit("create:start")
		args := []string{"--yes", "--quiet", "--snapshot", "--setactivationskip", "y", "--name", tmp}
		extra := []string{TagSource + "=" + volID, TagCreated + "=" + strconv.FormatInt(s.CreatedAt.Unix(), 10)}
		if headerOf(src) > 0 { // ciphertext, under the volume's key slot
			extra = append(extra, TagEncryption+"="+encryptionLUKS)
		}
		args = append(args, p.tags(kindSnapshot, extra...)...)
		args = append(args, p.vg+"/"+volID)
		if err := p.mutate(ctx, "lvcreate", args...); err != nil {
			if rmErr := p.removeOwned(context.WithoutCancel(ctx), tmp); rmErr != nil {
				err = errors.Join(err, rmErr)
			}
			return backend.Snapshot{}, fmt.Errorf("create snapshot %s of %s: %w", snapID, volID, err)
		}
		if err := p.rename(ctx, tmp, snapID); err != nil {
			return backend.Snapshot{}, fmt.Errorf("create snapshot %s: %w", snapID, err)
		}
	}
	crashpoint.Hit("create:renamed")
	if err := commit(s); err != nil {
		if rmErr := p.removeOwned(context.WithoutCancel(ctx), snapID); rmErr != nil {
			err = errors.Join(err, fmt.Errorf("roll back %s: %w", snapID, rmErr))
		}
		return backend.Snapshot{}, err
	}
	crashpoint.Hit("create:committed")
	return s, nil
}

func createdAt(lv LV) time.Time {
	v, _ := lv.Tag(TagCreated)
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return time.Time{}
	}
	return time.Unix(n, 0)
}

// DeleteSnapshot implements backend.Snapshotter. Volumes restored
// from it are thin LVs of their own and are not affected.
func (p *ThinPool) DeleteSnapshot(ctx context.Context, snapID string, commit func() error) error {
	return p.delete(ctx, snapID, kindSnapshot, commit)
}

// CreateVolumeFrom implements backend.ContentCreator: a writable thin
// snapshot of the snapshot or volume (O(1)), lvextended to the requested
// size. The filesystem inside keeps its size until the node grows it.
func (p *ThinPool) CreateVolumeFrom(ctx context.Context, id string, spec backend.Spec, src backend.ContentSource, commit func(backend.Volume) error) (backend.Volume, error) {
	ctx = withView(ctx)
	if err := checkName(id); err != nil {
		return backend.Volume{}, fmt.Errorf("create volume: %w", err)
	}
	var from, kind string
	switch {
	case src.SnapshotID != "" && src.VolumeID == "":
		from, kind = src.SnapshotID, kindSnapshot
	case src.VolumeID != "" && src.SnapshotID == "":
		from, kind = src.VolumeID, kindVolume
	default:
		return backend.Volume{}, fmt.Errorf("a content source names one snapshot or one volume, not %+v: %w", src, errdefs.ErrInvalidArgument)
	}
	if checkName(from) != nil {
		return backend.Volume{}, fmt.Errorf("create volume %s: %s %s: %w", id, kind, from, errdefs.ErrNotFound)
	}
	fromLV, ok, err := p.owned(ctx, from, kind)
	if errdefs.Is(err, errdefs.ErrAlreadyExists) || err == nil && !ok {
		return backend.Volume{}, fmt.Errorf("create volume %s: %s %s in pool %s: %w", id, kind, from, p.spec, errdefs.ErrNotFound)
	}
	if err != nil {
		return backend.Volume{}, err
	}
	header := headerOf(fromLV)
	if err := checkCopyEncryption(header > 0, spec.Encryption); err != nil {
		return backend.Volume{}, fmt.Errorf("create volume %s: %w", id, err)
	}
	var extra []string
	if header > 0 {
		extra = []string{TagEncryption + "=" + encryptionLUKS}
	}
	size, err := lvSize(spec.CapacityBytes, capacity(fromLV), spec.LimitBytes, header, fromLV.ExtentSz)
	if err != nil {
		return backend.Volume{}, fmt.Errorf("create volume %s: %w", id, err)
	}
	return p.create(ctx, id, spec, size, func(ctx context.Context, tmp string) error {
		args := []string{"--yes", "--quiet", "--snapshot", "--setactivationskip", "n", "--name", tmp}
		args = append(args, p.tags(kindVolume, extra...)...)
		args = append(args, p.vg+"/"+from)
		if err := p.mutate(ctx, "lvcreate", args...); err != nil {
			return err
		}
		if size > fromLV.Size {
			// lvcreate activated it (activation skip is off).
			if err := p.mutate(ctx, "lvextend", "--quiet", "--size", bytesArg(size), p.vg+"/"+tmp); err != nil {
				return err
			}
		}
		if header > 0 {
			return luks.MoveCopy(ctx, p.device(tmp), spec.Encryption.SourceKey, spec.Encryption.Key)
		}
		return nil
	}, commit)
}
