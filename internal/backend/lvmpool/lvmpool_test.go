//go:build linux

package lvmpool

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/backend/backendtest"
	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/testlvm"
)

const mib = 1 << 20

// newTestPool makes a VG (with a 256 MiB thin pool when thin) and opens a
// pool on it.
func newTestPool(t *testing.T, thin bool, opts Options) (backend.Backend, string) {
	t.Helper()
	var vg, spec string
	if thin {
		vg = testlvm.NewVG(t, 512*mib, 256*mib)
		spec = vg + "/" + testlvm.ThinPool
	} else {
		vg = testlvm.NewVG(t, 256*mib, 0)
		spec = vg
	}
	b, err := New(context.Background(), spec, opts)
	if err != nil {
		t.Fatal(err)
	}
	return b, vg
}

// TestSuite runs the shared backend suite on a thin and a thick pool.
// The pool's root, for the suite, is /dev/<vg>: volumes' device nodes are
// there, and the untagged LV testlvm makes is among its entries, so every
// "nothing left behind" check also checks that it was left alone. Runs
// in the VM lane (hack/vm-lane.sh); the host has no device-mapper.
func TestSuite(t *testing.T) {
	for _, tc := range []struct {
		name string
		thin bool
	}{{"thin", true}, {"thick", false}} {
		t.Run(tc.name, func(t *testing.T) {
			testlvm.Require(t)
			// One VG for all subtests, emptied of Cairn's LVs before each:
			// under TCG every lvm2 command costs about a second, and a fresh
			// VG takes eight of them.
			b, vg := newTestPool(t, tc.thin, Options{})
			backendtest.RunWith(t, func(t *testing.T) (backend.Backend, string) {
				emptyVG(t, b)
				return b, "/dev/" + vg
			}, backendtest.Options{Leftover: func(t *testing.T, b backend.Backend, name string) {
				p := poolOf(b)
				args := []string{"--quiet", "--yes", "--name", name}
				if p.thin != "" {
					args = append(args, "--thin", "--virtualsize", "4m")
				} else {
					args = append(args, "--size", "4m")
				}
				args = append(args, p.tags(kindVolume)...)
				testlvm.Run(t, "lvcreate", append(args, p.lvTarget())...)
			}})
		})
	}
}

// emptyVG removes every LV of b's pool, and leaves the thin pool inactive
// (active on its own it has a /dev/<vg> node, which would count as an
// entry of the pool).
func emptyVG(t *testing.T, b backend.Backend) {
	t.Helper()
	p := poolOf(b)
	lvs, err := p.lvs(context.Background(), p.vg)
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"--quiet", "--yes"}
	for _, lv := range lvs {
		if p.ours(lv) {
			args = append(args, p.vg+"/"+lv.Name)
		}
	}
	if len(args) > 2 {
		testlvm.Run(t, "lvremove", args...)
	}
	if p.thin != "" {
		testlvm.Run(t, "lvchange", "--quiet", "--activate", "n", p.vg+"/"+p.thin)
	}
}

func poolOf(b backend.Backend) *Pool {
	switch p := b.(type) {
	case *ThinPool:
		return p.Pool
	case *Pool:
		return p
	}
	panic("not an lvm pool")
}

// TestThickRefusesSnapshots: a thick pool is not a Snapshotter or
// ContentCreator, so the driver refuses those calls naming the pool type.
func TestThickRefusesSnapshots(t *testing.T) {
	var b backend.Backend = &Pool{}
	if _, ok := b.(backend.Snapshotter); ok {
		t.Error("a thick pool implements Snapshotter")
	}
	if _, ok := b.(backend.ContentCreator); ok {
		t.Error("a thick pool implements ContentCreator")
	}
}

// TestThinPoolFull fills a thin pool past the full threshold and checks
// that new volumes, clones, snapshots and expansions are refused with
// ErrResourceExhausted naming the pool and its fill level, that Capacity
// drops to zero, and that what was refused left nothing behind. It also
// checks the over-provisioning limit. VM lane.
func TestThinPoolFull(t *testing.T) {
	testlvm.Require(t)
	ctx := context.Background()
	b, vg := newTestPool(t, true, Options{FullPercent: 50, OverProvisionRatio: 2})
	tp := b.(*ThinPool)
	commit := func(backend.Volume) error { return nil }

	// Over-provisioning: 256 MiB x 2 = 512 MiB may be provisioned.
	if _, err := b.CreateVolume(ctx, "vol-big", backend.Spec{CapacityBytes: 513 * mib}, commit); !errdefs.Is(err, errdefs.ErrResourceExhausted) || !strings.Contains(err.Error(), "over-provisioning ratio 2") {
		t.Fatalf("a volume beyond the over-provisioning limit = %v, want ErrResourceExhausted", err)
	}
	if _, err := b.CreateVolume(ctx, "vol-a", backend.Spec{CapacityBytes: 200 * mib}, commit); err != nil {
		t.Fatal(err)
	}
	// Fill the thin pool to just over half: 136 MiB of 256.
	src, err := b.Source(ctx, "vol-a")
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(src.Path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, mib)
	for i := range buf {
		buf[i] = byte(i)
	}
	for i := 0; i < 136; i++ {
		if _, err := f.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()

	c, err := b.Capacity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c.AvailableBytes != 0 || c.MaxVolumeBytes != 0 {
		t.Errorf("Capacity of a thin pool over its full threshold = %+v, want nothing available", c)
	}
	want := "thin pool " + vg + "/tp is "
	for name, err := range map[string]error{
		"create": func() error {
			_, err := b.CreateVolume(ctx, "vol-b", backend.Spec{CapacityBytes: 8 * mib}, commit)
			return err
		}(),
		"snapshot": func() error {
			_, err := tp.CreateSnapshot(ctx, "snap-1", "vol-a", func(backend.Snapshot) error { return nil })
			return err
		}(),
		"clone": func() error {
			_, err := tp.CreateVolumeFrom(ctx, "vol-c", backend.Spec{CapacityBytes: 8 * mib}, backend.ContentSource{VolumeID: "vol-a"}, commit)
			return err
		}(),
		"expand": func() error { _, err := tp.ExpandVolume(ctx, "vol-a", 300*mib); return err }(),
	} {
		if !errdefs.Is(err, errdefs.ErrResourceExhausted) || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "% full (data)") {
			t.Errorf("%s on a full thin pool = %v, want ErrResourceExhausted saying %q...%% full (data)", name, err, want)
		}
	}
	lvs, err := tp.lvs(ctx, vg)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, lv := range lvs {
		names = append(names, lv.Name)
	}
	if strings.Join(names, ",") != "foreign,tp,vol-a" {
		t.Errorf("LVs after refused calls: %v, want foreign, tp and vol-a only", names)
	}
	// Freeing space lifts the refusal.
	if err := b.DeleteVolume(ctx, "vol-a", func() error { return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := b.CreateVolume(ctx, "vol-b", backend.Spec{CapacityBytes: 8 * mib}, commit); err != nil {
		t.Fatalf("create after the pool was emptied: %v", err)
	}
}

// TestReconcileLeavesUntaggedLVs: LVs without Cairn's tags survive
// Reconcile with an empty inventory, even with staging-like names, and so
// do another pool's LVs on the same VG. VM lane.
func TestReconcileLeavesUntaggedLVs(t *testing.T) {
	testlvm.Require(t)
	ctx := context.Background()
	b, vg := newTestPool(t, true, Options{})
	testlvm.Run(t, "lvcreate", "--quiet", "--yes", "--thin", "--virtualsize", "4m", "--name", "new-vol-x", vg+"/tp")
	testlvm.Run(t, "lvcreate", "--quiet", "--yes", "--size", "4m", "--name", "vol-y", "--addtag", TagOwner, "--addtag", TagPool+"="+vg, "--addtag", TagKind+"=volume", vg)
	if _, err := b.CreateVolume(ctx, "vol-mine", backend.Spec{CapacityBytes: mib}, func(backend.Volume) error { return nil }); err != nil {
		t.Fatal(err)
	}
	rep, err := b.Reconcile(ctx, backend.Inventory{Volumes: map[string]bool{}, Snapshots: map[string]bool{}})
	if err != nil || len(rep.Errors) > 0 {
		t.Fatalf("Reconcile = %+v, %v", rep, err)
	}
	if strings.Join(rep.Removed, ",") != vg+"/vol-mine" {
		t.Errorf("Reconcile removed %v, want only %s/vol-mine", rep.Removed, vg)
	}
	for _, name := range []string{testlvm.Foreign, "new-vol-x", "vol-y"} {
		if _, ok, err := poolOf(b).get(ctx, name); err != nil || !ok {
			t.Errorf("LV %s that is not this pool's is gone after Reconcile: %v", name, err)
		}
	}
	// An ID whose LV is not Cairn's is neither used nor deleted.
	if _, err := b.CreateVolume(ctx, testlvm.Foreign, backend.Spec{CapacityBytes: mib}, func(backend.Volume) error { return nil }); !errdefs.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("CreateVolume over an untagged LV = %v, want ErrAlreadyExists", err)
	}
	if _, err := b.Source(ctx, testlvm.Foreign); !errdefs.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Source of an untagged LV = %v, want ErrNotFound", err)
	}
}
