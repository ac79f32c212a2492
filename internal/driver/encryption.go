package driver

import (
	"context"
	"fmt"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/fscrypt"
	"github.com/cairn-csi/cairn/internal/node"
	"github.com/cairn-csi/cairn/internal/store"
)

// Per-volume encryption. A StorageClass turns it on with the parameter
// "encryption: true"; the key comes from the CSI secret
// encryptionPassphrase (per claim in Kubernetes, through the provisioner
// and node-stage secret templates). Each volume's master key is derived
// from the passphrase and the volume's ID, so one secret never yields one
// key for two volumes. The store keeps the key's identifier only.
const (
	ParamEncryption            = "encryption"
	SecretEncryptionPassphrase = "encryptionPassphrase"

	ctxEncryption = "cairn.csi.dev/encryption"
	ctxKeyID      = "cairn.csi.dev/keyID"

	encryptionFscrypt = "fscrypt"
	encryptionLUKS    = "luks2"

	// minPassphraseBytes refuses passphrases too short to be a key: the
	// key derivation does not stretch, so the secret must carry the
	// entropy (32 random bytes, base64-encoded, are recommended).
	minPassphraseBytes = 16
)

func parseEncryption(v string) (bool, error) {
	switch v {
	case "true":
		return true, nil
	case "false", "":
		return false, nil
	}
	return false, invalid("parameters.%s %q must be true or false", ParamEncryption, truncate(v))
}

// passphrase returns the encryption passphrase from a request's secrets.
func passphrase(secrets map[string]string) ([]byte, error) {
	v, ok := secrets[SecretEncryptionPassphrase]
	switch {
	case !ok || v == "":
		return nil, invalid("secrets.%s is required: the volume is encrypted with a key derived from it", SecretEncryptionPassphrase)
	case len(v) < minPassphraseBytes:
		return nil, invalid("secrets.%s is %d bytes; at least %d are required (32 random bytes are recommended)", SecretEncryptionPassphrase, len(v), minPassphraseBytes)
	}
	return []byte(v), nil
}

// volumeKey derives volume id's master key and its identifier.
func volumeKey(secret []byte, id string) ([]byte, fscrypt.KeyID, error) {
	key, err := fscrypt.DeriveKey(secret, id)
	if err != nil {
		return nil, fscrypt.KeyID{}, err
	}
	kid, err := fscrypt.Identifier(key)
	return key, kid, err
}

// checkCanEncrypt refuses encryption in a pool that cannot do it, at
// CreateVolume rather than at stage time.
func checkCanEncrypt(ctx context.Context, name string, pool backend.Backend) error {
	e, ok := pool.(backend.Encrypter)
	if !ok {
		return fmt.Errorf("parameters.%s: pool %q (%s) cannot encrypt volumes: %w", ParamEncryption, name, pool.Type(), errdefs.ErrFailedPrecondition)
	}
	if err := e.CanEncrypt(ctx); err != nil {
		return fmt.Errorf("parameters.%s: pool %q cannot encrypt volumes: %w", ParamEncryption, name, asPrecondition(err))
	}
	return nil
}

func asPrecondition(err error) error {
	if errdefs.Is(err, errdefs.ErrFailedPrecondition) {
		return err
	}
	return fmt.Errorf("%w: %w", err, errdefs.ErrFailedPrecondition)
}

// encryptionFor plans a new volume's encryption: its key, and the key of
// an encrypted content source (derived from the same secret: a restore or
// clone is unlocked with its source's secret). It refuses a plain volume
// made from encrypted content. The returned unlock releases the lock on a
// snapshot's source volume, held so that no stage or unstage of it loads or
// drops its key while the restore copies.
func (d *Driver) encryptionFor(ctx context.Context, pool backend.Backend, encrypt bool, secret []byte, id string, src backend.ContentSource) (*backend.Encryption, string, func(), error) {
	none := func() {}
	srcEncrypted, srcVolID, err := d.sourceEncryption(ctx, src)
	if err != nil {
		return nil, "", none, err
	}
	if srcEncrypted && !encrypt {
		return nil, "", none, invalid("volume_content_source is encrypted; a volume made from it must set parameters.%s: true", ParamEncryption)
	}
	if !encrypt {
		return nil, "", none, nil
	}
	e, _ := pool.(backend.Encrypter) // checkCanEncrypt made sure
	if e.EncryptionMechanism() == encryptionLUKS {
		// LUKS recognises its key by the header's key slots: nothing to
		// record, and the source's key only opens the copy to rekey it.
		enc := &backend.Encryption{}
		if enc.Key, err = LUKSKey(secret, id); err != nil {
			return nil, "", none, err
		}
		if srcEncrypted {
			if enc.SourceKey, err = LUKSKey(secret, srcVolID); err != nil {
				return nil, "", none, err
			}
		}
		return enc, "", none, nil
	}
	key, kid, err := volumeKey(secret, id)
	if err != nil {
		return nil, "", none, err
	}
	enc := &backend.Encryption{Key: key}
	unlock := none
	if srcEncrypted {
		if src.SnapshotID != "" {
			if unlock, err = d.lock(volKey(srcVolID)); err != nil {
				return nil, "", none, err
			}
		}
		if enc.SourceKey, err = fscrypt.DeriveKey(secret, srcVolID); err != nil {
			unlock()
			return nil, "", none, err
		}
	}
	return enc, kid.String(), unlock, nil
}

// sourceEncryption reports whether a content source is encrypted, and the
// volume whose key encrypts it.
func (d *Driver) sourceEncryption(ctx context.Context, src backend.ContentSource) (bool, string, error) {
	if src == (backend.ContentSource{}) {
		return false, "", nil
	}
	var enc, volID string
	err := d.store.View(ctx, func(tx *store.Tx) error {
		if src.SnapshotID != "" {
			s, err := tx.Snapshot(src.SnapshotID)
			enc, volID = s.Encryption, s.SourceVolumeID
			return err
		}
		v, err := tx.Volume(src.VolumeID)
		enc, volID = v.Encryption, v.ID
		return err
	})
	return enc != "", volID, err
}

// snapshotKey is the key a snapshot of encrypted volume v is made with:
// derived from the request's secret when there is one (checked against the
// volume), else nil, and the volume's key must then be loaded (staged).
func snapshotKey(v store.Volume, secrets map[string]string) ([]byte, error) {
	if _, ok := secrets[SecretEncryptionPassphrase]; !ok || v.Encryption == encryptionLUKS {
		return nil, nil // a LUKS image is copied as ciphertext
	}
	secret, err := passphrase(secrets)
	if err != nil {
		return nil, err
	}
	key, kid, err := volumeKey(secret, v.ID)
	if err != nil {
		return nil, err
	}
	if kid.String() != v.KeyID {
		return nil, fmt.Errorf("secrets.%s does not unlock volume %s: %w", SecretEncryptionPassphrase, v.ID, errdefs.ErrPermissionDenied)
	}
	return key, nil
}

// unlockDir loads the key of an encrypted directory volume from the
// stage request's secrets. The directory's own policy says whether the
// volume is encrypted and with which key, so this works in node mode,
// without the store. A secret that derives another key is refused before
// anything is loaded. It reports whether the volume is encrypted.
func (d *Driver) unlockDir(nv nodeVolume, secrets map[string]string) (bool, error) {
	want, encrypted, err := d.node.DirEncryption(nv.src)
	if err != nil {
		return true, err
	}
	if !encrypted {
		return false, nil
	}
	secret, err := passphrase(secrets)
	if err != nil {
		return true, err
	}
	key, kid, err := volumeKey(secret, nv.id)
	if err != nil {
		return true, err
	}
	if kid != want {
		return true, fmt.Errorf("secrets.%s does not unlock volume %s: %w", SecretEncryptionPassphrase, nv.id, errdefs.ErrPermissionDenied)
	}
	return true, d.node.UnlockDir(nv.id, nv.src, key)
}

// reconcileKeys drops the keys of encrypted volumes that nothing mounts:
// left loaded by a crash between unlocking and mounting, or during a copy
// that loaded a key for its length. A volume that is still mounted (the
// driver restarted under a running workload) keeps its key.
func (d *Driver) reconcileKeys(ctx context.Context) {
	var vols []store.Volume
	err := d.store.View(ctx, func(tx *store.Tx) error {
		all, _, err := tx.Volumes("", 0)
		for _, v := range all {
			if v.Encryption != "" {
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
		pool, ok := d.pools[v.Pool]
		if !ok {
			continue
		}
		src, err := pool.Source(ctx, v.ID)
		if err != nil || src.Kind != backend.SourceDirectory {
			continue
		}
		kid, encrypted, err := fscrypt.Policy(src.Path)
		if err != nil || !encrypted {
			continue
		}
		if present, err := fscrypt.KeyPresent(src.Path, kid); err != nil || !present {
			continue
		}
		if mps, err := d.node.MountsOf(ctx, src); err != nil || len(mps) > 0 {
			continue
		}
		if _, err := fscrypt.RemoveKey(node.KeyringDir(src), kid); err != nil {
			d.log.Error("reconcile: cannot drop the key of an unmounted encrypted volume", "volume", v.ID, "err", err)
			continue
		}
		d.log.Warn("reconcile: dropped the key of an encrypted volume that nothing mounts (left by a crash)", "volume", v.ID, "key", kid.String())
	}
}
