package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/cairn-csi/cairn/internal/errdefs"
)

func openTemp(t *testing.T) *Store {
	t.Helper()
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "meta", "cairn.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func vol(id, name string) Volume {
	return Volume{ID: id, Name: name, Pool: "default", CapacityBytes: 1 << 20, AccessType: "mount",
		Parameters: map[string]string{"pool": "default"}, CreatedAt: time.Unix(1700000000, 0).UTC()}
}

func snap(id, name, src string) Snapshot {
	return Snapshot{ID: id, Name: name, SourceVolumeID: src, Pool: "default", SizeBytes: 1 << 20,
		CreatedAt: time.Unix(1700000000, 0).UTC()}
}

func put(t *testing.T, s *Store, recs ...any) {
	t.Helper()
	err := s.Update(context.Background(), func(tx *Tx) error {
		for _, r := range recs {
			var err error
			switch r := r.(type) {
			case Volume:
				err = tx.PutVolume(r)
			case Snapshot:
				err = tx.PutSnapshot(r)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestVolumeRoundTrip(t *testing.T) {
	s := openTemp(t)
	ctx := context.Background()
	want := vol("vol-0000000000000001", "pvc-1")
	want.SourceSnapshotID = "snap-00000000000000aa"
	put(t, s, want)

	err := s.View(ctx, func(tx *Tx) error {
		got, err := tx.Volume(want.ID)
		if err != nil {
			return err
		}
		if !equalVolume(got, want) {
			t.Errorf("Volume = %+v, want %+v", got, want)
		}
		byName, err := tx.VolumeByName("pvc-1")
		if err != nil {
			return err
		}
		if byName.ID != want.ID {
			t.Errorf("VolumeByName = %s, want %s", byName.ID, want.ID)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func equalVolume(a, b Volume) bool {
	ap, bp := a.Parameters, b.Parameters
	a.Parameters, b.Parameters = nil, nil
	return a.CreatedAt.Equal(b.CreatedAt) && fmt.Sprint(ap) == fmt.Sprint(bp) &&
		fmt.Sprint(a) == fmt.Sprint(b)
}

// TestValuesOutliveTransaction checks the package's promise that returned
// records are copies: read after the transaction ended, and after the
// stored record changed, they are still what was read.
func TestValuesOutliveTransaction(t *testing.T) {
	s := openTemp(t)
	ctx := context.Background()
	put(t, s, vol("vol-0000000000000001", "a"))
	var got Volume
	if err := s.View(ctx, func(tx *Tx) (err error) { got, err = tx.Volume("vol-0000000000000001"); return }); err != nil {
		t.Fatal(err)
	}
	changed := vol("vol-0000000000000001", "a")
	changed.CapacityBytes = 99
	changed.Parameters = map[string]string{"other": "x"}
	put(t, s, changed)
	if got.CapacityBytes != 1<<20 || got.Parameters["pool"] != "default" {
		t.Errorf("record read earlier changed under the caller: %+v", got)
	}
}

func TestNotFound(t *testing.T) {
	s := openTemp(t)
	put(t, s, vol("vol-0000000000000001", "a"), snap("snap-0000000000000001", "s", "vol-0000000000000001"))
	tests := []struct {
		name string
		fn   func(*Tx) error
	}{
		{"volume", func(tx *Tx) error { _, err := tx.Volume("vol-ffffffffffffffff"); return err }},
		{"volume by name", func(tx *Tx) error { _, err := tx.VolumeByName("nope"); return err }},
		{"snapshot", func(tx *Tx) error { _, err := tx.Snapshot("snap-ffffffffffffffff"); return err }},
		{"snapshot by name", func(tx *Tx) error { _, err := tx.SnapshotByName("nope"); return err }},
		{"volume ID is not a snapshot ID", func(tx *Tx) error { _, err := tx.Snapshot("vol-0000000000000001"); return err }},
		{"snapshot name is not a volume name", func(tx *Tx) error { _, err := tx.VolumeByName("s"); return err }},
		{"empty ID", func(tx *Tx) error { _, err := tx.Volume(""); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.View(context.Background(), tt.fn)
			if !errors.Is(err, errdefs.ErrNotFound) {
				t.Errorf("err = %v, want class ErrNotFound", err)
			}
		})
	}
}

func TestNameCollision(t *testing.T) {
	tests := []struct {
		name    string
		first   any
		second  any
		wantErr error
	}{
		{"volume name taken by another ID", vol("vol-0000000000000001", "n"), vol("vol-0000000000000002", "n"), errdefs.ErrAlreadyExists},
		{"snapshot name taken by another ID", snap("snap-0000000000000001", "n", "v"), snap("snap-0000000000000002", "n", "v"), errdefs.ErrAlreadyExists},
		{"same ID and name replaces", vol("vol-0000000000000001", "n"), vol("vol-0000000000000001", "n"), nil},
		{"a volume and a snapshot may share a name", vol("vol-0000000000000001", "n"), snap("snap-0000000000000001", "n", "v"), nil},
		{"volume without a name", vol("vol-0000000000000001", "n"), vol("vol-0000000000000002", ""), errdefs.ErrInvalidArgument},
		{"volume without an ID", vol("vol-0000000000000001", "n"), vol("", "m"), errdefs.ErrInvalidArgument},
		{"snapshot without a name", vol("vol-0000000000000001", "n"), snap("snap-0000000000000001", "", "v"), errdefs.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openTemp(t)
			put(t, s, tt.first)
			err := s.Update(context.Background(), func(tx *Tx) error {
				if v, ok := tt.second.(Volume); ok {
					return tx.PutVolume(v)
				}
				return tx.PutSnapshot(tt.second.(Snapshot))
			})
			if tt.wantErr == nil && err != nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("second put: err = %v, want class %v", err, tt.wantErr)
			}
			if tt.wantErr != nil {
				// The failed transaction changed nothing: the name still
				// belongs to the first record.
				s.View(context.Background(), func(tx *Tx) error {
					if v, ok := tt.first.(Volume); ok {
						got, err := tx.VolumeByName(v.Name)
						if err != nil || got.ID != v.ID {
							t.Errorf("after a refused put, name %q -> %v, %v; want %s", v.Name, got.ID, err, v.ID)
						}
					}
					return nil
				})
			}
		})
	}
}

func TestDelete(t *testing.T) {
	s := openTemp(t)
	ctx := context.Background()
	put(t, s, vol("vol-0000000000000001", "a"), vol("vol-0000000000000002", "b"),
		snap("snap-0000000000000001", "s", "vol-0000000000000001"))
	err := s.Update(ctx, func(tx *Tx) error {
		if err := tx.DeleteVolume("vol-0000000000000001"); err != nil {
			return err
		}
		if err := tx.DeleteSnapshot("snap-0000000000000001"); err != nil {
			return err
		}
		// Missing is not an error: a retried delete converges.
		if err := tx.DeleteVolume("vol-0000000000000001"); err != nil {
			return fmt.Errorf("second delete: %w", err)
		}
		if err := tx.DeleteSnapshot("snap-ffffffffffffffff"); err != nil {
			return fmt.Errorf("delete of a missing snapshot: %w", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	s.View(ctx, func(tx *Tx) error {
		if _, err := tx.Volume("vol-0000000000000001"); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("deleted volume: err = %v", err)
		}
		if _, err := tx.VolumeByName("a"); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("deleted volume's name still resolves: err = %v", err)
		}
		if _, err := tx.SnapshotByName("s"); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("deleted snapshot's name still resolves: err = %v", err)
		}
		if v, err := tx.VolumeByName("b"); err != nil || v.ID != "vol-0000000000000002" {
			t.Errorf("the other volume was touched: %v, %v", v.ID, err)
		}
		return nil
	})
	// The freed name can be taken by a new ID.
	put(t, s, vol("vol-0000000000000003", "a"))
}

func TestPagination(t *testing.T) {
	s := openTemp(t)
	ctx := context.Background()
	var ids []string
	for i := range 10 {
		id := fmt.Sprintf("vol-%016x", 0x1000*(10-i)) // inserted out of order
		ids = append(ids, id)
		put(t, s, vol(id, "n"+id))
	}
	slices.Sort(ids)

	tests := []struct {
		name     string
		from     string
		limit    int
		wantIDs  []string
		wantNext string
	}{
		{"all", "", 0, ids, ""},
		{"negative limit is all", "", -1, ids, ""},
		{"first page", "", 3, ids[:3], ids[3]},
		{"middle page", ids[3], 3, ids[3:6], ids[6]},
		{"last partial page", ids[9], 3, ids[9:], ""},
		{"exact fit has no next", ids[7], 3, ids[7:], ""},
		{"from between keys starts at the next", ids[4] + "x", 2, ids[5:7], ids[7]},
		{"from past the end", "vol-ffffffffffffffff", 2, nil, ""},
		{"limit larger than all", "", 100, ids, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []Volume
			var next string
			err := s.View(ctx, func(tx *Tx) (err error) { got, next, err = tx.Volumes(tt.from, tt.limit); return })
			if err != nil {
				t.Fatal(err)
			}
			var gotIDs []string
			for _, v := range got {
				gotIDs = append(gotIDs, v.ID)
			}
			if !slices.Equal(gotIDs, tt.wantIDs) || next != tt.wantNext {
				t.Errorf("Volumes(%q, %d) = %v, next %q; want %v, next %q", tt.from, tt.limit, gotIDs, next, tt.wantIDs, tt.wantNext)
			}
		})
	}

	// Walking the pages visits every record once.
	var walked []string
	from := ""
	for {
		var page []Volume
		var next string
		if err := s.View(ctx, func(tx *Tx) (err error) { page, next, err = tx.Volumes(from, 4); return }); err != nil {
			t.Fatal(err)
		}
		for _, v := range page {
			walked = append(walked, v.ID)
		}
		if next == "" {
			break
		}
		from = next
	}
	if !slices.Equal(walked, ids) {
		t.Errorf("page walk = %v, want %v", walked, ids)
	}
}

func TestSnapshotPagination(t *testing.T) {
	s := openTemp(t)
	for i := range 5 {
		put(t, s, snap(fmt.Sprintf("snap-%016x", i), fmt.Sprintf("s%d", i), "vol-1"))
	}
	put(t, s, vol("vol-0000000000000001", "not a snapshot"))
	var got []Snapshot
	var next string
	s.View(context.Background(), func(tx *Tx) (err error) { got, next, err = tx.Snapshots("", 2); return })
	if len(got) != 2 || got[0].ID != "snap-0000000000000000" || next != "snap-0000000000000002" {
		t.Errorf("Snapshots page = %v next %q", got, next)
	}
	s.View(context.Background(), func(tx *Tx) (err error) { got, next, err = tx.Snapshots("", 0); return })
	if len(got) != 5 || next != "" {
		t.Errorf("all snapshots: %d records next %q, want 5 and no next", len(got), next)
	}
}

var idPattern = regexp.MustCompile(`^(vol|snap)-[0-9a-f]{16}$`)

func TestNewIDUnique(t *testing.T) {
	s := openTemp(t)
	for _, prefix := range []string{VolumePrefix, SnapshotPrefix} {
		seen := map[string]bool{}
		err := s.View(context.Background(), func(tx *Tx) error {
			for range 20000 {
				id, err := tx.NewID(prefix)
				if err != nil {
					return err
				}
				if !idPattern.MatchString(id) || id[:len(prefix)] != prefix {
					t.Fatalf("NewID(%q) = %q: not prefix+16 hex digits", prefix, id)
				}
				if seen[id] {
					t.Fatalf("NewID(%q) returned %q twice", prefix, id)
				}
				seen[id] = true
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestBatchConcurrent runs many writers at once through Update (which
// batches them): every record lands, and of the writers racing for one
// name exactly one wins.
func TestBatchConcurrent(t *testing.T) {
	s := openTemp(t)
	ctx := context.Background()
	const writers = 64
	var wg sync.WaitGroup
	errs := make([]error, writers)
	raceErrs := make([]error, writers)
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.Update(ctx, func(tx *Tx) error {
				return tx.PutVolume(vol(fmt.Sprintf("vol-%016x", i), fmt.Sprintf("own-%d", i)))
			})
			raceErrs[i] = s.Update(ctx, func(tx *Tx) error {
				return tx.PutSnapshot(snap(fmt.Sprintf("snap-%016x", i), "contested", "vol-1"))
			})
		}()
	}
	wg.Wait()
	winners := 0
	for i := range writers {
		if errs[i] != nil {
			t.Errorf("writer %d: %v", i, errs[i])
		}
		switch {
		case raceErrs[i] == nil:
			winners++
		case !errors.Is(raceErrs[i], errdefs.ErrAlreadyExists):
			t.Errorf("contested name, writer %d: err = %v, want ErrAlreadyExists", i, raceErrs[i])
		}
	}
	if winners != 1 {
		t.Errorf("%d writers took the contested name, want exactly 1", winners)
	}
	var vols []Volume
	var snaps []Snapshot
	s.View(ctx, func(tx *Tx) (err error) {
		if vols, _, err = tx.Volumes("", 0); err != nil {
			return err
		}
		snaps, _, err = tx.Snapshots("", 0)
		return err
	})
	if len(vols) != writers {
		t.Errorf("%d volumes stored, want %d", len(vols), writers)
	}
	if len(snaps) != 1 {
		t.Errorf("%d snapshots stored under one name, want 1", len(snaps))
	}
}

func TestUpdateIsAtomic(t *testing.T) {
	s := openTemp(t)
	boom := errors.New("boom")
	err := s.Update(context.Background(), func(tx *Tx) error {
		if err := tx.PutVolume(vol("vol-0000000000000001", "a")); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update err = %v, want the function's error", err)
	}
	s.View(context.Background(), func(tx *Tx) error {
		if _, err := tx.Volume("vol-0000000000000001"); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("a failed Update left its write behind: %v", err)
		}
		return nil
	})
}

func TestPersistsAcrossReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cairn.db")
	s, err := Open(context.Background(), path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	put(t, s, vol("vol-0000000000000001", "a"))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(context.Background(), path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Path() != path {
		t.Errorf("Path() = %q, want %q", s.Path(), path)
	}
	err = s.View(context.Background(), func(tx *Tx) error { _, err := tx.VolumeByName("a"); return err })
	if err != nil {
		t.Errorf("record lost across reopen: %v", err)
	}
}

// TestOpenLockedTimesOut: a second handle on a database another holds
// (bbolt's flock) gives up after the timeout with ErrUnavailable rather
// than waiting forever.
func TestOpenLockedTimesOut(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cairn.db")
	first, err := Open(context.Background(), path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	done := make(chan error, 1)
	go func() {
		s, err := Open(context.Background(), path, 100*time.Millisecond)
		if err == nil {
			s.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, errdefs.ErrUnavailable) {
			t.Fatalf("second Open: err = %v, want class ErrUnavailable", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("second Open did not give up: the timeout is not applied")
	}
	// The first handle still works.
	if err := first.Check(context.Background()); err != nil {
		t.Errorf("first handle after the refused Open: %v", err)
	}
}

func TestClosedStoreUnavailable(t *testing.T) {
	s := openTemp(t)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	tests := []struct {
		name string
		fn   func() error
	}{
		{"View", func() error { return s.View(ctx, func(*Tx) error { return nil }) }},
		{"Update", func() error { return s.Update(ctx, func(tx *Tx) error { return tx.PutVolume(vol("vol-1", "a")) }) }},
		{"Check", func() error { return s.Check(ctx) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.fn(); !errors.Is(err, errdefs.ErrUnavailable) {
				t.Errorf("err = %v, want class ErrUnavailable", err)
			}
		})
	}
}

func TestContextDone(t *testing.T) {
	s := openTemp(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ran := false
	if err := s.View(ctx, func(*Tx) error { ran = true; return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("View with a cancelled context: err = %v", err)
	}
	if err := s.Update(ctx, func(*Tx) error { ran = true; return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("Update with a cancelled context: err = %v", err)
	}
	if ran {
		t.Error("a transaction ran under a cancelled context")
	}
}

func TestCorruptRecord(t *testing.T) {
	s := openTemp(t)
	err := s.db.Update(func(btx *bolt.Tx) error {
		return btx.Bucket(bucketV1).Bucket(bucketVolumes).Put([]byte("vol-0000000000000001"), []byte("{not json"))
	})
	if err != nil {
		t.Fatal(err)
	}
	err = s.View(context.Background(), func(tx *Tx) error { _, err := tx.Volume("vol-0000000000000001"); return err })
	if err == nil || errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("corrupt record: err = %v, want a decode error (not NotFound: the record exists)", err)
	}
	err = s.View(context.Background(), func(tx *Tx) error { _, _, err := tx.Volumes("", 0); return err })
	if err == nil {
		t.Error("listing over a corrupt record succeeded")
	}
}

func BenchmarkUpdateParallel(b *testing.B) {
	s, err := Open(context.Background(), filepath.Join(b.TempDir(), "cairn.db"), time.Second)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	var mu sync.Mutex
	n := 0
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			mu.Lock()
			n++
			i := n
			mu.Unlock()
			err := s.Update(context.Background(), func(tx *Tx) error {
				return tx.PutVolume(vol(fmt.Sprintf("vol-%016x", i), fmt.Sprintf("b-%d", i)))
			})
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

// TestListVolumesMatchesVolumes: a listing decodes every field a CSI
// Volume message carries, as Volumes does, and the record's size.
func TestListVolumesMatchesVolumes(t *testing.T) {
	s := openTemp(t)
	a := vol("vol-0000000000000001", "a")
	b := vol("vol-0000000000000002", "b")
	b.FsType, b.MkfsOptions, b.SourceSnapshotID, b.Encryption, b.KeyID = "xfs", "-b size=4096", "snap-0000000000000001", "fscrypt", "k1"
	c := vol("vol-0000000000000003", "c")
	c.SourceVolumeID, c.CapacityBytes = "vol-0000000000000001", 1<<40
	put(t, s, a, b, c)
	err := s.View(context.Background(), func(tx *Tx) error {
		full, next, err := tx.Volumes("", 2)
		if err != nil {
			return err
		}
		listed, lnext, err := tx.ListVolumes("", 2)
		if err != nil {
			return err
		}
		if next != lnext || next != c.ID || len(listed) != len(full) {
			t.Fatalf("pages differ: %d entries to %q, %d to %q", len(full), next, len(listed), lnext)
		}
		for i, f := range full {
			want := Volume{ID: f.ID, Pool: f.Pool, CapacityBytes: f.CapacityBytes, FsType: f.FsType, MkfsOptions: f.MkfsOptions,
				SourceSnapshotID: f.SourceSnapshotID, SourceVolumeID: f.SourceVolumeID, Encryption: f.Encryption, KeyID: f.KeyID}
			if !equalVolume(listed[i].Volume, want) || listed[i].Volume.KeyID != want.KeyID {
				t.Errorf("listed %+v, want %+v", listed[i].Volume, want)
			}
			raw, _ := json.Marshal(f)
			if listed[i].RecordBytes != len(raw) {
				t.Errorf("%s: RecordBytes %d, record is %d bytes", f.ID, listed[i].RecordBytes, len(raw))
			}
		}
		rest, _, err := tx.ListVolumes(lnext, 0)
		if err != nil || len(rest) != 1 || rest[0].ID != c.ID || rest[0].SourceVolumeID != c.SourceVolumeID || rest[0].CapacityBytes != 1<<40 {
			t.Fatalf("second page %+v, %v", rest, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
