package driver

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/store"
)

// putVolumes records n volumes straight into the store, in one transaction.
func putVolumes(tb testing.TB, st *store.Store, n int, mkfsOptions string) {
	tb.Helper()
	err := st.Update(context.Background(), func(tx *store.Tx) error {
		for i := range n {
			v := store.Volume{ID: fmt.Sprintf("vol-%016x", i), Name: fmt.Sprintf("pvc-%d", i), Pool: "default",
				CapacityBytes: 1 << 20, AccessType: "mount", MkfsOptions: mkfsOptions, CreatedAt: time.Now()}
			if err := tx.PutVolume(v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
}

// TestListPages checks that every listing pages by default and within the
// reply budget, and that following the tokens returns every entry once.
func TestListPages(t *testing.T) {
	big := strings.Repeat("x", 3000) // in the volume context, so in the reply
	for _, tc := range []struct {
		name       string
		n          int
		mkfs       string
		maxEntries int32
		wantPages  int
	}{
		{"empty", 0, "", 0, 1},
		{"under one default page", 10, "", 0, 1},
		{"default page size", 2*defaultPageEntries + 1, "", 0, 3},
		{"caller's page size", 25, "", 10, 3},
		{"exact pages", 20, "", 10, 2},
		{"byte budget cuts big entries", 1000, big, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, _, st := newTestDriver(t)
			putVolumes(t, st, tc.n, tc.mkfs)
			ctx := context.Background()
			seen := map[string]bool{}
			pages, token := 0, ""
			for {
				resp, err := d.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: tc.maxEntries, StartingToken: token})
				if err != nil {
					t.Fatal(err)
				}
				pages++
				if sz := proto.Size(resp); sz > 4<<20 {
					t.Fatalf("page %d is %d bytes", pages, sz)
				}
				for _, e := range resp.GetEntries() {
					id := e.GetVolume().GetVolumeId()
					if seen[id] {
						t.Fatalf("%s listed twice", id)
					}
					seen[id] = true
				}
				if token = resp.GetNextToken(); token == "" {
					break
				}
			}
			if len(seen) != tc.n || (tc.wantPages > 0 && pages != tc.wantPages) || (tc.wantPages == 0 && pages < 2) {
				t.Fatalf("listed %d volumes in %d pages, want %d in %d", len(seen), pages, tc.n, tc.wantPages)
			}
		})
	}
}

// TestListSnapshotsPagesByDefault: max_entries 0 still pages.
func TestListSnapshotsPagesByDefault(t *testing.T) {
	d, _, st := newTestDriver(t)
	n := defaultPageEntries + 5
	err := st.Update(context.Background(), func(tx *store.Tx) error {
		for i := range n {
			if err := tx.PutSnapshot(store.Snapshot{ID: fmt.Sprintf("snap-%016x", i), Name: fmt.Sprintf("s-%d", i),
				SourceVolumeID: "vol-0000000000000001", Pool: "default", SizeBytes: 1}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := d.ListSnapshots(context.Background(), &csi.ListSnapshotsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetEntries()) != defaultPageEntries || resp.GetNextToken() == "" {
		t.Fatalf("first page has %d entries and token %q", len(resp.GetEntries()), resp.GetNextToken())
	}
	resp, err = d.ListSnapshots(context.Background(), &csi.ListSnapshotsRequest{StartingToken: resp.GetNextToken()})
	if err != nil || len(resp.GetEntries()) != 5 || resp.GetNextToken() != "" {
		t.Fatalf("second page: %d entries, token %q, err %v", len(resp.GetEntries()), resp.GetNextToken(), err)
	}
}

// BenchmarkListVolumesDirPool lists 10,000 volumes of a real dir pool in
// process, to profile the listing without gRPC:
//
//	go test -run '^$' -bench ListVolumesDirPool -cpuprofile /tmp/list.prof ./internal/driver/
func BenchmarkListVolumesDirPool(b *testing.B) {
	const n = 10000
	ctx := context.Background()
	dir := b.TempDir()
	pool := newDirPool(b, filepath.Join(dir, "pool"))
	d, st := newDriverOver(b, Config{}, []Pool{{Name: "default", Backend: pool}}, fakeMounter())
	for i := 0; i < n; i += 500 {
		err := st.Update(ctx, func(tx *store.Tx) error {
			for j := i; j < min(i+500, n); j++ {
				resp := j
				v := store.Volume{ID: fmt.Sprintf("vol-%016x", resp), Name: fmt.Sprintf("pvc-%d", j), Pool: "default",
					CapacityBytes: 1 << 20, AccessType: "mount", CreatedAt: time.Now()}
				if err := tx.PutVolume(v); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	for i := range n {
		if _, err := pool.CreateVolume(ctx, fmt.Sprintf("vol-%016x", i), backend.Spec{CapacityBytes: 1 << 20, AccessType: backend.AccessMount}, func(backend.Volume) error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for range b.N {
		token, got := "", 0
		for {
			resp, err := d.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: token})
			if err != nil {
				b.Fatal(err)
			}
			got += len(resp.GetEntries())
			if token = resp.GetNextToken(); token == "" {
				break
			}
		}
		if got != n {
			b.Fatalf("listed %d", got)
		}
	}
}

// TestSizeBoundCoversEntry: the budget's cheap bound is never below the
// entry's encoded size, whatever lengths and bytes the record's values
// have (length prefixes grow at 128 and 16,384 bytes; JSON escapes).
func TestSizeBoundCoversEntry(t *testing.T) {
	d, _, _ := newTestDriver(t)
	lv := &listView{d: d, enforced: map[string]*bool{}}
	yes := true
	for _, n := range []int{0, 1, 127, 128, 200, 16383, 16384, 70000} {
		for _, tc := range []struct {
			name string
			fill string
		}{
			{"ascii", "a"},
			{"escaped", "<\"&"},
			{"unicode", "é"},
			{"invalid utf-8", "\xff"},
		} {
			s := strings.Repeat(tc.fill, n)
			for _, v := range []store.Volume{
				{ID: "vol-0000000000000001", Name: "n", Pool: s, CapacityBytes: 1 << 62},
				{ID: "vol-0000000000000001", Name: "n", Pool: "p", FsType: s, MkfsOptions: s, Encryption: s, KeyID: s, SourceSnapshotID: s},
				{ID: s, Name: "n", Pool: "p", SourceVolumeID: s, CapacityBytes: -1},
			} {
				raw, err := json.Marshal(v)
				if err != nil {
					t.Fatal(err)
				}
				for _, enforced := range []*bool{nil, &yes, new(bool)} {
					e := &csi.ListVolumesResponse_Entry{
						Volume: d.volumeMessage(v, enforced),
						Status: &csi.ListVolumesResponse_VolumeStatus{PublishedNodeIds: []string{d.cfg.NodeID}},
					}
					if got, want := lv.sizeBound(len(raw)), entrySize(e); got < want {
						t.Errorf("%s × %d: bound %d < entry size %d", tc.name, n, got, want)
					}
				}
			}
		}
	}
}

// TestListPublishedByRootName: a dir pool's listing finds bind mounts by
// the root name the mount table shows, and decides by device and inode,
// so a foreign directory of the same name mounted somewhere is not the
// volume's mount.
func TestListPublishedByRootName(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for mount(2)")
	}
	ctx := context.Background()
	dir := t.TempDir()
	pool := newDirPool(t, filepath.Join(dir, "pool"))
	d, st := newDriverOver(t, Config{}, []Pool{{Name: "default", Backend: pool}}, fakeMounter())
	putVolumes(t, st, 3, "")
	for i := range 3 {
		if _, err := pool.CreateVolume(ctx, fmt.Sprintf("vol-%016x", i), backend.Spec{CapacityBytes: 1 << 20, AccessType: backend.AccessMount}, func(backend.Volume) error { return nil }); err != nil {
			t.Fatal(err)
		}
	}
	bind := func(src string) {
		tgt, err := os.MkdirTemp(dir, "target")
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Mount(src, tgt, "", unix.MS_BIND, ""); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Unmount(tgt, unix.MNT_DETACH) })
	}
	bind(filepath.Join(dir, "pool", "volumes", fmt.Sprintf("vol-%016x", 0)))
	impostor := filepath.Join(dir, "elsewhere", fmt.Sprintf("vol-%016x", 1)) // same name, another directory
	if err := os.MkdirAll(impostor, 0o755); err != nil {
		t.Fatal(err)
	}
	bind(impostor)
	resp, err := d.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	for _, e := range resp.GetEntries() {
		got[e.GetVolume().GetVolumeId()] = e.GetStatus().GetPublishedNodeIds()
	}
	for i, want := range [][]string{{"node-1"}, nil, nil} {
		id := fmt.Sprintf("vol-%016x", i)
		if fmt.Sprint(got[id]) != fmt.Sprint(want) {
			t.Errorf("%s published on %q, want %q", id, got[id], want)
		}
	}
}

// TestListSharedContexts: a listing shares one volume_context map among
// volumes alike, and every entry's context is still exactly its own
// volume's (no sharing across pools, filesystems, mkfs options, or with an
// encrypted volume's key ID).
func TestListSharedContexts(t *testing.T) {
	ctx := context.Background()
	d, _, st := newTestDriver(t)
	vols := []store.Volume{
		{ID: "vol-0000000000000001", Pool: "default"},
		{ID: "vol-0000000000000002", Pool: "default"},
		{ID: "vol-0000000000000003", Pool: "default", FsType: "xfs"},
		{ID: "vol-0000000000000004", Pool: "default", FsType: "xfs", MkfsOptions: "-m crc=1"},
		{ID: "vol-0000000000000005", Pool: "default", Encryption: "fscrypt", KeyID: "k5"},
		{ID: "vol-0000000000000006", Pool: "default", Encryption: "fscrypt", KeyID: "k6"},
		{ID: "vol-0000000000000007", Pool: "gone"}, // a pool no longer configured: enforcement unknown
	}
	err := st.Update(ctx, func(tx *store.Tx) error {
		for i, v := range vols {
			v.Name, v.CapacityBytes, v.AccessType, v.CreatedAt = fmt.Sprintf("pvc-%d", i), 1<<20, store.AccessMount, time.Now()
			if err := tx.PutVolume(v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := d.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetEntries()) != len(vols) {
		t.Fatalf("%d entries, want %d", len(resp.GetEntries()), len(vols))
	}
	for i, e := range resp.GetEntries() {
		want := d.csiVolume(ctx, vols[i]).GetVolumeContext()
		if got := e.GetVolume().GetVolumeContext(); !maps.Equal(got, want) {
			t.Errorf("%s: context %v, want %v", vols[i].ID, got, want)
		}
	}
	same := func(i, j int) bool {
		return reflect.ValueOf(resp.Entries[i].Volume.VolumeContext).UnsafePointer() ==
			reflect.ValueOf(resp.Entries[j].Volume.VolumeContext).UnsafePointer()
	}
	if !same(0, 1) {
		t.Error("two volumes alike do not share their context map")
	}
	if same(4, 5) || same(0, 2) || same(2, 3) || same(0, 6) {
		t.Error("volumes that differ share a context map")
	}
}
