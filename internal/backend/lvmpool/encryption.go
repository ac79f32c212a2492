//go:build linux

package lvmpool

import (
	"context"
	"fmt"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/luks"
)

// Encryption, as for image volumes: an encrypted volume's LV starts with a
// LUKS2 header (luks.HeaderBytes) written at create with the volume's key,
// and carries TagEncryption, which is how the pool knows: the LV's content
// is the workload's. The LV is the capacity plus the header, rounded to
// whole extents, and every size the pool reports is the LV's less the
// header. A thin snapshot is ciphertext under its volume's key slot and
// needs no key; a restore or clone is a thin snapshot moved from its
// source's key slot to its own (luks.MoveCopy) before it is committed.

var (
	_ backend.Encrypter            = (*Pool)(nil)
	_ backend.EncryptedSnapshotter = (*ThinPool)(nil)
	_ backend.Activator            = (*Pool)(nil)
	_ backend.HealthChecker        = (*Pool)(nil)
)

// EncryptionMechanism implements backend.Encrypter.
func (p *Pool) EncryptionMechanism() string { return encryptionLUKS }

// CanEncrypt implements backend.Encrypter: the node needs dm-crypt and
// cryptsetup.
func (p *Pool) CanEncrypt(ctx context.Context) error {
	if err := luks.Supported(); err != nil {
		return fmt.Errorf("lvm pool %s: %w", p.spec, err)
	}
	return nil
}

// CreateEncryptedSnapshot implements backend.EncryptedSnapshotter: a thin
// snapshot copies the ciphertext and the header with it, so no key is
// needed.
func (p *ThinPool) CreateEncryptedSnapshot(ctx context.Context, snapID, volID string, _ []byte, commit func(backend.Snapshot) error) (backend.Snapshot, error) {
	return p.CreateSnapshot(ctx, snapID, volID, commit)
}

// headerOf is the room lv's LUKS header takes: 0 for a plain LV.
func headerOf(lv LV) int64 {
	if v, _ := lv.Tag(TagEncryption); v == encryptionLUKS {
		return luks.HeaderBytes
	}
	return 0
}

// capacity is what lv offers its filesystem or workload.
func capacity(lv LV) int64 { return lv.Size - headerOf(lv) }

// specHeader is the header a volume created for spec has.
func specHeader(spec backend.Spec) int64 {
	if spec.Encryption != nil {
		return luks.HeaderBytes
	}
	return 0
}

// lvSize is the LV size for a capacity of want bytes (at least floor, at
// most limit, 0: none) behind a header of header bytes, in whole extents.
// The capacity reported is then exactly the LV's size less the header.
func lvSize(want, floor, limit, header, extent int64) (int64, error) {
	if limit > 0 {
		limit += header
	}
	return roundSize(want+header, floor+header, limit, extent)
}

// checkCopyEncryption refuses, before anything is made, a restore or clone
// whose encryption does not fit its source's.
func checkCopyEncryption(sourceEncrypted bool, enc *backend.Encryption) error {
	return luks.CheckCopy(sourceEncrypted, enc != nil, enc != nil && enc.SourceKey != nil)
}

// Activate implements backend.Activator: an inactive volume (after a
// reboot with auto-activation off, or deactivated by an administrator) is
// activated, since Cairn owns it and NodeStageVolume is about to use it.
// A partial LV is refused: it is missing a physical volume, and lvm2
// would activate it only in a degraded mode that loses writes.
func (p *Pool) Activate(ctx context.Context, id string) error {
	if checkName(id) != nil {
		return fmt.Errorf("volume %s in pool %s: %w", id, p.spec, errdefs.ErrNotFound)
	}
	lv, ok, err := p.owned(ctx, id, kindVolume)
	if errdefs.Is(err, errdefs.ErrAlreadyExists) || err == nil && !ok {
		return fmt.Errorf("volume %s in pool %s: %w", id, p.spec, errdefs.ErrNotFound)
	}
	if err != nil {
		return err
	}
	if lv.Partial() {
		return fmt.Errorf("volume %s: LV %s/%s is partial (a physical volume is missing): %w", id, p.vg, id, errdefs.ErrUnavailable)
	}
	if lv.Active {
		return nil
	}
	if err := p.activate(ctx, id); err != nil {
		return fmt.Errorf("volume %s: LV %s/%s is inactive and did not activate: %w", id, p.vg, id, err)
	}
	p.log.Info("lvm pool: activated an inactive volume for stage", "lv", p.vg+"/"+id)
	return nil
}

// VolumeCondition implements backend.HealthChecker from one lvs report. It
// never activates anything: an inactive LV is abnormal until something
// activates it (NodeStageVolume, or an administrator), so that health
// says what is, not what a check made of it.
func (p *Pool) VolumeCondition(ctx context.Context, id string) (backend.Condition, error) {
	name := p.vg + "/" + id
	if checkName(id) != nil {
		return backend.Condition{Abnormal: true, Reason: "DataMissing", Message: fmt.Sprintf("volume %s cannot name an LV in %s", id, p.spec)}, nil
	}
	lv, ok, err := p.owned(ctx, id, kindVolume)
	switch {
	case errdefs.Is(err, errdefs.ErrAlreadyExists):
		return backend.Condition{Abnormal: true, Reason: "DataMissing", Message: fmt.Sprintf("LV %s is not Cairn's (its tags are not this pool's): the volume's LV is gone and another took its name", name)}, nil
	case err != nil:
		return backend.Condition{}, err
	case !ok:
		return backend.Condition{Abnormal: true, Reason: "DataMissing", Message: fmt.Sprintf("LV %s does not exist: it was removed outside Cairn, and the volume's data is gone", name)}, nil
	case lv.Partial():
		return backend.Condition{Abnormal: true, Reason: "Partial", Message: fmt.Sprintf("LV %s is partial (lv_attr %s): a physical volume of VG %s is missing; restore it (vgs -o+pv_missing), Cairn will not stage the volume until then", name, lv.Attr, p.vg)}, nil
	case len(lv.Attr) > 8 && lv.Attr[8] == 'F':
		return backend.Condition{Abnormal: true, Reason: "Failed", Message: fmt.Sprintf("LV %s has failed (lv_attr %s); see lvs -a %s and the kernel log", name, lv.Attr, p.vg)}, nil
	case !lv.Active:
		return backend.Condition{Abnormal: true, Reason: "Inactive", Message: fmt.Sprintf("LV %s is inactive on this node: it has no device until the next NodeStageVolume activates it (or lvchange -ay %s)", name, name)}, nil
	}
	return backend.Condition{}, nil
}
