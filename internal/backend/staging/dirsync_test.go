package staging

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// TestDeferredDirSyncs: with deferred fsyncs, Create and Delete note their
// directory for SyncPending instead of syncing it, and a directory whose
// fsync fails stays noted for the next group.
func TestDeferredDirSyncs(t *testing.T) {
	DeferDirSyncs(true)
	t.Cleanup(func() { DeferDirSyncs(false) })
	d := Dir{Path: t.TempDir(), Remove: RemoveAll}
	gone := filepath.Join(t.TempDir(), "gone")
	for _, tc := range []struct {
		name      string
		do        func() error
		wantDirty []string
		wantErr   bool
	}{
		{"create notes its directory", func() error {
			return d.Create(context.Background(), "vol-1", func(_ context.Context, tmp string) error { return os.Mkdir(tmp, 0o700) }, func() error { return nil })
		}, []string{d.Path}, false},
		{"delete notes its directory", func() error {
			return d.Delete(context.Background(), "vol-1", func() error { return nil })
		}, []string{d.Path}, false},
		{"a failed fsync stays noted", func() error {
			dirtyMu.Lock()
			dirty[gone] = true
			dirtyMu.Unlock()
			return nil
		}, []string{gone}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.do(); err != nil {
				t.Fatal(err)
			}
			dirtyMu.Lock()
			for _, p := range tc.wantDirty {
				if !dirty[p] {
					t.Errorf("%s not noted", p)
				}
			}
			dirtyMu.Unlock()
			err := SyncPending()
			if (err != nil) != tc.wantErr {
				t.Fatalf("SyncPending: %v", err)
			}
			dirtyMu.Lock()
			left := len(dirty)
			dirtyMu.Unlock()
			if want := map[bool]int{true: 1, false: 0}[tc.wantErr]; left != want {
				t.Fatalf("%d directories still noted, want %d", left, want)
			}
			dirtyMu.Lock()
			delete(dirty, gone)
			dirtyMu.Unlock()
		})
	}
}
