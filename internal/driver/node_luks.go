package driver

import (
	"context"
	"crypto/hkdf"
	"crypto/sha512"
	"fmt"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/luks"
	"github.com/cairn-csi/cairn/internal/node"
	"github.com/cairn-csi/cairn/internal/store"
)

// Encrypted image and block device (LVM) volumes: the image or LV holds a
// LUKS2 header (written by the pool at create) and ciphertext. Stage
// attaches the loop device (images) or activates the LV, opens it as the
// mapping cairn-<volume ID> with the volume's key, and formats, mounts or
// (block access) publishes the mapping. Unstage closes it before the loop
// device is detached; DeleteVolume closes it first too.

// SecretPreviousEncryptionPassphrase carries the passphrase being rotated
// away from: a stage whose encryptionPassphrase opens no key slot tries it
// and, if it opens one, moves the volume to the new passphrase.
const SecretPreviousEncryptionPassphrase = "previousEncryptionPassphrase"

// LUKSKey derives an image volume's LUKS key from the secret and the
// volume's ID: a key per volume, so a clone or restore is moved to its own
// key at create. Pools and the node derive it the same way.
func LUKSKey(secret []byte, id string) ([]byte, error) {
	return hkdf.Key(sha512.New, secret, []byte(id), "cairn luks2 volume key", 64)
}

// isLUKSVolume reports whether nv is an encrypted volume: an image with a
// LUKS header, or a block device its pool says it encrypted (its content
// is the workload's, so it is not sniffed).
func isLUKSVolume(nv nodeVolume) (bool, error) {
	switch nv.src.Kind {
	case backend.SourceImageFile:
		return luks.IsLUKS(nv.src.Path)
	case backend.SourceBlockDevice:
		return nv.src.LUKS, nil
	}
	return false, nil
}

// openLUKS opens the LUKS volume on loop device dev with the key from the
// stage secrets and returns the mapping's device. A wrong passphrase is
// PERMISSION_DENIED; with previousEncryptionPassphrase the volume is
// rekeyed to the new one first (node.OpenMapping).
func (d *Driver) openLUKS(ctx context.Context, nv nodeVolume, dev string, secrets map[string]string) (string, error) {
	secret, err := passphrase(secrets)
	if err != nil {
		return "", err
	}
	spec := node.MappingSpec{VolID: nv.id, Dev: dev, KeyName: "secrets." + SecretEncryptionPassphrase}
	if spec.Key, err = LUKSKey(secret, nv.id); err != nil {
		return "", err
	}
	if prev, ok := secrets[SecretPreviousEncryptionPassphrase]; ok {
		if spec.PrevKey, err = LUKSKey([]byte(prev), nv.id); err != nil {
			return "", err
		}
	}
	return d.node.OpenMapping(ctx, spec)
}

// reconcileMappings closes the LUKS mappings of encrypted image volumes
// that nothing mounts: left open by a crash between opening and mounting
// (stage:luks-opened) or between unmounting and closing, each holding the
// volume's key in the kernel with nothing staged. A volume with block
// access keeps its mapping: for it, an open mapping is the staged state,
// which publish bind-mounts. A mounted volume (the driver restarted under
// a running workload) keeps it too. Mappings of deleted volumes are
// reconcileLoops' to close.
func (d *Driver) reconcileMappings(ctx context.Context) {
	var vols []store.Volume
	err := d.store.View(ctx, func(tx *store.Tx) error {
		all, _, err := tx.Volumes("", 0)
		for _, v := range all {
			if v.Encryption == encryptionLUKS && v.AccessType == store.AccessMount {
				vols = append(vols, v)
			}
		}
		return err
	})
	if err != nil {
		d.log.Error("reconcile: list encrypted volumes", "err", err)
		return
	}
	for _, v := range vols {
		if _, open := node.Mapping(v.ID); !open {
			continue
		}
		pool, ok := d.pools[v.Pool]
		if !ok {
			continue
		}
		src, err := pool.Source(ctx, v.ID)
		// An image's mapping sits on its loop device, an lvm volume's on
		// the LV; node.IdentityOf finds either one's mounts through its holders.
		if err != nil || (src.Kind != backend.SourceImageFile && src.Kind != backend.SourceBlockDevice) {
			continue
		}
		if mps, err := d.node.MountsOf(ctx, src); err != nil || len(mps) > 0 {
			continue
		}
		if err := d.node.CloseMapping(ctx, v.ID); err != nil {
			d.log.Error("reconcile: cannot close the mapping of an encrypted volume that nothing mounts", "volume", v.ID, "err", err)
			continue
		}
		d.log.Warn("reconcile: closed the mapping of an encrypted volume that nothing mounts (left by a crash)", "volume", v.ID)
	}
}

// volumeDevice is the device an image volume's data is reached through on
// this node: its open LUKS mapping, or its loop device.
func (d *Driver) volumeDevice(ctx context.Context, nv nodeVolume) (string, error) {
	if p, open := node.Mapping(nv.id); open {
		return p, nil
	}
	devs, err := d.node.Loops().Find(ctx, nv.src.Path)
	if err != nil {
		return "", err
	}
	if len(devs) == 0 {
		return "", fmt.Errorf("volume %s is not staged (no loop device): %w", nv.id, errdefs.ErrFailedPrecondition)
	}
	return devs[0], nil
}
