//go:build linux

package lvmpool

import (
	"context"
	"strings"
	"testing"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/luks"
)

// lvsStates is lvsThin's pool with volumes in every state health tells
// apart: active, inactive (as after a reboot with auto-activation off),
// partial, failed, encrypted, and one LV that is not Cairn's.
const lvsStates = `  {
      "report": [
          {
              "lv": [
                  {"lv_name":"tp", "vg_name":"vgt", "lv_path":"", "lv_attr":"twi-aotz--", "lv_size":"209715200", "lv_tags":"", "segtype":"thin-pool", "pool_lv":"", "origin":"", "data_percent":"10.00", "metadata_percent":"10.94", "lv_active":"active", "lv_skip_activation":"", "vg_extent_size":"4194304", "zero":"zero"},
                  {"lv_name":"vol-ok", "vg_name":"vgt", "lv_path":"/dev/vgt/vol-ok", "lv_attr":"Vwi-a-tz--", "lv_size":"12582912", "lv_tags":"cairn.csi.dev,cairn.csi.dev/kind=volume,cairn.csi.dev/pool=vgt/tp", "segtype":"thin", "pool_lv":"tp", "origin":"", "data_percent":"25.00", "metadata_percent":"", "lv_active":"active", "lv_skip_activation":"", "vg_extent_size":"4194304", "zero":"zero"},
                  {"lv_name":"vol-off", "vg_name":"vgt", "lv_path":"/dev/vgt/vol-off", "lv_attr":"Vwi---tz--", "lv_size":"12582912", "lv_tags":"cairn.csi.dev,cairn.csi.dev/kind=volume,cairn.csi.dev/pool=vgt/tp", "segtype":"thin", "pool_lv":"tp", "origin":"", "data_percent":"", "metadata_percent":"", "lv_active":"", "lv_skip_activation":"", "vg_extent_size":"4194304", "zero":"zero"},
                  {"lv_name":"vol-part", "vg_name":"vgt", "lv_path":"/dev/vgt/vol-part", "lv_attr":"Vwi---tzp-", "lv_size":"12582912", "lv_tags":"cairn.csi.dev,cairn.csi.dev/kind=volume,cairn.csi.dev/pool=vgt/tp", "segtype":"thin", "pool_lv":"tp", "origin":"", "data_percent":"", "metadata_percent":"", "lv_active":"", "lv_skip_activation":"", "vg_extent_size":"4194304", "zero":"zero"},
                  {"lv_name":"vol-fail", "vg_name":"vgt", "lv_path":"/dev/vgt/vol-fail", "lv_attr":"Vwi-a-tzF-", "lv_size":"12582912", "lv_tags":"cairn.csi.dev,cairn.csi.dev/kind=volume,cairn.csi.dev/pool=vgt/tp", "segtype":"thin", "pool_lv":"tp", "origin":"", "data_percent":"", "metadata_percent":"", "lv_active":"active", "lv_skip_activation":"", "vg_extent_size":"4194304", "zero":"zero"},
                  {"lv_name":"vol-enc", "vg_name":"vgt", "lv_path":"/dev/vgt/vol-enc", "lv_attr":"Vwi-a-tz--", "lv_size":"29360128", "lv_tags":"cairn.csi.dev,cairn.csi.dev/encryption=luks2,cairn.csi.dev/kind=volume,cairn.csi.dev/pool=vgt/tp", "segtype":"thin", "pool_lv":"tp", "origin":"", "data_percent":"50.00", "metadata_percent":"", "lv_active":"active", "lv_skip_activation":"", "vg_extent_size":"4194304", "zero":"zero"},
                  {"lv_name":"theirs", "vg_name":"vgt", "lv_path":"/dev/vgt/theirs", "lv_attr":"Vwi---tz--", "lv_size":"8388608", "lv_tags":"", "segtype":"thin", "pool_lv":"tp", "origin":"", "data_percent":"", "metadata_percent":"", "lv_active":"", "lv_skip_activation":"", "vg_extent_size":"4194304", "zero":"zero"}
              ]
          }
      ]
  }
`

// recorder wraps fakeLVM and records every command that would change the
// VG; read-only reports pass through.
func recorder(lvs string) (Runner, *[]string) {
	var changes []string
	fake := fakeLVM(lvs, vgsReport)
	return func(ctx context.Context, name string, args ...string) ([]byte, error) {
		if name != "lvs" && name != "vgs" {
			changes = append(changes, name+" "+strings.Join(args, " "))
			return nil, nil
		}
		return fake(ctx, name, args...)
	}, &changes
}

// TestVolumeCondition: health tells missing, inactive, partial and failed
// LVs from healthy ones, with a message naming the LV, and never changes
// anything: an inactive LV stays inactive.
func TestVolumeCondition(t *testing.T) {
	ctx := context.Background()
	run, changes := recorder(lvsStates)
	b, err := New(ctx, "vgt/tp", Options{Run: run})
	if err != nil {
		t.Fatal(err)
	}
	hc := b.(backend.HealthChecker)
	for _, tc := range []struct {
		id, reason, msg string
	}{
		{"vol-ok", "", ""},
		{"vol-enc", "", ""},
		{"vol-off", "Inactive", "LV vgt/vol-off is inactive"},
		{"vol-part", "Partial", "LV vgt/vol-part is partial"},
		{"vol-fail", "Failed", "LV vgt/vol-fail has failed"},
		{"vol-gone", "DataMissing", "LV vgt/vol-gone does not exist"},
		{"theirs", "DataMissing", "not Cairn's"},
		{"new-x", "DataMissing", "cannot name an LV"},
	} {
		t.Run(tc.id, func(t *testing.T) {
			c, err := hc.VolumeCondition(ctx, tc.id)
			if err != nil {
				t.Fatal(err)
			}
			if c.Abnormal != (tc.reason != "") || c.Reason != tc.reason || !strings.Contains(c.Message, tc.msg) {
				t.Errorf("VolumeCondition = %+v, want reason %q and a message with %q", c, tc.reason, tc.msg)
			}
		})
	}
	if len(*changes) > 0 {
		t.Errorf("health changed the VG: %q", *changes)
	}
}

// TestSourceAndActivate: Source only looks (the inactive LV's path, no
// lvchange) and says which LVs are encrypted; Activate activates an
// inactive volume, does nothing to an active one, and refuses a partial
// one and LVs that are not Cairn volumes.
func TestSourceAndActivate(t *testing.T) {
	ctx := context.Background()
	run, changes := recorder(lvsStates)
	b, err := New(ctx, "vgt/tp", Options{Run: run})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		id   string
		luks bool
	}{{"vol-off", false}, {"vol-ok", false}, {"vol-enc", true}} {
		src, err := b.Source(ctx, tc.id)
		if err != nil || src.Path != "/dev/vgt/"+tc.id || src.Kind != backend.SourceBlockDevice || src.LUKS != tc.luks {
			t.Errorf("Source(%s) = %+v, %v; want /dev/vgt/%s with LUKS %t", tc.id, src, err, tc.id, tc.luks)
		}
	}
	if len(*changes) > 0 {
		t.Fatalf("Source changed the VG: %q", *changes)
	}
	a := b.(backend.Activator)
	for _, tc := range []struct {
		id      string
		class   error
		changes string
	}{
		{"vol-ok", nil, ""},
		{"vol-off", nil, "lvchange --quiet --activate y --ignoreactivationskip vgt/vol-off"},
		{"vol-part", errdefs.ErrUnavailable, ""},
		{"vol-gone", errdefs.ErrNotFound, ""},
		{"theirs", errdefs.ErrNotFound, ""},
	} {
		*changes = nil
		err := a.Activate(ctx, tc.id)
		if tc.class == nil && err != nil || tc.class != nil && !errdefs.Is(err, tc.class) {
			t.Errorf("Activate(%s) = %v, want %v", tc.id, err, tc.class)
		}
		if got := strings.Join(*changes, "; "); got != tc.changes {
			t.Errorf("Activate(%s) ran %q, want %q", tc.id, got, tc.changes)
		}
	}
}

// TestEncryptedSizes: an encrypted LV is its capacity plus the LUKS header
// in whole extents, and everything reported is the LV less the header.
func TestEncryptedSizes(t *testing.T) {
	const ext = 4 << 20
	for _, tc := range []struct {
		name                    string
		want, floor, limit, hdr int64
		lv                      int64
		outOfRange              bool
	}{
		{"plain", 5 << 20, 0, 0, 0, 8 << 20, false},
		{"encrypted", 5 << 20, 0, 0, luks.HeaderBytes, 24 << 20, false},
		{"encrypted, limit fits", 8 << 20, 0, 8 << 20, luks.HeaderBytes, 24 << 20, false},
		{"encrypted, limit below rounding", 5 << 20, 0, 6 << 20, luks.HeaderBytes, 0, true},
		{"encrypted, from a larger source", 4 << 20, 12 << 20, 0, luks.HeaderBytes, 28 << 20, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := lvSize(tc.want, tc.floor, tc.limit, tc.hdr, ext)
			if tc.outOfRange {
				if !errdefs.Is(err, errdefs.ErrOutOfRange) {
					t.Errorf("lvSize = %d, %v; want OUT_OF_RANGE", got, err)
				}
				return
			}
			if err != nil || got != tc.lv {
				t.Errorf("lvSize = %d, %v; want %d", got, err, tc.lv)
			}
		})
	}
	// vol-enc: a 28 MiB LV with the header is a 12 MiB volume.
	ctx := context.Background()
	run, _ := recorder(lvsStates)
	b, err := New(ctx, "vgt/tp", Options{Run: run})
	if err != nil {
		t.Fatal(err)
	}
	u, err := b.Usage(ctx, "vol-enc")
	if err != nil || u.TotalBytes != 12<<20 || u.UsedBytes != 12<<20 {
		t.Errorf("Usage(vol-enc) = %+v, %v; want 12 MiB total, all of it used (half of the LV is mapped)", u, err)
	}
	got, err := b.(backend.Expander).ExpandVolume(ctx, "vol-enc", 10<<20)
	if err != nil || got != 12<<20 {
		t.Errorf("ExpandVolume(vol-enc, 10 MiB) = %d, %v; want the current 12 MiB", got, err)
	}
}
