package driver

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/store"
)

// newDirDriver makes a started driver (cfg as newDriverOver completes it)
// over a real dir pool named "default" in t.TempDir(), with a fake mounter, and returns the pool's
// root. Creating a dir volume needs no root (without project quota the
// pool just makes directories).
func newDirDriver(t *testing.T, cfg Config) (*Driver, string) {
	t.Helper()
	root := filepath.Join(t.TempDir(), "pool")
	d, _ := newDriverOver(t, cfg, []Pool{{Name: "default", Backend: newDirPool(t, root)}}, fakeMounter())
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return d, root
}

// planFor runs the first two steps of createVolume on req, as
// createVolume does for a request without a content source.
func planFor(d *Driver, req *csi.CreateVolumeRequest) (createPlan, error) {
	a, err := d.checkCreate(req)
	if err != nil {
		return createPlan{}, err
	}
	return d.planCreate(context.Background(), req, a, backend.ContentSource{}, "", 0)
}

func mountCaps() []*csi.VolumeCapability {
	return []*csi.VolumeCapability{{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}}
}

// TestPlanCreate covers the create decision over a real dir pool: pool
// choice, size, capacity admission and idempotency. "taken" exists before
// each case, made by a real CreateVolume of 1 MiB.
func TestPlanCreate(t *testing.T) {
	const mib = 1 << 20
	d, root := newDirDriver(t, Config{})
	taken, err := d.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "taken", VolumeCapabilities: mountCaps(),
		CapacityRange: &csi.CapacityRange{RequiredBytes: mib}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		req       *csi.CreateVolumeRequest
		code      codes.Code // of the plan's error, OK for none
		existing  bool
		want, lim int64
	}{
		{name: "new, default size", req: &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: mountCaps()},
			want: 1 << 30},
		{name: "new, required", req: &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: mountCaps(),
			CapacityRange: &csi.CapacityRange{RequiredBytes: 5 * mib}}, want: 5 * mib},
		{name: "new, limit below default", req: &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: mountCaps(),
			CapacityRange: &csi.CapacityRange{LimitBytes: 3 * mib}}, want: 3 * mib, lim: 3 * mib},
		{name: "new, more than the pool holds", req: &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: mountCaps(),
			CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 62}}, code: codes.ResourceExhausted},
		{name: "required above limit", req: &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: mountCaps(),
			CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * mib, LimitBytes: mib}}, code: codes.OutOfRange},
		{name: "unknown pool", req: &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: mountCaps(),
			Parameters: map[string]string{ParamPool: "nope"}}, code: codes.InvalidArgument},
		{name: "mkfs options on a dir pool", req: &csi.CreateVolumeRequest{Name: "a", VolumeCapabilities: mountCaps(),
			Parameters: map[string]string{ParamMkfsOptions: "-m 0"}}, code: codes.InvalidArgument},
		{name: "repeat, compatible", req: &csi.CreateVolumeRequest{Name: "taken", VolumeCapabilities: mountCaps(),
			CapacityRange: &csi.CapacityRange{RequiredBytes: mib}}, existing: true, want: mib},
		{name: "repeat, no range", req: &csi.CreateVolumeRequest{Name: "taken", VolumeCapabilities: mountCaps()},
			existing: true, want: 1 << 30},
		{name: "repeat, needs more", req: &csi.CreateVolumeRequest{Name: "taken", VolumeCapabilities: mountCaps(),
			CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * mib}}, code: codes.AlreadyExists},
		{name: "repeat, other parameters", req: &csi.CreateVolumeRequest{Name: "taken", VolumeCapabilities: mountCaps(),
			Parameters: map[string]string{ParamPool: "default"}}, code: codes.AlreadyExists},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := planFor(d, tt.req)
			if got := status.Code(atEdge(err)); got != tt.code {
				t.Fatalf("code = %v (%v), want %v", got, err, tt.code)
			}
			if err != nil {
				return
			}
			if p.poolName != "default" || p.access != backend.AccessMount {
				t.Errorf("plan pool %q access %v, want default, mount", p.poolName, p.access)
			}
			if (p.existing != nil) != tt.existing {
				t.Fatalf("existing = %v, want %v", p.existing, tt.existing)
			}
			if tt.existing && p.existing.ID != taken.GetVolume().GetVolumeId() {
				t.Errorf("existing = %s, want %s", p.existing.ID, taken.GetVolume().GetVolumeId())
			}
			if p.want != tt.want || p.limit != tt.lim {
				t.Errorf("size %d limit %d, want %d, %d", p.want, p.limit, tt.want, tt.lim)
			}
		})
	}

	// Planning changed nothing: the pool holds only "taken", and so does
	// the store.
	ents, err := os.ReadDir(filepath.Join(root, "volumes"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != taken.GetVolume().GetVolumeId() {
		t.Errorf("pool volumes after planning: %v, want only %s", ents, taken.GetVolume().GetVolumeId())
	}
	var n int
	if err := d.store.View(context.Background(), func(tx *store.Tx) error {
		vs, _, err := tx.Volumes("", 0)
		n = len(vs)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("store holds %d volumes after planning, want 1", n)
	}
}
