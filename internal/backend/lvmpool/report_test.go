//go:build linux

package lvmpool

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/errdefs"
)

// lvsThin is `lvs --reportformat json --units b --nosuffix -o lvFields vgt`
// as lvm2 2.03.16 (Debian 12) prints it in the VM lane: a thin pool, a
// thin volume, its inactive snapshot and an untagged thin LV.
const lvsThin = `  {
      "report": [
          {
              "lv": [
                  {"lv_name":"snap-1", "vg_name":"vgt", "lv_path":"/dev/vgt/snap-1", "lv_attr":"Vwi---tz-k", "lv_size":"12582912", "lv_tags":"cairn.csi.dev,cairn.csi.dev/kind=snapshot,cairn.csi.dev/pool=vgt/tp,cairn.csi.dev/source=vol-a", "segtype":"thin", "pool_lv":"tp", "origin":"vol-a", "data_percent":"", "metadata_percent":"", "lv_active":"", "lv_skip_activation":"skip activation", "vg_extent_size":"4194304", "zero":"zero"},
                  {"lv_name":"tp", "vg_name":"vgt", "lv_path":"", "lv_attr":"twi-aotz--", "lv_size":"209715200", "lv_tags":"", "segtype":"thin-pool", "pool_lv":"", "origin":"", "data_percent":"91.50", "metadata_percent":"10.94", "lv_active":"active", "lv_skip_activation":"", "vg_extent_size":"4194304", "zero":"zero"},
                  {"lv_name":"vol-a", "vg_name":"vgt", "lv_path":"/dev/vgt/vol-a", "lv_attr":"Vwi-a-tz--", "lv_size":"12582912", "lv_tags":"cairn.csi.dev,cairn.csi.dev/kind=volume,cairn.csi.dev/pool=vgt/tp", "segtype":"thin", "pool_lv":"tp", "origin":"", "data_percent":"25.00", "metadata_percent":"", "lv_active":"active", "lv_skip_activation":"", "vg_extent_size":"4194304", "zero":"zero"},
                  {"lv_name":"other", "vg_name":"vgt", "lv_path":"/dev/vgt/other", "lv_attr":"Vwi-a-tzp-", "lv_size":"8388608", "lv_tags":"", "segtype":"thin", "pool_lv":"tp", "origin":"", "data_percent":"0.00", "metadata_percent":"", "lv_active":"active", "lv_skip_activation":"", "vg_extent_size":"4194304", "zero":"zero"}
              ]
          }
      ]
  }
`

const vgsReport = `  {
      "report": [
          {
              "vg": [
                  {"vg_name":"vgt", "vg_size":"1069547520", "vg_free":"851443712", "vg_extent_size":"4194304", "vg_attr":"wz--n-"}
              ]
          }
      ]
  }
`

func TestParseLVs(t *testing.T) {
	lvs, err := ParseLVs([]byte(lvsThin))
	if err != nil {
		t.Fatal(err)
	}
	if len(lvs) != 4 {
		t.Fatalf("got %d LVs, want 4", len(lvs))
	}
	tests := []struct {
		name    string
		check   func(LV) bool
		comment string
	}{
		{"snap-1", func(l LV) bool { return !l.Active && l.SkipAct && l.Origin == "vol-a" && l.Size == 12582912 }, "inactive thin snapshot"},
		{"snap-1", func(l LV) bool { v, ok := l.Tag(TagSource); return ok && v == "vol-a" }, "source tag"},
		{"tp", func(l LV) bool {
			return l.SegType == "thin-pool" && l.DataPct == 91.5 && l.MetaPct == 10.94 && l.PoolZeros
		}, "thin pool use"},
		{"vol-a", func(l LV) bool {
			return l.Active && l.HasTag(TagOwner) && l.Path == "/dev/vgt/vol-a" && l.ExtentSz == 4<<20
		}, "volume"},
		{"other", func(l LV) bool { return l.Partial() && !l.HasTag(TagOwner) && len(l.Tags) == 0 }, "untagged, partial"},
	}
	by := map[string]LV{}
	for _, l := range lvs {
		by[l.Name] = l
	}
	for _, tc := range tests {
		if !tc.check(by[tc.name]) {
			t.Errorf("%s (%s): %+v", tc.name, tc.comment, by[tc.name])
		}
	}
}

func TestParseReportErrors(t *testing.T) {
	for _, tc := range []struct{ name, in string }{
		{"not json", "  Volume group \"x\" not found"},
		{"bad size", `{"report":[{"lv":[{"lv_name":"a","lv_size":"12.00m"}]}]}`},
		{"negative size", `{"report":[{"lv":[{"lv_name":"a","lv_size":"-1"}]}]}`},
		{"bad percent", `{"report":[{"lv":[{"lv_name":"a","data_percent":"x"}]}]}`},
		{"percent over 100", `{"report":[{"lv":[{"lv_name":"a","data_percent":"100.01"}]}]}`},
		{"no name", `{"report":[{"lv":[{"lv_size":"1"}]}]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if lvs, err := ParseLVs([]byte(tc.in)); err == nil {
				t.Fatalf("ParseLVs = %+v, want an error", lvs)
			}
		})
	}
	if _, err := ParseVGs([]byte(`{"report":[{"vg":[{"vg_name":"a","vg_free":"1k"}]}]}`)); err == nil {
		t.Error("ParseVGs accepted a size with a unit")
	}
}

func TestParseVGs(t *testing.T) {
	vgs, err := ParseVGs([]byte(vgsReport))
	if err != nil || len(vgs) != 1 {
		t.Fatalf("ParseVGs = %+v, %v", vgs, err)
	}
	if v := vgs[0]; v.Name != "vgt" || v.Size != 1069547520 || v.Free != 851443712 || v.ExtentSz != 4<<20 || v.Partial() {
		t.Fatalf("ParseVGs = %+v", v)
	}
}

func TestParseSpec(t *testing.T) {
	for _, tc := range []struct {
		spec, vg, thin string
		ok             bool
	}{
		{"vg0", "vg0", "", true},
		{"vg0/thin", "vg0", "thin", true},
		{"vg0/", "", "", false},
		{"/vg0", "", "", false},
		{"vg0/a/b", "", "", false},
		{"-vg", "", "", false},
		{"..", "", "", false},
		{"vg 0", "", "", false},
	} {
		vg, thin, err := ParseSpec(tc.spec)
		if (err == nil) != tc.ok || vg != tc.vg || thin != tc.thin {
			t.Errorf("ParseSpec(%q) = %q, %q, %v", tc.spec, vg, thin, err)
		}
		if err != nil && !errdefs.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("ParseSpec(%q) error %v is not ErrInvalidArgument", tc.spec, err)
		}
	}
}

func TestRoundSize(t *testing.T) {
	const ext = 4 << 20
	for _, tc := range []struct {
		want, floor, limit, got int64
		err                     error
	}{
		{0, 0, 0, ext, nil},
		{1, 0, 0, ext, nil},
		{ext, 0, 0, ext, nil},
		{ext + 1, 0, 0, 2 * ext, nil},
		{ext, 3 * ext, 0, 3 * ext, nil},
		{10 << 20, 0, 10 << 20, 0, errdefs.ErrOutOfRange},
		{10 << 20, 0, 12 << 20, 12 << 20, nil},
		{1<<63 - 1, 0, 0, 0, errdefs.ErrOutOfRange},
	} {
		got, err := roundSize(tc.want, tc.floor, tc.limit, ext)
		if got != tc.got || !errors.Is(err, tc.err) && (err != nil || tc.err != nil) {
			t.Errorf("roundSize(%d, %d, %d) = %d, %v; want %d, %v", tc.want, tc.floor, tc.limit, got, err, tc.got, tc.err)
		}
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		stderr string
		class  error
	}{
		{`Failed to find logical volume "vgt/nope"`, errdefs.ErrNotFound},
		{`Volume group "nope" not found`, errdefs.ErrNotFound},
		{`Logical Volume "vol-a" already exists in volume group "vgt"`, errdefs.ErrAlreadyExists},
		{`Volume group "vgt" has insufficient free space (203 extents): 500 required.`, errdefs.ErrResourceExhausted},
		{`Logical volume vgt/vol-a in use.`, errdefs.ErrFailedPrecondition},
		{`Logical volume vgt/vol-a contains a filesystem in use.`, errdefs.ErrFailedPrecondition},
		{`Thin pool vgt-tp-tpool (254:2) transaction_id is 5, while expected 6.`, nil},
	} {
		err := classify("lvs", nil, tc.stderr, errors.New("exit status 5"))
		for _, c := range []error{errdefs.ErrNotFound, errdefs.ErrAlreadyExists, errdefs.ErrResourceExhausted, errdefs.ErrFailedPrecondition} {
			if errors.Is(err, c) != (c == tc.class) {
				t.Errorf("classify(%q) = %v, class %v", tc.stderr, err, tc.class)
			}
		}
		if !strings.Contains(err.Error(), tc.stderr) {
			t.Errorf("classify dropped the message: %v", err)
		}
	}
	if err := classify("lvs", nil, "", exec.ErrNotFound); !errdefs.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("missing lvm2 = %v, want ErrFailedPrecondition", err)
	}
}

// fakeLVM answers lvs and vgs from canned reports, for the thin-pool
// accounting, which needs no device-mapper.
func fakeLVM(lvs, vgs string) Runner {
	return func(ctx context.Context, name string, args ...string) ([]byte, error) {
		switch name {
		case "lvs":
			target := args[len(args)-1]
			if _, lv, ok := strings.Cut(target, "/"); ok {
				all, _ := ParseLVs([]byte(lvs))
				for _, l := range all {
					if l.Name == lv {
						return []byte(lvs), nil
					}
				}
				return nil, classify(name, args, `Failed to find logical volume "`+target+`"`, errors.New("exit status 5"))
			}
			return []byte(lvs), nil
		case "vgs":
			return []byte(vgs), nil
		}
		return nil, errors.New("unexpected command " + name)
	}
}

// TestThinAccounting checks Capacity and the refusal of a nearly full thin
// pool on the recorded report: tp is 91.5% full (data).
func TestThinAccounting(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name      string
		ratio     float64
		full      float64
		total     int64
		avail     int64
		refuse    bool
		refuseMsg string
	}{
		// 200 MiB pool; volumes: vol-a 12 MiB + other 8 MiB (snapshots not counted).
		{"full at 90%", 1, 90, 200 << 20, 0, true, "91.5% full (data)"},
		{"ratio 1 below threshold", 1, 95, 200 << 20, 180 << 20, false, ""},
		{"ratio 2.5", 2.5, 95, 500 << 20, 480 << 20, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := New(ctx, "vgt/tp", Options{OverProvisionRatio: tc.ratio, FullPercent: tc.full, Run: fakeLVM(lvsThin, vgsReport)})
			if err != nil {
				t.Fatal(err)
			}
			c, err := b.Capacity(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if c.TotalBytes != tc.total || c.AvailableBytes != tc.avail || c.MaxVolumeBytes != tc.avail || !c.Enforced {
				t.Errorf("Capacity = %+v, want total %d, available %d", c, tc.total, tc.avail)
			}
			err = b.(*ThinPool).room(ctx, 4<<20)
			if tc.refuse != (err != nil) || tc.refuse && (!errdefs.Is(err, errdefs.ErrResourceExhausted) || !strings.Contains(err.Error(), tc.refuseMsg)) {
				t.Errorf("room = %v, want refusal %t (%q)", err, tc.refuse, tc.refuseMsg)
			}
		})
	}
}

func TestNewSaysWhatIsMissing(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct{ spec, want string }{
		{"vgt/nope", `has no LV "nope"`},
		{"vgt/vol-a", "is a thin LV, not a thin pool"},
	} {
		_, err := New(ctx, tc.spec, Options{Run: fakeLVM(lvsThin, vgsReport)})
		if !errdefs.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%s) = %v, want FailedPrecondition saying %q", tc.spec, err, tc.want)
		}
	}
	noVG := func(ctx context.Context, name string, args ...string) ([]byte, error) {
		return nil, classify(name, args, `Volume group "vgx" not found`, errors.New("exit status 5"))
	}
	_, err := New(ctx, "vgx", Options{Run: noVG})
	if !errdefs.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), `volume group "vgx" not found`) {
		t.Errorf("New(vgx) = %v", err)
	}
}

// TestCreateCommands pins how many lvm2 commands a thin CreateVolume
// runs: one listing for every check, then lvcreate and lvrename. Under
// TCG each costs a second or more, and csi-sanity creates hundreds.
func TestCreateCommands(t *testing.T) {
	ctx := context.Background()
	var cmds []string
	fake := fakeLVM(lvsThin, vgsReport)
	run := func(ctx context.Context, name string, args ...string) ([]byte, error) {
		cmds = append(cmds, name)
		if name == "lvcreate" || name == "lvrename" {
			return nil, nil
		}
		return fake(ctx, name, args...)
	}
	b, err := New(ctx, "vgt/tp", Options{FullPercent: 95, Run: run})
	if err != nil {
		t.Fatal(err)
	}
	cmds = nil
	v, err := b.CreateVolume(ctx, "vol-new", backend.Spec{CapacityBytes: 5 << 20}, func(backend.Volume) error { return nil })
	if err != nil || v.CapacityBytes != 8<<20 {
		t.Fatalf("CreateVolume = %+v, %v; want 8 MiB (two 4 MiB extents)", v, err)
	}
	if got := strings.Join(cmds, ","); got != "lvs,lvcreate,lvrename" {
		t.Errorf("CreateVolume ran %s, want lvs,lvcreate,lvrename", got)
	}
}
