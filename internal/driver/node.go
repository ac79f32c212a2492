package driver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/luks"
	"github.com/cairn-csi/cairn/internal/mkfsopts"
	"github.com/cairn-csi/cairn/internal/mountfd"
	"github.com/cairn-csi/cairn/internal/node"
	"github.com/cairn-csi/cairn/internal/store"
)

// nodeVolume is a volume as the node sees it.
type nodeVolume struct {
	id      string
	pool    string
	b       backend.Backend
	src     backend.Source
	rec     *store.Volume // nil in node mode, which has no store
	fsType  string
	mkfs    []string // admin's options for the pool, then the StorageClass's, allow-listed
	mkfsErr error    // the StorageClass's options failed the allow-list
}

// findVolume resolves a volume ID on this node: from the store when this
// process has one, else from the pool named in the volume context, else
// by asking every pool.
func (d *Driver) findVolume(ctx context.Context, id string, volCtx map[string]string) (nodeVolume, error) {
	nv := nodeVolume{id: id}
	mkfsRaw := ""
	candidates := d.poolOrder
	if d.store != nil {
		rec, err := d.volumeRecord(ctx, id)
		if err != nil {
			return nv, err
		}
		nv.rec = &rec
		nv.fsType, mkfsRaw = rec.FsType, rec.MkfsOptions
		candidates = []string{rec.Pool}
	} else {
		if p := volCtx[ctxPool]; p != "" {
			candidates = []string{p}
		}
		nv.fsType, mkfsRaw = volCtx[ctxFsType], volCtx[ctxMkfsOptions]
	}
	for _, name := range candidates {
		b, ok := d.pools[name]
		if !ok {
			return nv, fmt.Errorf("volume %s: pool %q is not configured on this node: %w", id, name, errdefs.ErrNotFound)
		}
		src, err := b.Source(ctx, id)
		if errdefs.Is(err, errdefs.ErrNotFound) {
			continue
		}
		if err != nil {
			return nv, err
		}
		nv.pool, nv.b, nv.src = name, b, src
		// The StorageClass's options pass the allow-list again here: in
		// node mode they arrive in the volume context, which is input.
		fsType := firstNonEmpty(nv.fsType, "ext4")
		args, err := mkfsopts.Parse(fsType, mkfsRaw)
		if err != nil {
			// Only staging formats, so only staging fails; unstage and
			// unpublish of such a volume still work.
			nv.mkfsErr = fmt.Errorf("volume %s: %w", id, err)
		}
		nv.mkfs = append(slices.Clone(d.adminMkfs[name][fsType]), args...)
		return nv, nil
	}
	return nv, fmt.Errorf("volume %s: %w", id, errdefs.ErrNotFound)
}

func (nv nodeVolume) block(c *csi.VolumeCapability) bool { return c.GetBlock() != nil }

// checkAccess refuses a capability that does not fit the volume's kind.
func (nv nodeVolume) checkAccess(c *csi.VolumeCapability) error {
	if nv.block(c) && nv.src.Kind == backend.SourceDirectory {
		return invalid("volume %s is a directory volume and cannot be used as a block device", nv.id)
	}
	if nv.rec != nil && nv.rec.AccessType != "" && nv.rec.AccessType != accessName(c) {
		return invalid("volume %s was created for %s access, not %s", nv.id, nv.rec.AccessType, accessName(c))
	}
	return nil
}

// accessName is the access type c asks for, as the store names it.
func accessName(c *csi.VolumeCapability) store.AccessType {
	if c.GetBlock() != nil {
		return store.AccessBlock
	}
	return store.AccessMount
}

// NodeStageVolume implements csi.NodeServer. Directory volumes are bind
// mounted at the staging path; image volumes are attached to a loop device
// and, for mount access, formatted if blank and mounted there.
func (d *Driver) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	if err := d.checkNodePath("staging_target_path", req.GetStagingTargetPath()); err != nil && req.GetVolumeId() != "" {
		return nil, err
	}
	return &csi.NodeStageVolumeResponse{}, d.nodeStage(ctx, req)
}

// nodeStage is NodeStageVolume in three steps, as createVolume is:
// checkStage validates the request alone, planStage (under the volume's
// lock) finds the volume and checks it and the staging path without
// changing anything, and executeStage prepares the device and mounts.
func (d *Driver) nodeStage(ctx context.Context, req *csi.NodeStageVolumeRequest) error {
	if err := checkStage(req); err != nil {
		return err
	}
	unlock, err := d.lock(volKey(req.GetVolumeId()))
	if err != nil {
		return err
	}
	defer unlock()
	nv, err := d.planStage(ctx, req)
	if err != nil {
		return err
	}
	return d.executeStage(ctx, nv, req)
}

// checkStage validates a NodeStageVolumeRequest by itself.
func checkStage(req *csi.NodeStageVolumeRequest) error {
	if err := requireID("volume_id", req.GetVolumeId()); err != nil {
		return err
	}
	if err := requirePath("staging_target_path", req.GetStagingTargetPath()); err != nil {
		return err
	}
	if err := checkCapability("volume_capability", req.GetVolumeCapability()); err != nil {
		return err
	}
	if err := checkMap("volume_context", req.GetVolumeContext()); err != nil {
		return err
	}
	return checkMap("publish_context", req.GetPublishContext())
}

// planStage finds the volume and checks that the request fits it and that
// the staging path is a directory the CO made. It only reads.
func (d *Driver) planStage(ctx context.Context, req *csi.NodeStageVolumeRequest) (nodeVolume, error) {
	staging := req.GetStagingTargetPath()
	nv, err := d.findVolume(ctx, req.GetVolumeId(), req.GetVolumeContext())
	if err != nil {
		return nv, err
	}
	if err := nv.checkAccess(req.GetVolumeCapability()); err != nil {
		return nv, err
	}
	if nv.mkfsErr != nil && nv.src.Kind == backend.SourceImageFile && !nv.block(req.GetVolumeCapability()) {
		return nv, nv.mkfsErr
	}
	// The CO creates the staging directory; a symlink anywhere in its path
	// is refused, so the mount cannot land outside it.
	exists, dir, err := d.node.IsDir(staging)
	switch {
	case err != nil:
		return nv, fmt.Errorf("staging_target_path: %w", err)
	case !exists:
		return nv, invalid("staging_target_path %q must be a directory the CO created", staging)
	case !dir:
		return nv, invalid("staging_target_path %q is not a directory", staging)
	}
	return nv, nil
}

// executeStage does the stage planStage allowed: loop device and LUKS
// mapping (each undone if a later step fails, since a CO need not unstage
// after a failed stage), the directory key, then the mount.
func (d *Driver) executeStage(ctx context.Context, nv nodeVolume, req *csi.NodeStageVolumeRequest) (retErr error) {
	staging := req.GetStagingTargetPath()
	// What a failed stage undoes, run newest first: a LUKS mapping is
	// closed before its loop device is detached.
	var undo []func()
	defer func() {
		if retErr != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	switch nv.src.Kind {
	case backend.SourceImageFile:
		if err := d.prepareImage(ctx, nv, req, &undo); err != nil {
			return err
		}
		if nv.block(req.GetVolumeCapability()) {
			return nil // publish bind-mounts the device itself
		}
	case backend.SourceBlockDevice:
		opened, err := d.openBlockDevice(ctx, nv, req.GetSecrets())
		if err != nil {
			return err
		}
		if opened {
			undo = append(undo, d.closeAfterFailedStage(ctx, nv))
		}
	}

	// An encrypted volume is unlocked on every stage, the repeated ones
	// too: a wrong secret is refused even when the volume is mounted, and
	// after a reboot the kernel has forgotten the key.
	encrypted, err := d.unlockDir(nv, req.GetSecrets())
	if err != nil {
		return err
	}
	id, err := d.node.IdentityOf(ctx, nv.src)
	if err != nil {
		return err
	}
	st, err := d.node.Inspect(staging, id)
	if err != nil {
		return err
	}
	switch {
	case st.Mounted && st.Ours:
		return nil
	case st.Mounted:
		return fmt.Errorf("staging_target_path %q is a mount of something else: %w", staging, errdefs.ErrAlreadyExists)
	}

	m := req.GetVolumeCapability().GetMount()
	switch nv.src.Kind {
	case backend.SourceDirectory:
		if err := d.node.StageDir(nv.src.Path, staging); err != nil {
			if encrypted {
				err = errors.Join(err, d.node.LockDir(ctx, nv.id, nv.src))
			}
			return err
		}
	case backend.SourceImageFile:
		if err := d.stageImage(ctx, nv, staging, m); err != nil {
			return err
		}
	case backend.SourceBlockDevice:
		if err := d.stageBlockDevice(ctx, nv, req.GetVolumeCapability(), staging); err != nil {
			return err
		}
	default:
		return fmt.Errorf("source kind %s cannot be staged: %w", nv.src.Kind, errdefs.ErrFailedPrecondition)
	}
	d.log.Info("volume staged", "volume", nv.id, "staging", staging)
	return nil
}

// prepareImage readies an image volume's device for stage: its loop
// device (node.AttachImage, when not attached yet) and, for an encrypted
// volume, its LUKS mapping. Each step it takes adds its undo to undo, for
// a stage that fails later (a CO need not unstage after a failed stage).
func (d *Driver) prepareImage(ctx context.Context, nv nodeVolume, req *csi.NodeStageVolumeRequest, undo *[]func()) error {
	if !d.node.HasLoops() {
		return fmt.Errorf("image volumes need loop devices: %w", errdefs.ErrFailedPrecondition)
	}
	devs, err := d.node.Loops().Find(ctx, nv.src.Path)
	if err != nil {
		return err
	}
	if len(devs) == 0 {
		_, rollback, err := d.node.AttachImage(ctx, nv.id, nv.src.Path, d.imageBlockSize(ctx, nv, req.GetVolumeCapability()))
		if err != nil {
			return err
		}
		*undo = append(*undo, rollback)
	}
	isLUKS, err := isLUKSVolume(nv)
	if err != nil || !isLUKS {
		return err
	}
	dev, err := d.node.Loops().Find(ctx, nv.src.Path)
	if err != nil || len(dev) == 0 {
		return fmt.Errorf("loop device for %s vanished: %v: %w", nv.src.Path, err, errdefs.ErrAborted)
	}
	if _, err := d.openLUKS(ctx, nv, dev[0], req.GetSecrets()); err != nil {
		return err
	}
	*undo = append(*undo, d.closeAfterFailedStage(ctx, nv))
	return nil
}

// closeAfterFailedStage is the undo of opening nv's LUKS mapping.
func (d *Driver) closeAfterFailedStage(ctx context.Context, nv nodeVolume) func() {
	return func() {
		if err := d.node.CloseMapping(context.WithoutCancel(ctx), nv.id); err != nil {
			d.log.Error("close after a failed stage", "volume", nv.id, "err", err)
		}
	}
}

// NodeUnstageVolume implements csi.NodeServer. It works whether or not the
// volume still exists, so a node can always be cleaned up.
func (d *Driver) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	if err := d.checkNodePath("staging_target_path", req.GetStagingTargetPath()); err != nil && req.GetVolumeId() != "" {
		return nil, err
	}
	return &csi.NodeUnstageVolumeResponse{}, d.nodeUnstage(ctx, req)
}

func (d *Driver) nodeUnstage(ctx context.Context, req *csi.NodeUnstageVolumeRequest) error {
	if err := requireID("volume_id", req.GetVolumeId()); err != nil {
		return err
	}
	staging := req.GetStagingTargetPath()
	if err := requirePath("staging_target_path", staging); err != nil {
		return err
	}
	unlock, err := d.lock(volKey(req.GetVolumeId()))
	if err != nil {
		return err
	}
	defer unlock()
	nv, err := d.findVolume(ctx, req.GetVolumeId(), nil)
	if err != nil && !errdefs.Is(err, errdefs.ErrNotFound) {
		return err
	}
	var id node.Identity
	if err == nil {
		if id, err = d.node.IdentityOf(ctx, nv.src); err != nil {
			return err
		}
	}
	n, foreign, uerr := d.node.UnmountOurs(ctx, staging, id)
	if uerr != nil {
		return uerr
	}
	if foreign {
		d.log.Warn("unstage: staging_target_path holds a mount that is not this volume's; left untouched", "volume", req.GetVolumeId(), "staging", staging)
	} else if err == nil {
		if err := d.node.LockDir(ctx, nv.id, nv.src); err != nil {
			return err
		}
	}
	switch {
	case err == nil && nv.src.Kind == backend.SourceImageFile && d.node.HasLoops():
		if err := d.node.ReleaseImage(ctx, nv.id, nv.src); err != nil {
			return err
		}
	case err == nil && nv.src.Kind == backend.SourceBlockDevice && nv.src.LUKS:
		// The mapping of an encrypted block device closes, so that its key
		// leaves the kernel.
		if err := d.node.CloseMappingUnused(ctx, nv.id, nv.src); err != nil {
			return err
		}
	case errdefs.Is(err, errdefs.ErrNotFound) && d.node.HasLoops():
		// Deleted while staged: its image is unlinked but may still be
		// attached, and this is the last call the node gets for it.
		// The pools say which loop devices held its image.
		isImage := func(file string) bool { return d.isImageOf(file, req.GetVolumeId()) }
		if err := d.node.ReleaseDeletedImage(ctx, req.GetVolumeId(), isImage); err != nil {
			return err
		}
	case err != nil && !errdefs.Is(err, errdefs.ErrNotFound):
		return err
	}
	if n > 0 {
		d.log.Info("volume unstaged", "volume", req.GetVolumeId(), "staging", staging, "unmounted", n)
	}
	return nil
}

// NodePublishVolume implements csi.NodeServer: a bind mount of the staged
// volume (or, for block access, of its device) at the target, which the
// plugin creates.
func (d *Driver) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	if req.GetVolumeId() != "" {
		if err := d.checkNodePath("target_path", req.GetTargetPath()); err != nil {
			return nil, err
		}
	}
	if req.GetVolumeContext()[ephemeralContextKey] == "true" {
		return &csi.NodePublishVolumeResponse{}, d.publishEphemeral(ctx, req)
	}
	if req.GetVolumeId() != "" && req.GetTargetPath() != "" {
		if err := d.checkNodePath("staging_target_path", req.GetStagingTargetPath()); err != nil {
			return nil, err
		}
	}
	return &csi.NodePublishVolumeResponse{}, d.nodePublish(ctx, req)
}

func (d *Driver) validatePublish(req *csi.NodePublishVolumeRequest) error {
	if err := requireID("volume_id", req.GetVolumeId()); err != nil {
		return err
	}
	if err := requirePath("target_path", req.GetTargetPath()); err != nil {
		return err
	}
	if err := checkCapability("volume_capability", req.GetVolumeCapability()); err != nil {
		return err
	}
	if err := checkMap("volume_context", req.GetVolumeContext()); err != nil {
		return err
	}
	return checkMap("publish_context", req.GetPublishContext())
}

// nodePublish is NodePublishVolume in three steps, as createVolume is:
// validation, planPublish (under the volume's lock; it only reads) and
// executePublish (the bind mount).
func (d *Driver) nodePublish(ctx context.Context, req *csi.NodePublishVolumeRequest) error {
	if err := d.validatePublish(req); err != nil {
		return err
	}
	staging := req.GetStagingTargetPath()
	if err := requirePath("staging_target_path", staging); err != nil {
		return err
	}
	if filepath.Clean(req.GetTargetPath()) == filepath.Clean(staging) {
		return invalid("target_path and staging_target_path must differ")
	}
	unlock, err := d.lock(volKey(req.GetVolumeId()))
	if err != nil {
		return err
	}
	defer unlock()
	p, err := d.planPublish(ctx, req)
	if err != nil || p.done {
		return err
	}
	return d.executePublish(req, p)
}

// publishPlan is planPublish's decision: what to bind at the target, with
// which mount attributes, or done when the target already has it.
type publishPlan struct {
	nv         nodeVolume
	bindSource string // the staging path, or the device for block access
	attrs      mountfd.Attrs
	done       bool
}

// planPublish finds the volume and decides the bind: its source (the
// staged filesystem or the device), its flags, and whether the target
// already holds this volume. It only reads (store, mount table).
func (d *Driver) planPublish(ctx context.Context, req *csi.NodePublishVolumeRequest) (publishPlan, error) {
	staging, target, cap := req.GetStagingTargetPath(), req.GetTargetPath(), req.GetVolumeCapability()
	nv, err := d.findVolume(ctx, req.GetVolumeId(), req.GetVolumeContext())
	if err != nil {
		return publishPlan{}, err
	}
	p := publishPlan{nv: nv}
	if err := nv.checkAccess(cap); err != nil {
		return p, err
	}
	id, err := d.node.IdentityOf(ctx, nv.src)
	if err != nil {
		return p, err
	}

	// What to bind: the staged filesystem, or the loop device itself.
	p.bindSource = staging
	if nv.block(cap) && nv.src.Kind == backend.SourceBlockDevice {
		if p.bindSource, err = blockDeviceOf(nv); err != nil {
			return p, err
		}
	} else if nv.block(cap) {
		if p.bindSource, err = d.volumeDevice(ctx, nv); err != nil {
			return p, err
		}
	} else if st, err := d.node.Inspect(staging, id); err != nil {
		return p, err
	} else if !st.Mounted || !st.Ours {
		return p, fmt.Errorf("volume %s is not staged at %q: %w", nv.id, staging, errdefs.ErrFailedPrecondition)
	}

	// Per-mount flags apply to the bind; a filesystem's own options were
	// applied when it was staged. A directory volume has only the former.
	flagFS := ""
	if (nv.src.Kind == backend.SourceImageFile || nv.src.Kind == backend.SourceBlockDevice) && !nv.block(cap) {
		flagFS = firstNonEmpty(cap.GetMount().GetFsType(), nv.fsType, "ext4")
	}
	if p.attrs, _, err = mountfd.ParseOptions(flagFS, cap.GetMount().GetMountFlags()); err != nil {
		return p, fmt.Errorf("volume_capability.mount.mount_flags: %w", err)
	}
	readOnly := p.attrs.ReadOnly || req.GetReadonly() || cap.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
	p.attrs.ReadOnly = readOnly

	st, err := d.node.Inspect(target, id)
	if err != nil {
		return p, fmt.Errorf("target_path: %w", err)
	}
	switch {
	case st.Mounted && st.Ours && st.ReadOnly == readOnly:
		p.done = true // already published: never stack a second mount
		return p, nil
	case st.Mounted && st.Ours:
		return p, fmt.Errorf("volume %s is already published at %q with readonly=%t: %w", nv.id, target, st.ReadOnly, errdefs.ErrAlreadyExists)
	case st.Mounted:
		return p, fmt.Errorf("target_path %q is already a mount of something else: %w", target, errdefs.ErrAlreadyExists)
	}
	return p, d.checkSingleWriter(ctx, nv, cap, staging, target)
}

// checkSingleWriter refuses a second publish of a SINGLE_NODE_SINGLE_WRITER
// volume.
func (d *Driver) checkSingleWriter(ctx context.Context, nv nodeVolume, cap *csi.VolumeCapability, staging, target string) error {
	if cap.GetAccessMode().GetMode() != csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER {
		return nil
	}
	mp, err := d.node.MountedElsewhere(ctx, nv.src, staging, target)
	if err != nil {
		return err
	}
	if mp != "" {
		return fmt.Errorf("volume %s is single-writer and already published at %q: %w", nv.id, mp, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// executePublish binds the plan's source at the target (node.Publish).
func (d *Driver) executePublish(req *csi.NodePublishVolumeRequest, p publishPlan) error {
	err := d.node.Publish(node.PublishSpec{
		Staging: req.GetStagingTargetPath(), Target: req.GetTargetPath(),
		Block: p.nv.block(req.GetVolumeCapability()), Source: p.bindSource, Attrs: p.attrs,
	})
	if err != nil {
		return err
	}
	d.log.Info("volume published", "volume", p.nv.id, "target", req.GetTargetPath(), "readonly", p.attrs.ReadOnly)
	return nil
}

// NodeUnpublishVolume implements csi.NodeServer: unmount the volume's
// layers at the target and remove it. A missing or unmounted target is
// success; so is a target that holds something else, which is left exactly
// as it is (the spec's idempotency allows this, and the log says why).
func (d *Driver) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	if req.GetVolumeId() != "" {
		if err := d.checkNodePath("target_path", req.GetTargetPath()); err != nil {
			return nil, err
		}
	}
	return &csi.NodeUnpublishVolumeResponse{}, d.nodeUnpublish(ctx, req)
}

func (d *Driver) nodeUnpublish(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) error {
	if err := requireID("volume_id", req.GetVolumeId()); err != nil {
		return err
	}
	target := req.GetTargetPath()
	if err := requirePath("target_path", target); err != nil {
		return err
	}
	unlock, err := d.lock(volKey(req.GetVolumeId()))
	if err != nil {
		return err
	}
	defer unlock()
	exists, err := d.node.Exists(target)
	if err != nil {
		return fmt.Errorf("target_path: %w", err)
	}
	if !exists {
		return d.unpublishEphemeral(ctx, req.GetVolumeId(), target)
	}
	id, known, err := d.publishedIdentity(ctx, req.GetVolumeId())
	if err != nil {
		return err
	}
	if !known {
		d.log.Warn("unpublish: no such volume on this node; target left untouched", "volume", req.GetVolumeId(), "target", target)
		return nil
	}
	n, foreign, err := d.node.Unpublish(ctx, target, id)
	if err != nil {
		return err
	}
	if foreign {
		d.log.Warn("unpublish: target_path holds a mount that is not this volume's; left untouched", "volume", req.GetVolumeId(), "target", target, "unmounted", n)
		return nil
	}
	if n > 0 {
		d.log.Info("volume unpublished", "volume", req.GetVolumeId(), "target", target, "unmounted", n)
	}
	return d.unpublishEphemeral(ctx, req.GetVolumeId(), target)
}

// publishedIdentity is the identity of what NodePublishVolume would have
// mounted for volID: the volume's, or for an ephemeral volume (published
// under kubelet's ID) the identity of the volume made for it. known is
// false when there is no such volume here.
func (d *Driver) publishedIdentity(ctx context.Context, volID string) (node.Identity, bool, error) {
	nv, err := d.findVolume(ctx, volID, nil)
	if errdefs.Is(err, errdefs.ErrNotFound) && d.store != nil {
		var rec store.Volume
		err = d.store.View(ctx, func(tx *store.Tx) (err error) { rec, err = tx.VolumeByName(volID); return })
		if err == nil && rec.Ephemeral {
			nv, err = d.findVolume(ctx, rec.ID, nil)
		} else if err == nil {
			err = fmt.Errorf("volume %s: %w", volID, errdefs.ErrNotFound)
		}
	}
	if errdefs.Is(err, errdefs.ErrNotFound) {
		return node.Identity{}, false, nil
	}
	if err != nil {
		return node.Identity{}, false, err
	}
	id, err := d.node.IdentityOf(ctx, nv.src)
	return id, err == nil, err
}

// NodeGetVolumeStats implements csi.NodeServer.
func (d *Driver) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	if err := requireID("volume_id", req.GetVolumeId()); err != nil {
		return nil, err
	}
	path := req.GetVolumePath()
	if err := requireVolumePath("volume_path", path); err != nil {
		return nil, err
	}
	if p := req.GetStagingTargetPath(); p != "" {
		if err := requirePath("staging_target_path", p); err != nil {
			return nil, err
		}
	}
	nv, err := d.findVolume(ctx, req.GetVolumeId(), nil)
	if err != nil {
		return nil, err
	}
	id, err := d.node.IdentityOf(ctx, nv.src)
	if err != nil {
		return nil, err
	}
	st, err := d.node.Inspect(path, id)
	if err != nil {
		return nil, err
	}
	if !st.Exists || !st.Mounted || !st.Ours {
		return nil, fmt.Errorf("volume %s is not mounted at %q: %w", nv.id, path, errdefs.ErrNotFound)
	}
	u, err := d.usageAt(ctx, nv, path)
	if err != nil {
		return nil, err
	}
	resp := &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{
		Unit: csi.VolumeUsage_BYTES, Total: u.TotalBytes, Used: u.UsedBytes, Available: u.AvailableBytes,
	}}}
	if u.TotalInodes > 0 {
		resp.Usage = append(resp.Usage, &csi.VolumeUsage{
			Unit: csi.VolumeUsage_INODES, Total: u.TotalInodes, Used: u.UsedInodes, Available: u.AvailableInodes,
		})
	}
	return resp, nil
}

// usageAt reports usage: a block device's size, a filesystem image's
// statfs, or what the pool knows of a directory volume.
func (d *Driver) usageAt(ctx context.Context, nv nodeVolume, path string) (backend.Usage, error) {
	if nv.src.Kind == backend.SourceBlockDevice {
		return blockDeviceUsage(nv, path)
	}
	if nv.src.Kind == backend.SourceImageFile {
		fi, err := os.Stat(path)
		if err != nil {
			return backend.Usage{}, err
		}
		if fi.Mode()&fs.ModeDevice != 0 {
			img, err := os.Stat(nv.src.Path)
			if err != nil {
				return backend.Usage{}, err
			}
			size := img.Size()
			if isLUKS, _ := isLUKSVolume(nv); isLUKS {
				size -= luks.HeaderBytes
			}
			return backend.Usage{TotalBytes: size}, nil
		}
		// The workload sees the filesystem inside the image; the pool's
		// Usage describes the image file (its allocated blocks).
		return backend.StatfsUsage(path)
	}
	return nv.b.Usage(ctx, nv.id)
}

// NodeExpandVolume implements csi.NodeServer. When the controller has not
// grown the volume (node-only expansion in Kubernetes, see
// docs/kubernetes.md), it does so here; then it makes the loop device and
// filesystem see the new size.
func (d *Driver) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	if err := requireID("volume_id", req.GetVolumeId()); err != nil {
		return nil, err
	}
	path := req.GetVolumePath()
	if err := requireVolumePath("volume_path", path); err != nil {
		return nil, err
	}
	if c := req.GetVolumeCapability(); c != nil {
		if err := checkCapability("volume_capability", c); err != nil {
			return nil, err
		}
	}
	unlock, err := d.lock(volKey(req.GetVolumeId()))
	if err != nil {
		return nil, err
	}
	defer unlock()
	nv, err := d.findVolume(ctx, req.GetVolumeId(), nil)
	if err != nil {
		return nil, err
	}
	if err := d.checkExpandPath(ctx, nv, req.GetVolumeCapability(), path); err != nil {
		return nil, err
	}
	size := int64(0)
	if nv.rec != nil {
		size = nv.rec.CapacityBytes
		if want := req.GetCapacityRange().GetRequiredBytes(); want > size {
			_, size, err = d.expandVolume(ctx, nv.id, req.GetCapacityRange())
			if err != nil {
				return nil, err
			}
		}
	}
	if nv.src.Kind == backend.SourceBlockDevice {
		if err := d.growBlockDeviceOnNode(ctx, nv, path); err != nil {
			return nil, err
		}
	}
	if nv.src.Kind == backend.SourceImageFile && d.node.HasLoops() {
		if err := d.growImageOnNode(ctx, nv, path); err != nil {
			return nil, err
		}
		if size == 0 {
			if fi, err := os.Stat(nv.src.Path); err == nil {
				size = fi.Size()
			}
		}
	}
	if size == 0 {
		size = req.GetCapacityRange().GetRequiredBytes()
	}
	return &csi.NodeExpandVolumeResponse{CapacityBytes: size}, nil
}

// checkExpandPath makes sure volume_path is where this volume is: for a
// filesystem, a mount of the volume; for a block volume, the device's bind
// mount, or (Kubernetes passes a directory of its own for block volumes)
// any existing path while the volume is attached on this node. Anything
// else is NOT_FOUND, so a caller cannot make the node grow or report on a
// path that is not the volume's.
func (d *Driver) checkExpandPath(ctx context.Context, nv nodeVolume, c *csi.VolumeCapability, path string) error {
	id, err := d.node.IdentityOf(ctx, nv.src)
	if err != nil {
		return err
	}
	st, err := d.node.Inspect(path, id)
	if err != nil {
		return fmt.Errorf("volume_path: %w", err)
	}
	if st.Mounted && st.Ours {
		return nil
	}
	block := c.GetBlock() != nil || (nv.rec != nil && nv.rec.AccessType == store.AccessBlock)
	if block && st.Exists && nv.src.Kind == backend.SourceBlockDevice {
		return nil // the device is there whenever the LV is active
	}
	if block && st.Exists && nv.src.Kind == backend.SourceImageFile && d.node.HasLoops() {
		if devs, err := d.node.Loops().Find(ctx, nv.src.Path); err == nil && len(devs) > 0 {
			return nil
		}
	}
	return fmt.Errorf("volume %s is not mounted at volume_path %q: %w", nv.id, path, errdefs.ErrNotFound)
}

// growImageOnNode refreshes the loop device's size and grows a mounted
// filesystem online.
//
// Only a filesystem this driver mounted at path is grown. For block access
// the device size is all there is: path is then the device's bind mount
// or a plain directory (Kubernetes passes one), and a filesystem the
// workload made on its raw device is the workload's to grow, or not.
func (d *Driver) growImageOnNode(ctx context.Context, nv nodeVolume, path string) error {
	devs, err := d.node.Loops().Find(ctx, nv.src.Path)
	if err != nil {
		return err
	}
	for _, dev := range devs {
		if err := d.node.Loops().Refresh(ctx, dev); err != nil {
			return fmt.Errorf("refresh %s: %w", dev, err)
		}
	}
	if len(devs) == 0 {
		return nil // not attached: the next stage sees the new size
	}
	dev, err := d.volumeDevice(ctx, nv)
	if err != nil {
		return err
	}
	if dev != devs[0] { // an open LUKS mapping: it must fill the grown device
		if err := d.node.ResizeMapping(ctx, nv.id); err != nil {
			return err
		}
	}
	if ok, err := d.filesystemMountedAt(ctx, nv, path); err != nil || !ok {
		return err
	}
	return d.node.ResizeFS(ctx, dev, path)
}

// filesystemMountedAt reports whether path is a mount of nv's filesystem:
// the one case where the node grows a filesystem. A block volume's
// filesystem, if the workload made one on its raw device, is the
// workload's to grow.
func (d *Driver) filesystemMountedAt(ctx context.Context, nv nodeVolume, path string) (bool, error) {
	if nv.rec != nil && nv.rec.AccessType == store.AccessBlock {
		return false, nil
	}
	id, err := d.node.IdentityOf(ctx, nv.src)
	if err != nil {
		return false, err
	}
	st, err := d.node.Inspect(path, id)
	if err != nil {
		return false, err
	}
	fi, err := os.Stat(path)
	return err == nil && fi.IsDir() && st.Mounted && st.Ours, nil
}

// NodeGetCapabilities implements csi.NodeServer.
func (d *Driver) NodeGetCapabilities(ctx context.Context, _ *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	rpcs := []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH,
		csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	}
	if d.anyPool(func(b backend.Backend) bool { _, ok := b.(backend.Expander); return ok }) {
		rpcs = append(rpcs, csi.NodeServiceCapability_RPC_EXPAND_VOLUME)
	}
	resp := &csi.NodeGetCapabilitiesResponse{}
	for _, r := range rpcs {
		resp.Capabilities = append(resp.Capabilities, &csi.NodeServiceCapability{
			Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: r}}})
	}
	return resp, nil
}

// NodeGetInfo implements csi.NodeServer.
func (d *Driver) NodeGetInfo(ctx context.Context, _ *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{
		NodeId:             d.cfg.NodeID,
		MaxVolumesPerNode:  d.cfg.MaxVolumesPerNode,
		AccessibleTopology: d.topology(),
	}, nil
}

// reconcileNode reports the node's state at start-up. Mounts and loop
// devices of volumes are not torn down: after a driver restart, workloads
// are still using them.
func (d *Driver) reconcileNode(ctx context.Context) {
	if !d.node.HasLoops() {
		return
	}
	d.reconcileLoops(ctx)
}

func firstNonEmpty(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
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
