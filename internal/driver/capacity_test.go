package driver

import (
	"context"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/luks"
)

// luksPool is fakePool encrypting with LUKS2, as the image and lvm pools do.
type luksPool struct{ fakePool }

func (p *luksPool) CanEncrypt(ctx context.Context) error { return nil }
func (p *luksPool) EncryptionMechanism() string          { return "luks2" }

// fscryptPool is fakePool encrypting with fscrypt, as dir pools do: no header.
type fscryptPool struct{ fakePool }

func (p *fscryptPool) CanEncrypt(ctx context.Context) error { return nil }
func (p *fscryptPool) EncryptionMechanism() string          { return "fscrypt" }

var (
	_ backend.Encrypter = (*luksPool)(nil)
	_ backend.Encrypter = (*fscryptPool)(nil)
)

// TestGetCapacityEncrypted: the largest encrypted volume a LUKS2 pool can
// make is its largest volume less the header the image or LV also holds;
// fscrypt and plain volumes have no header.
func TestGetCapacityEncrypted(t *testing.T) {
	const maxVol = 1 << 50 // fakePool's MaxVolumeBytes
	d, _ := newDriverOver(t, Config{}, []Pool{{Name: "luks", Backend: &luksPool{}}, {Name: "fscrypt", Backend: &fscryptPool{}}}, fakeMounter())
	tests := []struct {
		pool, encryption string
		want             int64
	}{
		{"luks", "true", maxVol - luks.HeaderBytes},
		{"luks", "false", maxVol},
		{"luks", "", maxVol},
		{"fscrypt", "true", maxVol},
	}
	for _, tc := range tests {
		params := map[string]string{"pool": tc.pool}
		if tc.encryption != "" {
			params[ParamEncryption] = tc.encryption
		}
		resp, err := d.GetCapacity(context.Background(), &csi.GetCapacityRequest{Parameters: params})
		if err != nil {
			t.Errorf("%s encryption=%q: %v", tc.pool, tc.encryption, err)
			continue
		}
		if got := resp.GetMaximumVolumeSize().GetValue(); got != tc.want {
			t.Errorf("%s encryption=%q: maximum_volume_size %d, want %d", tc.pool, tc.encryption, got, tc.want)
		}
	}
}
