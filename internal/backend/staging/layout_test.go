package staging_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/backend/staging"
	"github.com/cairn-csi/cairn/internal/errdefs"
)

func TestLayout(t *testing.T) {
	ctx := context.Background()
	if _, err := staging.NewLayout("dir", "relative", nil, staging.RemoveAll, staging.RemoveAll); !errdefs.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("NewLayout(relative) = %v, want ErrInvalidArgument", err)
	}
	root := filepath.Join(t.TempDir(), "pool")
	l, err := staging.NewLayout("dir", root+"/", nil, staging.RemoveAll, staging.RemoveAll)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.MakeDirs(); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{l.Volumes.Path, l.Snapshots.Path} {
		if st, err := os.Stat(d); err != nil || st.Mode().Perm() != staging.DirMode {
			t.Fatalf("%s: %v, %v; want mode %o", d, st, err, staging.DirMode)
		}
	}
	if err := os.Mkdir(l.Volumes.Entry("vol-dir"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(l.Volumes.Entry("vol-file"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// A symlink to a directory elsewhere must not pass for a volume.
	if err := os.Symlink(t.TempDir(), l.Volumes.Entry("vol-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(l.Snapshots.Entry("snap-dir"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		id    string
		class error // nil: a directory source
	}{
		{"vol-dir", nil},
		{"vol-missing", errdefs.ErrNotFound},
		{"vol-file", errdefs.ErrFailedPrecondition},
		{"vol-link", errdefs.ErrFailedPrecondition},
	} {
		src, err := l.Source(ctx, tc.id)
		if tc.class == nil {
			if err != nil || src.Kind != backend.SourceDirectory || src.Path != l.Volumes.Entry(tc.id) {
				t.Errorf("Source(%s) = %+v, %v; want the directory", tc.id, src, err)
			}
		} else if !errdefs.Is(err, tc.class) {
			t.Errorf("Source(%s) = %v, want %v", tc.id, err, tc.class)
		}
		p, err := l.ContentPath(backend.ContentSource{VolumeID: tc.id}, nil)
		if tc.class == nil {
			if err != nil || p != l.Volumes.Entry(tc.id) {
				t.Errorf("ContentPath(%s) = %q, %v", tc.id, p, err)
			}
		} else if !errdefs.Is(err, tc.class) {
			t.Errorf("ContentPath(%s) = %v, want %v", tc.id, err, tc.class)
		}
	}
	if _, err := l.ContentPath(backend.ContentSource{SnapshotID: "snap-dir", VolumeID: "vol-dir"}, nil); !errdefs.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("ContentPath(two sources) = %v, want ErrInvalidArgument", err)
	}
	if err := l.DeleteSnapshot(ctx, "snap-dir", func() error { return nil }); err != nil {
		t.Fatal(err)
	}
	if err := l.DeleteVolume(ctx, "vol-dir", func() error { return nil }); err != nil {
		t.Fatal(err)
	}
	rep, err := l.Reconcile(ctx, backend.Inventory{Volumes: map[string]bool{"vol-dir": true}})
	if err != nil || len(rep.Missing) != 1 || rep.Missing[0] != "vol-dir" || len(rep.Removed) != 2 {
		t.Errorf("Reconcile = %+v, %v; want vol-dir missing, vol-file and vol-link removed", rep, err)
	}
}
