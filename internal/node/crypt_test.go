package node

import (
	"testing"

	"github.com/cairn-csi/cairn/internal/backend"
)

// TestDirEncryptionNone: only a directory with an fscrypt policy is
// encrypted; any other source, or a plain directory, is not, and no key
// is asked for.
func TestDirEncryptionNone(t *testing.T) {
	n := New(Config{})
	for _, src := range []backend.Source{
		{Kind: backend.SourceImageFile, Path: "/pool/vol-1.img"},
		{Kind: backend.SourceBlockDevice, Path: "/dev/vg/vol-1"},
		{Kind: backend.SourceDirectory, Path: t.TempDir()},
	} {
		if _, encrypted, err := n.DirEncryption(src); err != nil || encrypted {
			t.Errorf("DirEncryption(%v) = %v, %v; want false, nil", src, encrypted, err)
		}
	}
}

// TestMappingClosed: a volume whose mapping was never opened has none.
func TestMappingClosed(t *testing.T) {
	if p, open := Mapping("vol-unit-test-never-opened"); open || p == "" {
		t.Errorf("Mapping = %q, %v; want its path, closed", p, open)
	}
}
