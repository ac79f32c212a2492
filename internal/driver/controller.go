package driver

import (
	"context"
	"fmt"
	"maps"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/luks"
	"github.com/cairn-csi/cairn/internal/mkfsopts"
	"github.com/cairn-csi/cairn/internal/mountfd"
	"github.com/cairn-csi/cairn/internal/store"
)

// StorageClass parameters and volume context keys.
const (
	ParamPool        = "pool"
	ParamFsType      = "csi.storage.k8s.io/fstype"
	ParamMkfsOptions = "mkfsOptions"

	ctxPool             = "cairn.csi.dev/pool"
	ctxFsType           = "cairn.csi.dev/fsType"
	ctxMkfsOptions      = "cairn.csi.dev/mkfsOptions"
	ctxCapacityEnforced = "cairn.csi.dev/capacityEnforced"
)

// k8sMetadataParams are added by external-provisioner's --extra-create-metadata.
var k8sMetadataParams = map[string]bool{
	"csi.storage.k8s.io/pvc/name":      true,
	"csi.storage.k8s.io/pvc/namespace": true,
	"csi.storage.k8s.io/pv/name":       true,
}

var (
	volumeIDPattern   = regexp.MustCompile(`^` + store.VolumePrefix + `[0-9a-f]{16}$`)
	snapshotIDPattern = regexp.MustCompile(`^` + store.SnapshotPrefix + `[0-9a-f]{16}$`)
)

func volKey(id string) string  { return "vol/" + id }
func snapKey(id string) string { return "snap/" + id }

// createParams is a validated CreateVolume parameter set.
type createParams struct {
	pool        string
	fsType      string
	mkfsOptions string
	encrypt     bool
}

func parseCreateParams(params map[string]string) (createParams, error) {
	var p createParams
	if err := checkMap("parameters", params); err != nil {
		return p, err
	}
	for k, v := range params {
		switch {
		case k == ParamPool:
			p.pool = v
		case k == ParamFsType:
			p.fsType = v
		case k == ParamMkfsOptions:
			p.mkfsOptions = v
		case k == ParamEncryption:
			var err error
			if p.encrypt, err = parseEncryption(v); err != nil {
				return p, err
			}
		case k8sMetadataParams[k]:
		default:
			return p, invalid("parameters: unknown parameter %q (known: %s, %s, %s, %s)", truncate(k), ParamPool, ParamFsType, ParamMkfsOptions, ParamEncryption)
		}
	}
	if p.fsType != "" {
		if err := checkFsType("parameters."+ParamFsType, p.fsType); err != nil {
			return p, err
		}
	}
	return p, nil
}

// formatsVolumes reports whether the node formats pool's mount volumes:
// pools of images or block devices (image, lvm), the ones that can serve
// raw block volumes, as opposed to pools of directories.
func formatsVolumes(pool backend.Backend) bool {
	_, images := pool.(backend.ImageFiles)
	return images || backend.SupportsBlock(pool)
}

// checkPoolMountFlags refuses, at create time, mount flags the node would
// refuse at publish: a directory volume takes per-mount options only, an
// image or lvm volume also its filesystem's allow-listed options.
func checkPoolMountFlags(pool backend.Backend, fsType string, caps []*csi.VolumeCapability) error {
	flagFS := ""
	if formatsVolumes(pool) {
		flagFS = firstNonEmpty(fsType, "ext4")
	}
	for i, c := range caps {
		if _, _, err := mountfd.ParseOptions(flagFS, c.GetMount().GetMountFlags()); err != nil {
			return fmt.Errorf("volume_capabilities[%d].mount.mount_flags: %w", i, err)
		}
	}
	return nil
}

func checkFsType(field, fs string) error {
	switch fs {
	case "", "ext4", "xfs", "btrfs":
		return nil
	}
	return invalid("%s %q is not supported (ext4, xfs, btrfs)", field, truncate(fs))
}

// capacityFor applies capacity_range: the result is within [required,
// limit], or OUT_OF_RANGE.
func (d *Driver) capacityFor(r *csi.CapacityRange, min int64) (want, limit int64, err error) {
	req, lim := r.GetRequiredBytes(), r.GetLimitBytes()
	if req < 0 || lim < 0 {
		return 0, 0, invalid("capacity_range must not be negative")
	}
	if lim > 0 && req > lim {
		return 0, 0, fmt.Errorf("capacity_range: required_bytes %d exceeds limit_bytes %d: %w", req, lim, errdefs.ErrOutOfRange)
	}
	want = req
	if want == 0 {
		want = d.cfg.DefaultCapacity
		if lim > 0 && lim < want {
			want = lim
		}
	}
	if want < min {
		want = min
	}
	if lim > 0 && want > lim {
		return 0, 0, fmt.Errorf("capacity_range: limit_bytes %d is below the %d bytes needed: %w", lim, want, errdefs.ErrOutOfRange)
	}
	return want, lim, nil
}

// storeAccess is the store's name for a backend access type.
func storeAccess(a backend.AccessType) store.AccessType {
	if a == backend.AccessBlock {
		return store.AccessBlock
	}
	return store.AccessMount
}

// accessOf returns the access type all capabilities agree on.
func accessOf(caps []*csi.VolumeCapability) (backend.AccessType, string, error) {
	var at backend.AccessType
	fs := ""
	for i, c := range caps {
		this := backend.AccessMount
		if c.GetBlock() != nil {
			this = backend.AccessBlock
		}
		if i > 0 && this != at {
			return 0, "", invalid("volume_capabilities mix block and mount access")
		}
		at = this
		if m := c.GetMount(); m != nil && m.GetFsType() != "" {
			if err := checkFsType(fmt.Sprintf("volume_capabilities[%d].mount.fs_type", i), m.GetFsType()); err != nil {
				return 0, "", err
			}
			fs = m.GetFsType()
		}
	}
	return at, fs, nil
}

// CreateVolume implements csi.ControllerServer.
func (d *Driver) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	return d.createVolume(ctx, req, false)
}

// createVolume is CreateVolume in three steps: checkCreate validates the
// request alone; planCreate, under the name lock, decides everything
// (pool, size, whether the name already answers) without changing
// anything; executeCreate makes the volume. Ephemeral volumes come here
// too, with ephemeral set.
func (d *Driver) createVolume(ctx context.Context, req *csi.CreateVolumeRequest, ephemeral bool) (*csi.CreateVolumeResponse, error) {
	args, err := d.checkCreate(req)
	if err != nil {
		return nil, err
	}
	unlock, err := d.lock("name/" + req.GetName())
	if err != nil {
		return nil, err
	}
	defer unlock()
	src, srcPool, srcSize, unlockSrc, err := d.contentSource(ctx, req.GetVolumeContentSource())
	if err != nil {
		return nil, err
	}
	defer unlockSrc()
	plan, err := d.planCreate(ctx, req, args, src, srcPool, srcSize)
	if err != nil {
		return nil, err
	}
	if plan.existing != nil {
		return &csi.CreateVolumeResponse{Volume: d.csiVolume(ctx, *plan.existing)}, nil
	}
	plan.ephemeral = ephemeral
	return d.executeCreate(ctx, req, plan)
}

// createArgs is what a CreateVolumeRequest asks for, checked on its own.
type createArgs struct {
	params createParams
	access backend.AccessType
	fsType string
	secret []byte // the encryption passphrase; never logged
}

// checkCreate validates a CreateVolumeRequest by itself: no lock, store or
// pool is consulted, so a malformed request costs nothing.
func (d *Driver) checkCreate(req *csi.CreateVolumeRequest) (createArgs, error) {
	var a createArgs
	if err := requireString("name", req.GetName()); err != nil {
		return a, err
	}
	if err := checkCapabilities("volume_capabilities", req.GetVolumeCapabilities()); err != nil {
		return a, err
	}
	params, err := parseCreateParams(req.GetParameters())
	if err != nil {
		return a, err
	}
	if err := checkMap("mutable_parameters", req.GetMutableParameters()); err != nil {
		return a, err
	}
	if len(req.GetMutableParameters()) > 0 {
		return a, invalid("mutable_parameters are not supported")
	}
	access, fsType, err := accessOf(req.GetVolumeCapabilities())
	if err != nil {
		return a, err
	}
	if fsType == "" {
		fsType = params.fsType
	}
	if access == backend.AccessBlock && fsType != "" && params.fsType == "" {
		return a, invalid("fs_type %q makes no sense for block access", fsType)
	}
	if err := d.checkRequisite(req.GetAccessibilityRequirements()); err != nil {
		return a, err
	}
	var secret []byte
	if params.encrypt {
		if secret, err = passphrase(req.GetSecrets()); err != nil {
			return a, err
		}
	}
	if params.mkfsOptions != "" {
		if access == backend.AccessBlock {
			return a, invalid("parameters.%s: a block volume is not formatted", ParamMkfsOptions)
		}
		args, err := mkfsopts.Parse(firstNonEmpty(fsType, "ext4"), params.mkfsOptions)
		if err != nil {
			return a, fmt.Errorf("parameters.%w", err)
		}
		params.mkfsOptions = strings.Join(args, " ")
	}
	return createArgs{params: params, access: access, fsType: fsType, secret: secret}, nil
}

// createPlan is planCreate's decision. Either existing is set (the name
// already answers the request: return it) or the rest says what to make.
type createPlan struct {
	existing *store.Volume

	poolName    string
	pool        backend.Backend
	access      backend.AccessType
	fsType      string
	mkfsOptions string
	encrypt     bool
	secret      []byte
	src         backend.ContentSource
	want, limit int64 // bytes to ask the pool for, and the request's limit
	ephemeral   bool
}

// planCreate decides a create: the pool, whether the pool can serve the
// request, the size, and whether the name already answers it. It only
// reads (the store, the pool's capacity); the caller holds the name lock
// and the source's lock, so the decision holds until executeCreate.
func (d *Driver) planCreate(ctx context.Context, req *csi.CreateVolumeRequest, a createArgs, src backend.ContentSource, srcPool string, srcSize int64) (createPlan, error) {
	p := createPlan{access: a.access, fsType: a.fsType, mkfsOptions: a.params.mkfsOptions, encrypt: a.params.encrypt, secret: a.secret, src: src}
	if srcEncrypted, _, err := d.sourceEncryption(ctx, src); err != nil {
		return p, err
	} else if srcEncrypted && !a.params.encrypt {
		return p, invalid("volume_content_source is encrypted; a volume made from it must set parameters.%s: true", ParamEncryption)
	}
	want := a.params.pool
	if want == "" {
		want = srcPool
	}
	poolName, pool, err := d.pool(want)
	if err != nil {
		return p, err
	}
	p.poolName, p.pool = poolName, pool
	if err := checkPoolFits(ctx, poolName, pool, a, req.GetVolumeCapabilities()); err != nil {
		return p, err
	}
	if srcPool != "" && srcPool != poolName {
		return p, invalid("volume_content_source is in pool %q; a volume made from it must be in the same pool, not %q", srcPool, poolName)
	}
	if p.want, p.limit, err = d.sizeFor(req.GetCapacityRange(), pool, a, srcSize); err != nil {
		return p, err
	}

	// Idempotency: the same name returns the same volume if compatible.
	err = d.store.View(ctx, func(tx *store.Tx) error {
		v, err := tx.VolumeByName(req.GetName())
		if err == nil {
			p.existing = &v
			return nil
		}
		if errdefs.Is(err, errdefs.ErrNotFound) {
			return nil
		}
		return err
	})
	if err != nil {
		return p, err
	}
	if p.existing != nil {
		return p, compatible(*p.existing, poolName, a.access, req, src)
	}

	capy, err := pool.Capacity(ctx)
	if err != nil {
		return p, fmt.Errorf("pool %s: %w", poolName, err)
	}
	if p.want > capy.MaxVolumeBytes {
		return p, fmt.Errorf("pool %s has room for %d bytes, %d requested: %w", poolName, capy.MaxVolumeBytes, p.want, errdefs.ErrResourceExhausted)
	}
	return p, nil
}

// checkPoolFits refuses what the chosen pool cannot do for the request:
// mkfs options on a pool that formats nothing, mount flags it cannot
// honour, encryption it cannot provide.
func checkPoolFits(ctx context.Context, poolName string, pool backend.Backend, a createArgs, caps []*csi.VolumeCapability) error {
	if a.params.mkfsOptions != "" && !formatsVolumes(pool) {
		return invalid("parameters.%s: pool %q (%s) keeps volumes as directories and formats nothing", ParamMkfsOptions, poolName, pool.Type())
	}
	if err := checkPoolMountFlags(pool, a.fsType, caps); err != nil {
		return err
	}
	if a.params.encrypt {
		return checkCanEncrypt(ctx, poolName, pool)
	}
	return nil
}

// sizeFor is the size to create: the capacity range applied over the
// least the volume can be (its source's size, and for a formatted image
// what mkfs needs).
func (d *Driver) sizeFor(r *csi.CapacityRange, pool backend.Backend, a createArgs, srcSize int64) (want, limit int64, err error) {
	if req := r.GetRequiredBytes(); req > 0 && req < srcSize {
		return 0, 0, fmt.Errorf("capacity_range.required_bytes %d is smaller than the source's %d bytes: %w", req, srcSize, errdefs.ErrOutOfRange)
	}
	minBytes := srcSize
	if fsMin := imageFsMinimum(pool, a.access, a.fsType); fsMin > 0 {
		if lim := r.GetLimitBytes(); lim > 0 && lim < fsMin {
			return 0, 0, fmt.Errorf("capacity_range.limit_bytes %d is below the %d bytes mkfs needs for %s in an image volume: %w", lim, fsMin, a.fsType, errdefs.ErrOutOfRange)
		}
		minBytes = max(minBytes, fsMin)
	}
	return d.capacityFor(r, minBytes)
}

// executeCreate makes the volume plan describes: a new ID, its encryption
// key, then the pool's staged create, whose commit writes the record.
func (d *Driver) executeCreate(ctx context.Context, req *csi.CreateVolumeRequest, p createPlan) (*csi.CreateVolumeResponse, error) {
	var id string
	if err := d.store.View(ctx, func(tx *store.Tx) (err error) { id, err = tx.NewID(store.VolumePrefix); return }); err != nil {
		return nil, err
	}
	enc, keyID, unlockEnc, err := d.encryptionFor(ctx, p.pool, p.encrypt, p.secret, id, p.src)
	if err != nil {
		return nil, err
	}
	defer unlockEnc()
	rec := store.Volume{
		ID: id, Name: req.GetName(), Pool: p.poolName, AccessType: storeAccess(p.access),
		FsType: p.fsType, MkfsOptions: p.mkfsOptions, Parameters: req.GetParameters(),
		SourceSnapshotID: p.src.SnapshotID, SourceVolumeID: p.src.VolumeID,
		Ephemeral: p.ephemeral, CreatedAt: time.Now().UTC(), KeyID: keyID,
	}
	if enc != nil {
		rec.Encryption = p.pool.(backend.Encrypter).EncryptionMechanism()
	}
	spec := backend.Spec{CapacityBytes: p.want, LimitBytes: p.limit, AccessType: p.access, Encryption: enc}
	commit := func(v backend.Volume) error {
		rec.CapacityBytes = v.CapacityBytes
		return d.store.Update(ctx, func(tx *store.Tx) error { return tx.PutVolume(rec) })
	}
	if err := d.createInPool(ctx, id, p, spec, commit); err != nil {
		return nil, err
	}
	d.log.Info("volume created", "volume", id, "name", req.GetName(), "pool", p.poolName, "bytes", rec.CapacityBytes)
	return &csi.CreateVolumeResponse{Volume: d.csiVolume(ctx, rec)}, nil
}

// createInPool calls the pool's create, from content when there is a
// source.
func (d *Driver) createInPool(ctx context.Context, id string, p createPlan, spec backend.Spec, commit func(backend.Volume) error) error {
	if p.src == (backend.ContentSource{}) {
		_, err := p.pool.CreateVolume(ctx, id, spec, commit)
		return err
	}
	cc, ok := p.pool.(backend.ContentCreator)
	if !ok {
		return fmt.Errorf("pool %s (%s) cannot create volumes from content: %w", p.poolName, p.pool.Type(), errdefs.ErrInvalidArgument)
	}
	// A clone of a staged image volume must be as consistent as a
	// snapshot of it: freeze its filesystem for the copy.
	thaw := func() error { return nil }
	if p.src.VolumeID != "" {
		var err error
		if thaw, err = d.freezeForSnapshot(ctx, store.Volume{ID: p.src.VolumeID, Pool: p.poolName}); err != nil {
			return err
		}
	}
	_, err := cc.CreateVolumeFrom(ctx, id, spec, p.src, commit)
	if thawErr := thaw(); thawErr != nil {
		d.log.Error("thaw after clone", "volume", p.src.VolumeID, "err", thawErr)
	}
	return err
}

// compatible decides whether an existing volume satisfies a repeated
// CreateVolume, or the name is taken by something else (ALREADY_EXISTS).
func compatible(v store.Volume, pool string, access backend.AccessType, req *csi.CreateVolumeRequest, src backend.ContentSource) error {
	r := req.GetCapacityRange()
	why := ""
	switch {
	case v.Pool != pool:
		why = fmt.Sprintf("it is in pool %q", v.Pool)
	case v.AccessType != storeAccess(access):
		why = fmt.Sprintf("it has %s access", v.AccessType)
	case r.GetRequiredBytes() > v.CapacityBytes:
		why = fmt.Sprintf("it has %d bytes, fewer than the %d required", v.CapacityBytes, r.GetRequiredBytes())
	case r.GetLimitBytes() > 0 && r.GetLimitBytes() < v.CapacityBytes:
		why = fmt.Sprintf("it has %d bytes, more than the limit of %d", v.CapacityBytes, r.GetLimitBytes())
	case v.SourceSnapshotID != src.SnapshotID || v.SourceVolumeID != src.VolumeID:
		why = "it was made from different content"
	case !maps.Equal(v.Parameters, req.GetParameters()) && !(len(v.Parameters) == 0 && len(req.GetParameters()) == 0):
		why = "it was made with other parameters"
	}
	if why != "" {
		return fmt.Errorf("volume %q exists as %s but %s: %w", v.Name, v.ID, why, errdefs.ErrAlreadyExists)
	}
	return nil
}

// contentSource resolves and locks a volume_content_source. It returns the
// source, its pool and size, and the unlock function (a no-op when none).
func (d *Driver) contentSource(ctx context.Context, cs *csi.VolumeContentSource) (backend.ContentSource, string, int64, func(), error) {
	none := func() {}
	if cs == nil {
		return backend.ContentSource{}, "", 0, none, nil
	}
	var src backend.ContentSource
	var key string
	switch t := cs.GetType().(type) {
	case *csi.VolumeContentSource_Snapshot:
		id := t.Snapshot.GetSnapshotId()
		if err := requireID("volume_content_source.snapshot.snapshot_id", id); err != nil {
			return src, "", 0, none, err
		}
		src.SnapshotID, key = id, snapKey(id)
	case *csi.VolumeContentSource_Volume:
		id := t.Volume.GetVolumeId()
		if err := requireID("volume_content_source.volume.volume_id", id); err != nil {
			return src, "", 0, none, err
		}
		src.VolumeID, key = id, volKey(id)
	default:
		return src, "", 0, none, invalid("volume_content_source has no type")
	}
	unlock, err := d.lock(key)
	if err != nil {
		return src, "", 0, none, err
	}
	var pool string
	var size int64
	err = d.store.View(ctx, func(tx *store.Tx) error {
		if src.SnapshotID != "" {
			s, err := tx.Snapshot(src.SnapshotID)
			pool, size = s.Pool, s.SizeBytes
			return err
		}
		v, err := tx.Volume(src.VolumeID)
		pool, size = v.Pool, v.CapacityBytes
		return err
	})
	if err != nil {
		unlock()
		return src, "", 0, none, fmt.Errorf("volume_content_source: %w", err)
	}
	return src, pool, size, unlock, nil
}

// checkRequisite refuses requirements that exclude this node.
func (d *Driver) checkRequisite(ar *csi.TopologyRequirement) error {
	if ar == nil || len(ar.GetRequisite()) == 0 {
		return nil
	}
	for _, t := range ar.GetRequisite() {
		if d.topologyMatches(t) {
			return nil
		}
	}
	return fmt.Errorf("accessibility_requirements exclude node %q: %w", d.cfg.NodeID, errdefs.ErrResourceExhausted)
}

func (d *Driver) topologyMatches(t *csi.Topology) bool {
	v, ok := t.GetSegments()[TopologyKey]
	return !ok || v == d.cfg.NodeID
}

// csiVolume turns a record into the CSI message.
func (d *Driver) csiVolume(ctx context.Context, v store.Volume) *csi.Volume {
	var enforced *bool
	if b, ok := d.pools[v.Pool]; ok {
		if c, err := b.Capacity(ctx); err == nil {
			enforced = &c.Enforced
		}
	}
	return d.volumeMessage(v, enforced)
}

// volumeMessage is csiVolume once the pool's capacity enforcement is known
// (nil: unknown), so that a listing asks each pool once.
func (d *Driver) volumeMessage(v store.Volume, enforced *bool) *csi.Volume {
	return d.volumeWithContext(v, volumeContext(v, enforced))
}

// volumeContext is the volume_context of v's messages.
func volumeContext(v store.Volume, enforced *bool) map[string]string {
	vc := map[string]string{ctxPool: v.Pool}
	if v.FsType != "" {
		vc[ctxFsType] = v.FsType
	}
	if v.MkfsOptions != "" {
		vc[ctxMkfsOptions] = v.MkfsOptions
	}
	if v.Encryption != "" {
		vc[ctxEncryption], vc[ctxKeyID] = v.Encryption, v.KeyID
	}
	if enforced != nil {
		vc[ctxCapacityEnforced] = strconv.FormatBool(*enforced)
	}
	return vc
}

// volumeWithContext is v's CSI message with volume_context vc.
func (d *Driver) volumeWithContext(v store.Volume, vc map[string]string) *csi.Volume {
	out := &csi.Volume{
		VolumeId:           v.ID,
		CapacityBytes:      v.CapacityBytes,
		VolumeContext:      vc,
		AccessibleTopology: []*csi.Topology{d.topology()},
	}
	switch {
	case v.SourceSnapshotID != "":
		out.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: v.SourceSnapshotID}}}
	case v.SourceVolumeID != "":
		out.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: v.SourceVolumeID}}}
	}
	return out
}

// DeleteVolume implements csi.ControllerServer.
func (d *Driver) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	return &csi.DeleteVolumeResponse{}, d.deleteVolume(ctx, req.GetVolumeId())
}

func (d *Driver) deleteVolume(ctx context.Context, id string) error {
	if err := requireID("volume_id", id); err != nil {
		return err
	}
	unlock, err := d.lock(volKey(id))
	if err != nil {
		return err
	}
	defer unlock()
	v, err := d.volumeRecord(ctx, id)
	if errdefs.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	pool, ok := d.pools[v.Pool]
	if !ok {
		return fmt.Errorf("volume %s is in pool %q, which is not configured: %w", id, v.Pool, errdefs.ErrFailedPrecondition)
	}
	if src, err := pool.Source(ctx, id); err == nil {
		if mps, err := d.node.MountsOf(ctx, src); err == nil && len(mps) > 0 {
			return fmt.Errorf("volume %s is still mounted at %v: %w", id, mps, errdefs.ErrFailedPrecondition)
		}
		if err := d.detachForDelete(ctx, id, src); err != nil {
			return err
		}
	}
	err = pool.DeleteVolume(ctx, id, func() error {
		return d.store.Update(ctx, func(tx *store.Tx) error { return tx.DeleteVolume(id) })
	})
	if err != nil {
		return err
	}
	d.log.Info("volume deleted", "volume", id, "name", v.Name, "pool", v.Pool)
	return nil
}

// detachForDelete detaches the loop devices of an image that nothing
// mounts (a block volume staged but not published, or a stage that failed
// across a restart), so that no device is left pointing at a deleted image
// and holding its space. A device some process still holds open cannot be
// detached now; the delete is then refused rather than leaving it behind.
func (d *Driver) detachForDelete(ctx context.Context, id string, src backend.Source) error {
	if src.Kind == backend.SourceBlockDevice && src.LUKS {
		// Staged for block access and not published: the mapping holds the
		// LV open, and the pool could not deactivate it.
		if err := d.node.CloseMapping(ctx, id); err != nil {
			return fmt.Errorf("%w: %w", err, errdefs.ErrFailedPrecondition)
		}
		return nil
	}
	if src.Kind != backend.SourceImageFile || !d.node.HasLoops() {
		return nil
	}
	devs, err := d.node.Loops().Find(ctx, src.Path)
	if err != nil {
		return err
	}
	if err := d.node.CloseMapping(ctx, id); err != nil {
		return fmt.Errorf("%w: %w", err, errdefs.ErrFailedPrecondition)
	}
	return d.node.DetachBeforeDelete(ctx, id, devs)
}

func (d *Driver) volumeRecord(ctx context.Context, id string) (store.Volume, error) {
	var v store.Volume
	err := d.store.View(ctx, func(tx *store.Tx) (err error) { v, err = tx.Volume(id); return })
	return v, err
}

// ValidateVolumeCapabilities implements csi.ControllerServer.
func (d *Driver) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if err := requireID("volume_id", req.GetVolumeId()); err != nil {
		return nil, err
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, invalid("volume_capabilities is required")
	}
	if err := checkMap("volume_context", req.GetVolumeContext()); err != nil {
		return nil, err
	}
	if err := checkMap("parameters", req.GetParameters()); err != nil {
		return nil, err
	}
	v, err := d.volumeRecord(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	if err := checkCapabilities("volume_capabilities", req.GetVolumeCapabilities()); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	access, _, err := accessOf(req.GetVolumeCapabilities())
	if err != nil || storeAccess(access) != v.AccessType {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: fmt.Sprintf("volume %s has %s access", v.ID, v.AccessType)}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
		MutableParameters:  req.GetMutableParameters(),
	}}, nil
}

// ListVolumes implements csi.ControllerServer. The token is the ID to
// resume at; a token that is not a volume ID gives ABORTED, as the spec asks.
// The mount table is read once per call and every volume looked up in it,
// and pages are bounded (listing.go), so a call costs time linear in its
// volumes plus the node's mounts.
func (d *Driver) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	if req.GetMaxEntries() < 0 {
		return nil, invalid("max_entries must not be negative")
	}
	if t := req.GetStartingToken(); t != "" && !volumeIDPattern.MatchString(t) {
		return nil, fmt.Errorf("starting_token %q is not one this driver issued: %w", truncate(t), errdefs.ErrAborted)
	}
	var vols []store.ListedVolume
	var next string
	err := d.store.View(ctx, func(tx *store.Tx) (err error) {
		vols, next, err = tx.ListVolumes(req.GetStartingToken(), pageLimit(req.GetMaxEntries()))
		return
	})
	if err != nil {
		return nil, err
	}
	lv := d.newListView()
	resp := &csi.ListVolumesResponse{NextToken: next, Entries: make([]*csi.ListVolumesResponse_Entry, 0, len(vols))}
	used := 0
	for i, lvol := range vols {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		v := lvol.Volume
		n := lv.sizeBound(lvol.RecordBytes)
		if !fits(used, n, i) {
			resp.NextToken = v.ID
			break
		}
		used += n
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{
			Volume: lv.csiVolume(ctx, v),
			Status: &csi.ListVolumesResponse_VolumeStatus{PublishedNodeIds: lv.published(ctx, v)},
		})
	}
	return resp, nil
}

// publishedNodes reports where a volume is published: this node, if any
// mount of it exists here.
func (d *Driver) publishedNodes(ctx context.Context, v store.Volume) []string {
	pool, ok := d.pools[v.Pool]
	if !ok {
		return nil
	}
	src, err := pool.Source(ctx, v.ID)
	if err != nil {
		return nil
	}
	if mps, err := d.node.MountsOf(ctx, src); err == nil && len(mps) > 0 {
		return []string{d.cfg.NodeID}
	}
	return nil
}

// ControllerGetVolume implements csi.ControllerServer.
func (d *Driver) ControllerGetVolume(ctx context.Context, req *csi.ControllerGetVolumeRequest) (*csi.ControllerGetVolumeResponse, error) {
	if err := requireID("volume_id", req.GetVolumeId()); err != nil {
		return nil, err
	}
	v, err := d.volumeRecord(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	return &csi.ControllerGetVolumeResponse{
		Volume: d.csiVolume(ctx, v),
		Status: &csi.ControllerGetVolumeResponse_VolumeStatus{PublishedNodeIds: d.publishedNodes(ctx, v)},
	}, nil
}

// GetCapacity implements csi.ControllerServer, per pool (parameter pool)
// and topology segment (only this node's segment has capacity).
func (d *Driver) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	params, err := parseCreateParams(req.GetParameters())
	if err != nil {
		return nil, err
	}
	for i, c := range req.GetVolumeCapabilities() {
		if err := checkCapability(fmt.Sprintf("volume_capabilities[%d]", i), c); err != nil {
			return nil, err
		}
	}
	name, pool, err := d.pool(params.pool)
	if err != nil {
		return nil, err
	}
	if t := req.GetAccessibleTopology(); t != nil && !d.topologyMatches(t) {
		return &csi.GetCapacityResponse{AvailableCapacity: 0, MaximumVolumeSize: wrapperspb.Int64(0)}, nil
	}
	if at, _, err := accessOf(req.GetVolumeCapabilities()); err == nil && len(req.GetVolumeCapabilities()) > 0 && at == backend.AccessBlock {
		if !backend.SupportsBlock(pool) {
			return &csi.GetCapacityResponse{AvailableCapacity: 0, MaximumVolumeSize: wrapperspb.Int64(0)}, nil
		}
	}
	c, err := pool.Capacity(ctx)
	if err != nil {
		return nil, fmt.Errorf("pool %s: %w", name, err)
	}
	maxVol := c.MaxVolumeBytes
	if e, ok := pool.(backend.Encrypter); ok && params.encrypt && e.EncryptionMechanism() == "luks2" {
		// An encrypted volume's image or LV holds the LUKS2 header beside
		// the capacity asked for: the largest volume that fits is smaller.
		maxVol = max(0, maxVol-luks.HeaderBytes)
	}
	return &csi.GetCapacityResponse{
		AvailableCapacity: c.AvailableBytes,
		MaximumVolumeSize: wrapperspb.Int64(maxVol),
	}, nil
}

// ControllerGetCapabilities implements csi.ControllerServer.
func (d *Driver) ControllerGetCapabilities(ctx context.Context, _ *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	rpcs := []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES_PUBLISHED_NODES,
		csi.ControllerServiceCapability_RPC_GET_VOLUME,
		csi.ControllerServiceCapability_RPC_GET_VOLUME_HEALTH,
		csi.ControllerServiceCapability_RPC_LIST_VOLUME_HEALTH,
		csi.ControllerServiceCapability_RPC_GET_CAPACITY,
		csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	}
	if d.anyPool(func(b backend.Backend) bool { _, ok := b.(backend.Snapshotter); return ok }) {
		rpcs = append(rpcs,
			csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
			csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
			csi.ControllerServiceCapability_RPC_GET_SNAPSHOT)
	}
	if d.anyPool(func(b backend.Backend) bool { _, ok := b.(backend.ContentCreator); return ok }) {
		rpcs = append(rpcs, csi.ControllerServiceCapability_RPC_CLONE_VOLUME)
	}
	if d.cfg.ControllerExpansion && d.anyPool(func(b backend.Backend) bool { _, ok := b.(backend.Expander); return ok }) {
		rpcs = append(rpcs, csi.ControllerServiceCapability_RPC_EXPAND_VOLUME)
	}
	resp := &csi.ControllerGetCapabilitiesResponse{}
	for _, r := range rpcs {
		resp.Capabilities = append(resp.Capabilities, &csi.ControllerServiceCapability{
			Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: r}}})
	}
	return resp, nil
}

// ControllerExpandVolume implements csi.ControllerServer.
func (d *Driver) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	if !d.cfg.ControllerExpansion {
		return nil, fmt.Errorf("controller expansion is off (--controller-expansion=false); NodeExpandVolume expands: %w", errdefs.ErrNotSupported)
	}
	if err := requireID("volume_id", req.GetVolumeId()); err != nil {
		return nil, err
	}
	if req.GetCapacityRange() == nil {
		return nil, invalid("capacity_range is required")
	}
	if err := checkCapability("volume_capability", req.GetVolumeCapability()); req.GetVolumeCapability() != nil && err != nil {
		return nil, err
	}
	unlock, err := d.lock(volKey(req.GetVolumeId()))
	if err != nil {
		return nil, err
	}
	defer unlock()
	v, size, err := d.expandVolume(ctx, req.GetVolumeId(), req.GetCapacityRange())
	if err != nil {
		return nil, err
	}
	nodeNeeded := d.needsNodeExpansion(ctx, v)
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: size, NodeExpansionRequired: nodeNeeded}, nil
}

// needsNodeExpansion is ControllerExpandVolume's node_expansion_required:
// whether growing the backing storage is not yet visible to the workload,
// so that the CO must call NodeExpandVolume on the node.
//
//   - Directory volumes: never; the new limit applies at once.
//   - Image files, block and mount access alike: the kernel caches a loop
//     device's size at attach time, so a staged device keeps its old size
//     until NodeExpandVolume refreshes it (LOOP_SET_CAPACITY); for mount
//     access it then grows the filesystem online. A volume that is not
//     staged needs nothing (the next attach sees the new size, and stage
//     grows the filesystem), which NodeExpandVolume handles as a no-op.
//   - Block devices: for mount access, to grow the filesystem; and
//     encrypted ones for block access too, since their LUKS mapping keeps
//     its size until cryptsetup resize on the node.
func (d *Driver) needsNodeExpansion(ctx context.Context, v store.Volume) bool {
	pool, ok := d.pools[v.Pool]
	if !ok {
		return false
	}
	src, err := pool.Source(ctx, v.ID)
	if err != nil {
		return false
	}
	switch src.Kind {
	case backend.SourceImageFile:
		return true
	case backend.SourceBlockDevice:
		return v.AccessType == store.AccessMount || src.LUKS
	}
	return false
}

// CreateSnapshot implements csi.ControllerServer.
func (d *Driver) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if err := requireString("name", req.GetName()); err != nil {
		return nil, err
	}
	if err := requireID("source_volume_id", req.GetSourceVolumeId()); err != nil {
		return nil, err
	}
	if err := checkMap("parameters", req.GetParameters()); err != nil {
		return nil, err
	}
	for k := range req.GetParameters() {
		return nil, invalid("parameters: unknown parameter %q (snapshots take none)", truncate(k))
	}
	unlock, err := d.lock("snapname/"+req.GetName(), volKey(req.GetSourceVolumeId()))
	if err != nil {
		return nil, err
	}
	defer unlock()

	var existing *store.Snapshot
	var vol store.Volume
	err = d.store.View(ctx, func(tx *store.Tx) error {
		s, err := tx.SnapshotByName(req.GetName())
		if err == nil {
			existing = &s
		} else if !errdefs.Is(err, errdefs.ErrNotFound) {
			return err
		}
		vol, err = tx.Volume(req.GetSourceVolumeId())
		return err
	})
	if existing != nil {
		if existing.SourceVolumeID != req.GetSourceVolumeId() {
			return nil, fmt.Errorf("snapshot %q exists as %s of volume %s: %w", req.GetName(), existing.ID, existing.SourceVolumeID, errdefs.ErrAlreadyExists)
		}
		return &csi.CreateSnapshotResponse{Snapshot: csiSnapshot(*existing)}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("source_volume_id: %w", err)
	}
	pool, ok := d.pools[vol.Pool]
	if !ok {
		return nil, fmt.Errorf("pool %q is not configured: %w", vol.Pool, errdefs.ErrFailedPrecondition)
	}
	sn, ok := pool.(backend.Snapshotter)
	if !ok {
		return nil, fmt.Errorf("pool %s (%s) cannot snapshot: %w", vol.Pool, pool.Type(), errdefs.ErrInvalidArgument)
	}
	var id string
	if err := d.store.View(ctx, func(tx *store.Tx) (err error) { id, err = tx.NewID(store.SnapshotPrefix); return }); err != nil {
		return nil, err
	}
	rec := store.Snapshot{ID: id, Name: req.GetName(), SourceVolumeID: vol.ID, Pool: vol.Pool, Encryption: vol.Encryption}
	create := sn.CreateSnapshot
	if vol.Encryption != "" {
		es, ok := pool.(backend.EncryptedSnapshotter)
		if !ok {
			return nil, fmt.Errorf("pool %s (%s) cannot snapshot encrypted volumes: %w", vol.Pool, pool.Type(), errdefs.ErrFailedPrecondition)
		}
		key, err := snapshotKey(vol, req.GetSecrets())
		if err != nil {
			return nil, err
		}
		create = func(ctx context.Context, snapID, volID string, commit func(backend.Snapshot) error) (backend.Snapshot, error) {
			return es.CreateEncryptedSnapshot(ctx, snapID, volID, key, commit)
		}
	}
	thaw, err := d.freezeForSnapshot(ctx, vol)
	if err != nil {
		return nil, err
	}
	_, err = create(ctx, id, vol.ID, func(s backend.Snapshot) error {
		rec.SizeBytes = s.SizeBytes
		if rec.SizeBytes == 0 {
			rec.SizeBytes = vol.CapacityBytes
		}
		rec.CreatedAt = s.CreatedAt.UTC()
		if rec.CreatedAt.IsZero() {
			rec.CreatedAt = time.Now().UTC()
		}
		return d.store.Update(ctx, func(tx *store.Tx) error { return tx.PutSnapshot(rec) })
	})
	if thawErr := thaw(); thawErr != nil {
		d.log.Error("thaw after snapshot", "volume", vol.ID, "err", thawErr)
	}
	if err != nil {
		return nil, err
	}
	d.log.Info("snapshot created", "snapshot", id, "name", req.GetName(), "volume", vol.ID, "bytes", rec.SizeBytes)
	return &csi.CreateSnapshotResponse{Snapshot: csiSnapshot(rec)}, nil
}

func csiSnapshot(s store.Snapshot) *csi.Snapshot {
	return &csi.Snapshot{
		SnapshotId:     s.ID,
		SourceVolumeId: s.SourceVolumeID,
		SizeBytes:      s.SizeBytes,
		CreationTime:   timestamppb.New(s.CreatedAt),
		ReadyToUse:     true,
	}
}

// DeleteSnapshot implements csi.ControllerServer.
func (d *Driver) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	return &csi.DeleteSnapshotResponse{}, d.deleteSnapshot(ctx, req.GetSnapshotId())
}

func (d *Driver) deleteSnapshot(ctx context.Context, id string) error {
	if err := requireID("snapshot_id", id); err != nil {
		return err
	}
	unlock, err := d.lock(snapKey(id))
	if err != nil {
		return err
	}
	defer unlock()
	var s store.Snapshot
	err = d.store.View(ctx, func(tx *store.Tx) (err error) { s, err = tx.Snapshot(id); return })
	if errdefs.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	pool, ok := d.pools[s.Pool]
	if !ok {
		return fmt.Errorf("pool %q is not configured: %w", s.Pool, errdefs.ErrFailedPrecondition)
	}
	sd, ok := pool.(backend.Snapshotter)
	if !ok {
		return fmt.Errorf("pool %s cannot delete snapshots: %w", s.Pool, errdefs.ErrFailedPrecondition)
	}
	err = sd.DeleteSnapshot(ctx, id, func() error {
		return d.store.Update(ctx, func(tx *store.Tx) error { return tx.DeleteSnapshot(id) })
	})
	if err != nil {
		return err
	}
	d.log.Info("snapshot deleted", "snapshot", id, "name", s.Name)
	return nil
}

// ListSnapshots implements csi.ControllerServer.
func (d *Driver) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	if req.GetMaxEntries() < 0 {
		return nil, invalid("max_entries must not be negative")
	}
	if t := req.GetStartingToken(); t != "" && !snapshotIDPattern.MatchString(t) {
		return nil, fmt.Errorf("starting_token %q is not one this driver issued: %w", truncate(t), errdefs.ErrAborted)
	}
	resp := &csi.ListSnapshotsResponse{}
	err := d.store.View(ctx, func(tx *store.Tx) error {
		if id := req.GetSnapshotId(); id != "" {
			s, err := tx.Snapshot(id)
			if errdefs.Is(err, errdefs.ErrNotFound) {
				return nil
			}
			if err != nil {
				return err
			}
			if vid := req.GetSourceVolumeId(); vid == "" || vid == s.SourceVolumeID {
				resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: csiSnapshot(s)})
			}
			return nil
		}
		// Filtered pages are cut after filtering, so the token stays an ID.
		from, max := req.GetStartingToken(), pageLimit(req.GetMaxEntries())
		used := 0
		for {
			snaps, next, err := tx.Snapshots(from, 64)
			if err != nil {
				return err
			}
			for _, s := range snaps {
				if vid := req.GetSourceVolumeId(); vid != "" && vid != s.SourceVolumeID {
					continue
				}
				e := &csi.ListSnapshotsResponse_Entry{Snapshot: csiSnapshot(s)}
				n := entrySize(e)
				if len(resp.Entries) == max || !fits(used, n, len(resp.Entries)) {
					resp.NextToken = s.ID
					return nil
				}
				used += n
				resp.Entries = append(resp.Entries, e)
			}
			if next == "" {
				return nil
			}
			from = next
		}
	})
	return resp, err
}

// GetSnapshot implements csi.ControllerServer.
func (d *Driver) GetSnapshot(ctx context.Context, req *csi.GetSnapshotRequest) (*csi.GetSnapshotResponse, error) {
	if err := requireID("snapshot_id", req.GetSnapshotId()); err != nil {
		return nil, err
	}
	var s store.Snapshot
	err := d.store.View(ctx, func(tx *store.Tx) (err error) { s, err = tx.Snapshot(req.GetSnapshotId()); return })
	if err != nil {
		return nil, err
	}
	return &csi.GetSnapshotResponse{Snapshot: csiSnapshot(s)}, nil
}
