package driver

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// blockPool is a fakePool whose mount volumes the node formats, as the
// lvm pool's are (it serves raw block volumes, and keeps no image files).
type blockPool struct{ fakePool }

func (p *blockPool) SupportsBlock() bool { return true }

// TestMkfsOptionsFollowFormatting: mkfsOptions and filesystem mount flags
// are taken for pools whose volumes the node formats (image, lvm) and
// refused, naming the reason, for directory pools.
func TestMkfsOptionsFollowFormatting(t *testing.T) {
	ctx := context.Background()
	d, _, _ := newTestDriver(t)
	bp := &blockPool{}
	d.pools["lvm"] = bp
	d.poolOrder = append(d.poolOrder, "lvm")
	c := &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4", MountFlags: []string{"noatime", "data=ordered"}}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
	for _, tc := range []struct {
		pool string
		code codes.Code
		msg  string
	}{
		{"lvm", codes.Unknown, "reached the backend"},
		{"default", codes.InvalidArgument, "formats nothing"},
	} {
		_, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "m-" + tc.pool, VolumeCapabilities: []*csi.VolumeCapability{c},
			Parameters: map[string]string{"pool": tc.pool, "mkfsOptions": "-E lazy_itable_init=0"}})
		if tc.code == codes.Unknown {
			if !errors.Is(err, errReached) && !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("pool %s: CreateVolume = %v, want it to reach the backend", tc.pool, err)
			}
			continue
		}
		if status.Code(atEdge(err)) != tc.code || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("pool %s: CreateVolume = %v, want %v saying %q", tc.pool, err, tc.code, tc.msg)
		}
	}
	if len(bp.creates) != 1 {
		t.Errorf("the lvm-like pool got %d creates, want 1", len(bp.creates))
	}
}
