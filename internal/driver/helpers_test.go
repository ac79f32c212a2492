package driver

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	mount "k8s.io/mount-utils"
	testingexec "k8s.io/utils/exec/testing"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/backend/dirpool"
	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/store"
)

// errReached is what fakePool returns from every call that would change
// disk state: a request that gets this far has passed validation, and
// nothing is created, so tests and fuzz targets never touch a disk.
var errReached = errors.New("fake pool: reached the backend")

// fakePool is a backend that remembers what reached it.
type fakePool struct {
	creates []string // IDs passed to CreateVolume / CreateVolumeFrom
	specs   []backend.Spec
}

var (
	_ backend.Backend        = (*fakePool)(nil)
	_ backend.ContentCreator = (*fakePool)(nil)
)

func (p *fakePool) Type() string                    { return "fake" }
func (p *fakePool) Check(ctx context.Context) error { return nil }
func (p *fakePool) Capacity(ctx context.Context) (backend.Capacity, error) {
	return backend.Capacity{TotalBytes: 1 << 50, AvailableBytes: 1 << 50, MaxVolumeBytes: 1 << 50}, nil
}

func (p *fakePool) CreateVolume(ctx context.Context, id string, spec backend.Spec, commit func(backend.Volume) error) (backend.Volume, error) {
	p.creates = append(p.creates, id)
	p.specs = append(p.specs, spec)
	return backend.Volume{}, errReached
}

func (p *fakePool) CreateVolumeFrom(ctx context.Context, id string, spec backend.Spec, src backend.ContentSource, commit func(backend.Volume) error) (backend.Volume, error) {
	return p.CreateVolume(ctx, id, spec, commit)
}

func (p *fakePool) DeleteVolume(ctx context.Context, id string, commit func() error) error {
	return errReached
}

func (p *fakePool) Source(ctx context.Context, id string) (backend.Source, error) {
	return backend.Source{}, errdefs.ErrNotFound
}

func (p *fakePool) Usage(ctx context.Context, id string) (backend.Usage, error) {
	return backend.Usage{}, errdefs.ErrNotFound
}

func (p *fakePool) Reconcile(ctx context.Context, inv backend.Inventory) (backend.Report, error) {
	return backend.Report{}, nil
}

// newTestDriver makes a driver in mode all over a fresh store and one fake
// pool named "default", with a fake mounter: nothing it does can mount.
func newTestDriver(tb testing.TB) (*Driver, *fakePool, *store.Store) {
	tb.Helper()
	pool := &fakePool{}
	d, st := newDriverOver(tb, Config{}, []Pool{{Name: "default", Backend: pool}}, fakeMounter())
	if err := d.Start(context.Background()); err != nil {
		tb.Fatal(err)
	}
	return d, pool, st
}

// newDriverOver makes a driver over a fresh store (closed at the end of the
// test) and pools, not started. cfg's Name, NodeID, Mode and Logger default
// to the tests' values.
func newDriverOver(tb testing.TB, cfg Config, pools []Pool, mounter *mount.SafeFormatAndMount) (*Driver, *store.Store) {
	tb.Helper()
	st, err := store.Open(context.Background(), filepath.Join(tb.TempDir(), "cairn.db"), time.Second)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	if cfg.Name == "" {
		cfg.Name = "cairn.csi.dev"
	}
	if cfg.NodeID == "" {
		cfg.NodeID = "node-1"
	}
	if cfg.Mode == "" {
		cfg.Mode = ModeAll
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	d, err := New(cfg, st, pools, mounter)
	if err != nil {
		tb.Fatal(err)
	}
	return d, st
}

// fakeMounter is a mounter that mounts nothing.
func fakeMounter() *mount.SafeFormatAndMount {
	return &mount.SafeFormatAndMount{Interface: mount.NewFakeMounter(nil), Exec: &testingexec.FakeExec{}}
}

// newDirPool opens a real dir pool at root.
func newDirPool(tb testing.TB, root string) *dirpool.Pool {
	tb.Helper()
	pool, err := dirpool.New(context.Background(), root, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return pool
}
