package node

import (
	"testing"

	"github.com/cairn-csi/cairn/internal/fsprobe"
)

// TestNeedsGrow closes issue 10 item 9c at the decision: an unchanged
// volume (or one whose tail the tools cannot use) is not grown; any
// expansion by the pools' 1 MiB granularity is.
func TestNeedsGrow(t *testing.T) {
	xfs := fsprobe.Info{Type: "xfs", BlockSize: 4096, SectorSize: 4096, Size: 300 << 20}
	for _, tc := range []struct {
		dev  int64
		want bool
	}{
		{300 << 20, false},
		{300<<20 + 4096, false},
		{301 << 20, true},
		{600 << 20, true},
	} {
		if got := NeedsGrow(xfs, tc.dev); got != tc.want {
			t.Errorf("NeedsGrow(xfs of 300 MiB, device %d) = %v, want %v", tc.dev, got, tc.want)
		}
	}
}
