//go:build linux

package lvmpool_test

import (
	"context"
	"fmt"

	"github.com/cairn-csi/cairn/internal/backend/lvmpool"
)

// A pool's path names a VG, and a thin pool in it for thin volumes.
func ExampleParseSpec() {
	for _, spec := range []string{"vg0/thin", "vg0", "/dev/vg0"} {
		vg, thin, err := lvmpool.ParseSpec(spec)
		fmt.Printf("%q: vg=%q thin=%q err=%v\n", spec, vg, thin, err != nil)
	}
	// Output:
	// "vg0/thin": vg="vg0" thin="thin" err=false
	// "vg0": vg="vg0" thin="" err=false
	// "/dev/vg0": vg="" thin="" err=true
}

// lvm2's JSON report, parsed into typed rows.
func ExampleParseLVs() {
	out := []byte(`{"report":[{"lv":[{"lv_name":"vol-1","vg_name":"vg0","lv_size":"16777216",
		"lv_tags":"cairn.csi.dev,cairn.csi.dev/kind=volume","segtype":"thin","pool_lv":"thin",
		"data_percent":"12.50","lv_active":"active","lv_attr":"Vwi-a-tz--"}]}]}`)
	lvs, err := lvmpool.ParseLVs(out)
	if err != nil {
		panic(err)
	}
	kind, _ := lvs[0].Tag(lvmpool.TagKind)
	fmt.Println(lvs[0].Name, lvs[0].Size, lvs[0].DataPct, lvs[0].Active, kind)
	// Output: vol-1 16777216 12.5 true volume
}

// Opening a pool checks that the VG and thin pool exist; Cairn never
// creates them. (Needs root and lvm2; the VM lane runs the real thing.)
func ExampleNew() {
	b, err := lvmpool.New(context.Background(), "vg0/thin", lvmpool.Options{OverProvisionRatio: 2, FullPercent: 90})
	if err != nil {
		fmt.Println("cannot open:", err != nil)
		return
	}
	fmt.Println(b.Type())
}
