package driver

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-csi/cairn/internal/store"
)

// TestExpandDecision covers ControllerExpandVolume's decision over a real
// dir pool, without root: what grows, what is refused with which code,
// what the store then records, and that a directory volume never asks for
// node expansion (its new limit applies at once). Each case has a fresh
// volume of 1 MiB. With controller expansion off, the RPC is refused and
// nothing changes.
func TestExpandDecision(t *testing.T) {
	const mib = 1 << 20
	ctx := context.Background()
	d, _ := newDirDriver(t, Config{ControllerExpansion: true})
	tests := []struct {
		name   string
		id     string // "" for the case's fresh volume
		r      *csi.CapacityRange
		code   codes.Code
		stored int64 // the record's size afterwards, when code is OK
		off    bool  // on a driver with controller expansion off
	}{
		{name: "grows", r: &csi.CapacityRange{RequiredBytes: 4 * mib}, stored: 4 * mib},
		{name: "grows up to the limit", r: &csi.CapacityRange{RequiredBytes: 2 * mib, LimitBytes: 2 * mib}, stored: 2 * mib},
		{name: "already large enough", r: &csi.CapacityRange{RequiredBytes: mib / 2}, stored: mib},
		{name: "no range (the spec requires one)", r: nil, code: codes.InvalidArgument},
		{name: "limit below the current size", r: &csi.CapacityRange{RequiredBytes: mib / 2, LimitBytes: mib / 2}, code: codes.OutOfRange},
		{name: "negative", r: &csi.CapacityRange{RequiredBytes: -1}, code: codes.InvalidArgument},
		{name: "more than the pool holds", r: &csi.CapacityRange{RequiredBytes: 1 << 62}, code: codes.ResourceExhausted},
		{name: "unknown volume", id: "vol-00000000000000ff", r: &csi.CapacityRange{RequiredBytes: 2 * mib}, code: codes.NotFound},
		{name: "ID that is a path", id: "../etc", r: &csi.CapacityRange{RequiredBytes: 2 * mib}, code: codes.InvalidArgument},
		{name: "controller expansion off", off: true, r: &csi.CapacityRange{RequiredBytes: 2 * mib}, code: codes.Unimplemented},
	}
	off, _ := newDirDriver(t, Config{})
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := d
			if tt.off {
				d = off
			}
			v, err := d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: fmt.Sprintf("x%d", i), VolumeCapabilities: mountCaps(),
				CapacityRange: &csi.CapacityRange{RequiredBytes: mib}})
			if err != nil {
				t.Fatal(err)
			}
			id := v.GetVolume().GetVolumeId()
			if tt.id != "" {
				id = tt.id
			}
			resp, err := d.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id, CapacityRange: tt.r})
			if got := status.Code(atEdge(err)); got != tt.code {
				t.Fatalf("code = %v (%v), want %v", got, err, tt.code)
			}
			var rec store.Volume
			if err := d.store.View(ctx, func(tx *store.Tx) (err error) {
				rec, err = tx.Volume(v.GetVolume().GetVolumeId())
				return
			}); err != nil {
				t.Fatal(err)
			}
			if err != nil {
				if rec.CapacityBytes != mib {
					t.Errorf("a refused expansion changed the record to %d bytes", rec.CapacityBytes)
				}
				return
			}
			if resp.GetCapacityBytes() != tt.stored || rec.CapacityBytes != tt.stored {
				t.Errorf("reply %d bytes, record %d, want %d", resp.GetCapacityBytes(), rec.CapacityBytes, tt.stored)
			}
			if resp.GetNodeExpansionRequired() {
				t.Error("a directory volume asked for node expansion")
			}
		})
	}
}

// TestListSnapshotsPaging follows ListSnapshots' tokens with and without
// filters: every matching snapshot comes once, in ID order, pages hold at
// most max_entries, and a filtered page is cut after filtering.
func TestListSnapshotsPaging(t *testing.T) {
	ctx := context.Background()
	d, _, st := newTestDriver(t)
	src := func(i int) string { return fmt.Sprintf("vol-%016x", i%2) } // two sources, interleaved
	var all, ofOne []string
	err := st.Update(ctx, func(tx *store.Tx) error {
		for i := range 7 {
			id := fmt.Sprintf("snap-%016x", i)
			all = append(all, id)
			if src(i) == src(1) {
				ofOne = append(ofOne, id)
			}
			if err := tx.PutSnapshot(store.Snapshot{ID: id, Name: fmt.Sprintf("s-%d", i), SourceVolumeID: src(i), Pool: "default", SizeBytes: 1}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		req  *csi.ListSnapshotsRequest
		want []string
	}{
		{"all, pages of 3", &csi.ListSnapshotsRequest{MaxEntries: 3}, all},
		{"all, pages of 1", &csi.ListSnapshotsRequest{MaxEntries: 1}, all},
		{"all, default page", &csi.ListSnapshotsRequest{}, all},
		{"one source, pages of 2", &csi.ListSnapshotsRequest{MaxEntries: 2, SourceVolumeId: src(1)}, ofOne},
		{"unknown source", &csi.ListSnapshotsRequest{MaxEntries: 2, SourceVolumeId: "vol-00000000000000ff"}, nil},
		{"by ID", &csi.ListSnapshotsRequest{SnapshotId: all[4]}, all[4:5]},
		{"by ID and its source", &csi.ListSnapshotsRequest{SnapshotId: all[3], SourceVolumeId: src(3)}, all[3:4]},
		{"by ID and another source", &csi.ListSnapshotsRequest{SnapshotId: all[3], SourceVolumeId: src(4)}, nil},
		{"unknown ID", &csi.ListSnapshotsRequest{SnapshotId: "snap-00000000000000ff"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			req := tt.req
			for pages := 0; ; pages++ {
				if pages > len(all) {
					t.Fatal("the tokens do not end")
				}
				resp, err := d.ListSnapshots(ctx, req)
				if err != nil {
					t.Fatal(err)
				}
				if m := req.GetMaxEntries(); m > 0 && len(resp.GetEntries()) > int(m) {
					t.Errorf("page of %d entries, max_entries %d", len(resp.GetEntries()), m)
				}
				for _, e := range resp.GetEntries() {
					got = append(got, e.GetSnapshot().GetSnapshotId())
				}
				if resp.GetNextToken() == "" {
					break
				}
				req = &csi.ListSnapshotsRequest{MaxEntries: req.GetMaxEntries(), SourceVolumeId: req.GetSourceVolumeId(), StartingToken: resp.GetNextToken()}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("listed %v, want %v", got, tt.want)
			}
		})
	}
	for _, tt := range []struct {
		name string
		req  *csi.ListSnapshotsRequest
		code codes.Code
	}{
		{"negative max_entries", &csi.ListSnapshotsRequest{MaxEntries: -1}, codes.InvalidArgument},
		{"foreign token", &csi.ListSnapshotsRequest{StartingToken: "page-2"}, codes.Aborted},
	} {
		_, err := d.ListSnapshots(ctx, tt.req)
		if got := status.Code(atEdge(err)); got != tt.code {
			t.Errorf("%s: code %v (%v), want %v", tt.name, got, err, tt.code)
		}
	}
}
