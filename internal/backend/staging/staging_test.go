package staging_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/backend/staging"
	"github.com/cairn-csi/cairn/internal/errdefs"
)

func newDir(t *testing.T) staging.Dir {
	return staging.Dir{Path: t.TempDir(), Remove: staging.RemoveAll}
}

func names(t *testing.T, d staging.Dir) []string {
	t.Helper()
	es, err := os.ReadDir(d.Path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

// TestReconcile covers each state a crash can leave an entry in, and what
// reconcile must make of it given whether the store knows the ID.
func TestReconcile(t *testing.T) {
	for _, tc := range []struct {
		name        string
		onDisk      []string // directories present before reconcile
		known       []string
		wantLeft    []string
		wantMissing []string
	}{
		{"known entry stays", []string{"vol-a"}, []string{"vol-a"}, []string{"vol-a"}, nil},
		{"unknown entry goes", []string{"vol-a"}, nil, nil, nil},
		{"create died before rename", []string{"new-vol-a"}, nil, nil, nil},
		{"create died before commit", []string{"vol-a"}, nil, nil, nil},
		{"delete died after commit", []string{"rm-vol-a"}, nil, nil, nil},
		{"delete died before commit: rename undone", []string{"rm-vol-a"}, []string{"vol-a"}, []string{"vol-a"}, nil},
		{"record without data is reported", nil, []string{"vol-a"}, nil, []string{"vol-a"}},
		{"pool bookkeeping is left alone", []string{".cairn-projid"}, nil, []string{".cairn-projid"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDir(t)
			for _, n := range tc.onDisk {
				if err := os.Mkdir(filepath.Join(d.Path, n), 0o700); err != nil {
					t.Fatal(err)
				}
				// Data inside, so a rename back can be told from a re-create.
				if err := os.WriteFile(filepath.Join(d.Path, n, "data"), []byte(n), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			known := map[string]bool{}
			for _, k := range tc.known {
				known[k] = true
			}
			res, err := d.Reconcile(context.Background(), known)
			if err != nil || len(res.Errors) > 0 {
				t.Fatalf("Reconcile: %v %v", err, res.Errors)
			}
			if got := names(t, d); !slices.Equal(got, tc.wantLeft) {
				t.Errorf("left on disk %v, want %v", got, tc.wantLeft)
			}
			if !slices.Equal(res.Missing, tc.wantMissing) {
				t.Errorf("missing %v, want %v", res.Missing, tc.wantMissing)
			}
			for _, n := range tc.wantLeft {
				if b, err := os.ReadFile(filepath.Join(d.Path, n, "data")); err != nil || len(b) == 0 {
					t.Errorf("%s lost its data: %v", n, err)
				}
			}
		})
	}
}

func TestCreateAndDeleteCommitOrder(t *testing.T) {
	ctx := context.Background()
	d := newDir(t)
	errCommit := errors.New("commit failed")
	build := func(ctx context.Context, tmp string) error { return os.Mkdir(tmp, 0o700) }

	if err := d.Create(ctx, "vol-a", build, func() error { return errCommit }); !errors.Is(err, errCommit) {
		t.Fatalf("Create with a failing commit = %v", err)
	}
	if got := names(t, d); len(got) != 0 {
		t.Fatalf("a create whose commit failed left %v", got)
	}
	if err := d.Create(ctx, "vol-a", build, func() error { return nil }); err != nil {
		t.Fatal(err)
	}
	if err := d.Delete(ctx, "vol-a", func() error { return errCommit }); !errors.Is(err, errCommit) {
		t.Fatalf("Delete with a failing commit = %v", err)
	}
	if got := names(t, d); !slices.Equal(got, []string{"vol-a"}) {
		t.Fatalf("a delete whose commit failed left %v, want the entry back in place", got)
	}
	committed := false
	if err := d.Delete(ctx, "vol-a", func() error { committed = true; return nil }); err != nil || !committed {
		t.Fatalf("Delete = %v, committed %t", err, committed)
	}
	if got := names(t, d); len(got) != 0 {
		t.Fatalf("delete left %v", got)
	}
}

func TestContentEntry(t *testing.T) {
	vols, snaps := newDir(t), newDir(t)
	for _, p := range []string{filepath.Join(vols.Path, "vol-a"), filepath.Join(snaps.Path, "snap-a")} {
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		src  backend.ContentSource
		want string // the entry, or the error class
		err  error
	}{
		{"volume", backend.ContentSource{VolumeID: "vol-a"}, filepath.Join(vols.Path, "vol-a"), nil},
		{"snapshot", backend.ContentSource{SnapshotID: "snap-a"}, filepath.Join(snaps.Path, "snap-a"), nil},
		{"missing volume", backend.ContentSource{VolumeID: "vol-b"}, "", errdefs.ErrNotFound},
		{"missing snapshot", backend.ContentSource{SnapshotID: "snap-b"}, "", errdefs.ErrNotFound},
		{"a snapshot ID is not looked up among volumes", backend.ContentSource{SnapshotID: "vol-a"}, "", errdefs.ErrNotFound},
		{"both", backend.ContentSource{VolumeID: "vol-a", SnapshotID: "snap-a"}, "", errdefs.ErrInvalidArgument},
		{"neither", backend.ContentSource{}, "", errdefs.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := staging.ContentEntry(vols, snaps, tc.src)
			if got != tc.want || !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
				t.Fatalf("ContentEntry(%+v) = %q, %v; want %q, %v", tc.src, got, err, tc.want, tc.err)
			}
		})
	}
}
