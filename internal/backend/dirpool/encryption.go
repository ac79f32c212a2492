package dirpool

import (
	"context"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/fscrypt"
)

// Encryption: a volume directory gets an fscrypt v2 policy with a master
// key of its own, which the driver derives from the claim's secret. The
// node adds the key to the filesystem's keyring at stage and removes it at
// unstage; without it, names and contents on disk are ciphertext. The pool
// adds keys only for the length of one copy, and removes only the keys it
// added: a key already loaded belongs to a staged volume.

var (
	_ backend.Encrypter            = (*Pool)(nil)
	_ backend.EncryptedSnapshotter = (*Pool)(nil)
)

// EncryptionMechanism implements backend.Encrypter.
func (p *Pool) EncryptionMechanism() string { return "fscrypt" }

// CanEncrypt implements backend.Encrypter.
func (p *Pool) CanEncrypt(ctx context.Context) error {
	if err := fscrypt.Supported(p.Volumes.Path); err != nil {
		return fmt.Errorf("dir pool %s: %w", p.Root, err)
	}
	return nil
}

// loadKey adds key to the pool filesystem's keyring. It returns the key's
// identifier and a function that removes it again if it was not loaded
// before.
func (p *Pool) loadKey(key []byte) (fscrypt.KeyID, func(), error) {
	id, err := fscrypt.Identifier(key)
	if err != nil {
		return id, nil, err
	}
	present, err := fscrypt.KeyPresent(p.Volumes.Path, id)
	if err != nil {
		return id, nil, err
	}
	if present {
		return id, func() {}, nil
	}
	if _, err := fscrypt.AddKey(p.Volumes.Path, key); err != nil {
		return id, nil, err
	}
	return id, func() {
		if _, err := fscrypt.RemoveKey(p.Volumes.Path, id); err != nil {
			p.Log.Error("dir pool: remove a key loaded for a copy", "key", id.String(), "err", err)
		}
	}, nil
}

// withKeys runs fn with enc's keys loaded; fn gets the new volume's policy
// (nil when enc is nil).
func (p *Pool) withKeys(enc *backend.Encryption, fn func(policy *fscrypt.KeyID) error) error {
	if enc == nil {
		return fn(nil)
	}
	if err := p.CanEncrypt(context.Background()); err != nil {
		return err
	}
	id, unload, err := p.loadKey(enc.Key)
	if err != nil {
		return err
	}
	defer unload()
	if enc.SourceKey != nil {
		_, unloadSrc, err := p.loadKey(enc.SourceKey)
		if err != nil {
			return err
		}
		defer unloadSrc()
	}
	return fn(&id)
}

// lockedError explains a copy that failed because an encrypted source's
// key is not loaded.
func (p *Pool) lockedError(err error) error {
	if errors.Is(err, unix.ENOKEY) {
		return fmt.Errorf("%w: %w", fscrypt.ErrNoKey, err)
	}
	return err
}

// CreateEncryptedSnapshot implements backend.EncryptedSnapshotter: the
// snapshot is encrypted with the volume's own key, so a restore needs the
// same secret as the volume.
func (p *Pool) CreateEncryptedSnapshot(ctx context.Context, snapID, volID string, key []byte, commit func(backend.Snapshot) error) (backend.Snapshot, error) {
	src, err := p.Source(ctx, volID)
	if err != nil {
		return backend.Snapshot{}, err
	}
	id, encrypted, err := fscrypt.Policy(src.Path)
	if errors.Is(err, fscrypt.ErrNotSupported) {
		encrypted, err = false, nil
	}
	if err != nil {
		return backend.Snapshot{}, err
	}
	if !encrypted {
		return p.createSnapshot(ctx, snapID, volID, src, nil, commit)
	}
	if key != nil {
		got, err := fscrypt.Identifier(key)
		if err != nil {
			return backend.Snapshot{}, err
		}
		if got != id {
			return backend.Snapshot{}, fmt.Errorf("snapshot of %s: the key given is not the volume's: %w", volID, errdefs.ErrPermissionDenied)
		}
		_, unload, err := p.loadKey(key)
		if err != nil {
			return backend.Snapshot{}, err
		}
		defer unload()
	}
	return p.createSnapshot(ctx, snapID, volID, src, &id, commit)
}
