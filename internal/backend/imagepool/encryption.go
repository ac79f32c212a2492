package imagepool

import (
	"context"
	"fmt"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/luks"
)

// Encryption: an encrypted volume's image starts with a LUKS2 header
// (luks.HeaderBytes) written at create with the volume's key; the node
// opens it with dm-crypt at stage. The image is the header plus the
// capacity, and every size the pool reports is the capacity. A snapshot is
// a copy of the ciphertext and needs no key; a restore or clone is a copy
// moved from its source's key slot to its own.

var (
	_ backend.Encrypter            = (*Pool)(nil)
	_ backend.EncryptedSnapshotter = (*Pool)(nil)
)

// EncryptionMechanism implements backend.Encrypter.
func (p *Pool) EncryptionMechanism() string { return "luks2" }

// CanEncrypt implements backend.Encrypter: the node needs device-mapper
// and cryptsetup.
func (p *Pool) CanEncrypt(ctx context.Context) error {
	if err := luks.Supported(); err != nil {
		return fmt.Errorf("image pool %s: %w", p.Root, err)
	}
	return nil
}

// CreateEncryptedSnapshot implements backend.EncryptedSnapshotter: the
// copy of an encrypted image is ciphertext with the source's key slot, so
// no key is needed.
func (p *Pool) CreateEncryptedSnapshot(ctx context.Context, snapID, volID string, _ []byte, commit func(backend.Snapshot) error) (backend.Snapshot, error) {
	return p.CreateSnapshot(ctx, snapID, volID, commit)
}

// headerBytes is the room path's LUKS header takes: 0 for a plain image.
func headerBytes(path string) int64 {
	if ok, err := luks.IsLUKS(path); err == nil && ok {
		return luks.HeaderBytes
	}
	return 0
}

// capacityOf is the capacity the image at path offers its filesystem or
// workload.
func capacityOf(path string) (int64, error) {
	size, err := imageSize(path)
	if err != nil {
		return 0, err
	}
	return size - headerBytes(path), nil
}

// encryptNew writes the LUKS header of a new, empty image.
func encryptNew(ctx context.Context, path string, enc *backend.Encryption) error {
	return luks.FormatVolume(ctx, path, enc.Key)
}

// encryptCopy moves a copied image to the new volume's key: an encrypted
// source's slot is replaced by the new key's (luks.CheckCopy says which
// copies can be made).
func encryptCopy(ctx context.Context, path string, enc *backend.Encryption) error {
	ok, err := luks.IsLUKS(path)
	if err != nil {
		return err
	}
	if err := luks.CheckCopy(ok, enc != nil, enc != nil && enc.SourceKey != nil); err != nil || enc == nil {
		return err
	}
	return luks.MoveCopy(ctx, path, enc.SourceKey, enc.Key)
}
