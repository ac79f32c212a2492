package node

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/crashpoint"
	"github.com/cairn-csi/cairn/internal/fscrypt"
	"github.com/cairn-csi/cairn/internal/luks"
)

// MappingSpec is what the driver derived from a stage's secrets to open an
// encrypted volume's LUKS mapping.
type MappingSpec struct {
	VolID string
	Dev   string // the loop device or the LV
	Key   []byte // the volume's key from the current passphrase
	// PrevKey is the key from the passphrase being rotated away from; nil
	// when the request named none.
	PrevKey []byte
	// KeyName names where Key came from, for errors
	// ("secrets.encryptionPassphrase").
	KeyName string
}

// OpenMapping opens the LUKS volume on s.Dev as the volume's mapping and
// returns the mapping's device. A key that opens no slot is
// luks.ErrWrongKey (PERMISSION_DENIED) unless PrevKey opens one: then the
// volume is rekeyed to Key first.
func (n *Node) OpenMapping(ctx context.Context, s MappingSpec) (string, error) {
	if err := luks.Check(ctx, s.Dev, s.Key); errors.Is(err, luks.ErrWrongKey) {
		if s.PrevKey == nil {
			return "", fmt.Errorf("%s does not unlock volume %s: %w", s.KeyName, s.VolID, err)
		}
		if err := luks.Rekey(ctx, s.Dev, s.PrevKey, s.Key, luks.DefaultOptions()); err != nil {
			return "", fmt.Errorf("rotate volume %s to the new passphrase: %w", s.VolID, err)
		}
		n.log.Info("volume moved to a new passphrase", "volume", s.VolID)
	} else if err != nil {
		return "", err
	}
	mapping, err := luks.Open(ctx, s.Dev, luks.MappingName(s.VolID), s.Key)
	if err != nil {
		return "", fmt.Errorf("open volume %s: %w", s.VolID, err)
	}
	// A crash from here leaves the mapping open with nothing mounted, and
	// the volume's key in the kernel: start-up reconcile closes it
	// (the driver's reconcileMappings). The loop device stays, as after
	// any crash before a mount: the next stage reuses it, unstage
	// detaches it.
	crashpoint.Hit("stage:luks-opened")
	return mapping, nil
}

// Mapping returns the device of volume volID's LUKS mapping and whether
// it is open.
func Mapping(volID string) (string, bool) {
	p := luks.MappingPath(luks.MappingName(volID))
	_, err := os.Stat(p)
	return p, err == nil
}

// ResizeMapping makes volume volID's open LUKS mapping fill its grown
// device.
func (n *Node) ResizeMapping(ctx context.Context, volID string) error {
	if err := luks.Resize(ctx, luks.MappingName(volID)); err != nil {
		return fmt.Errorf("volume %s: %w", volID, err)
	}
	return nil
}

// DirEncryption reports whether directory volume src is encrypted and with
// which key (its fscrypt policy). Any other source, and a filesystem
// without fscrypt, is not encrypted.
func (n *Node) DirEncryption(src backend.Source) (fscrypt.KeyID, bool, error) {
	if src.Kind != backend.SourceDirectory {
		return fscrypt.KeyID{}, false, nil
	}
	kid, encrypted, err := fscrypt.Policy(src.Path)
	if errors.Is(err, fscrypt.ErrNotSupported) {
		return fscrypt.KeyID{}, false, nil
	}
	return kid, encrypted, err
}

// UnlockDir loads key, which the driver checked against the directory's
// policy, for encrypted directory volume volID.
func (n *Node) UnlockDir(volID string, src backend.Source, key []byte) error {
	if _, err := fscrypt.AddKey(src.Path, key); err != nil {
		return fmt.Errorf("load the key of volume %s: %w", volID, err)
	}
	// A crash from here to the mount leaves the key loaded with nothing
	// mounted: start-up reconcile drops it (the driver's reconcileKeys).
	crashpoint.Hit("stage:unlocked")
	return nil
}
