//go:build linux

package lvmpool

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/cairn-csi/cairn/internal/errdefs"
)

// Runner runs one lvm2 command (lvs, lvcreate, ...) with args and returns
// its standard output. Tests replace it to feed recorded reports.
type Runner func(ctx context.Context, name string, args ...string) ([]byte, error)

// ExecRunner runs lvm2 commands with exec.CommandContext. LC_ALL=C keeps
// messages (which errors are classed by) in English and numbers in the C
// locale; LVM_SUPPRESS_FD_WARNINGS keeps lvm2 from complaining on stderr
// about descriptors the Go runtime holds open.
func ExecRunner(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LVM_SUPPRESS_FD_WARNINGS=1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), classify(name, args, strings.TrimSpace(stderr.String()), err)
	}
	return stdout.Bytes(), nil
}

// classify wraps a failed lvm2 command's error in the class its message
// says. lvm2 exits 5 for almost every failure, so the message is all there
// is to go on; what is not recognised stays unclassed (INTERNAL).
func classify(name string, args []string, stderr string, err error) error {
	msg := fmt.Sprintf("%s %s: %v: %s", name, strings.Join(args, " "), err, stderr)
	switch {
	case strings.Contains(stderr, "not found"), strings.Contains(stderr, "Failed to find logical volume"):
		return fmt.Errorf("%s: %w", msg, errdefs.ErrNotFound)
	case strings.Contains(stderr, "already exists"):
		return fmt.Errorf("%s: %w", msg, errdefs.ErrAlreadyExists)
	case strings.Contains(stderr, "insufficient free space"), strings.Contains(stderr, "Insufficient free space"),
		strings.Contains(stderr, "out of data space"), strings.Contains(stderr, "out of metadata space"):
		return fmt.Errorf("%s: %w", msg, errdefs.ErrResourceExhausted)
	case strings.Contains(stderr, " in use"), strings.Contains(stderr, "is open"):
		// Deactivating or removing an LV that is mounted or held open.
		return fmt.Errorf("%s: %w", msg, errdefs.ErrFailedPrecondition)
	case errors.Is(err, exec.ErrNotFound):
		return fmt.Errorf("%s (is lvm2 installed?): %w", msg, errdefs.ErrFailedPrecondition)
	}
	return errors.New(msg)
}

// LV is one row of `lvs --reportformat json` with the fields lvFields
// names, converted to Go types.
type LV struct {
	Name      string
	VG        string
	Path      string // /dev/VG/LV; empty for hidden and inactive LVs
	Attr      string
	Size      int64 // bytes
	Tags      []string
	SegType   string // "thin", "thin-pool", "linear", ...
	PoolLV    string // a thin LV's thin pool
	Origin    string // a thin snapshot's origin
	DataPct   float64
	MetaPct   float64
	Active    bool
	SkipAct   bool // activation skip flag set (-ky): thin snapshots
	ExtentSz  int64
	PoolZeros bool // a thin pool zeroes newly provisioned blocks
}

// Tag returns the value of tag key=value, if the LV has it.
func (l LV) Tag(key string) (string, bool) {
	for _, t := range l.Tags {
		if v, ok := strings.CutPrefix(t, key+"="); ok {
			return v, true
		}
	}
	return "", false
}

// HasTag reports whether the LV carries tag t exactly.
func (l LV) HasTag(t string) bool {
	for _, x := range l.Tags {
		if x == t {
			return true
		}
	}
	return false
}

// Partial reports whether the LV is missing some of its physical volumes
// (lv_attr's ninth character, volume health, is "p").
func (l LV) Partial() bool { return len(l.Attr) > 8 && l.Attr[8] == 'p' }

// VG is one row of `vgs --reportformat json`.
type VG struct {
	Name     string
	Size     int64
	Free     int64
	ExtentSz int64
	Attr     string
}

// Partial reports whether the VG is missing physical volumes (vg_attr's
// fourth character is "p").
func (v VG) Partial() bool { return len(v.Attr) > 3 && v.Attr[3] == 'p' }

// The fields asked for; the parsers below know each one's type.
const (
	lvFields = "lv_name,vg_name,lv_path,lv_attr,lv_size,lv_tags,segtype,pool_lv,origin,data_percent,metadata_percent,lv_active,lv_skip_activation,vg_extent_size,zero"
	vgFields = "vg_name,vg_size,vg_free,vg_extent_size,vg_attr"
)

// reportArgs make lvs and vgs print one JSON document with sizes in plain
// bytes, whatever lvm.conf says.
var reportArgs = []string{"--reportformat", "json", "--units", "b", "--nosuffix"}

// report is the JSON document lvs and vgs print: one report per command,
// each holding an "lv" or "vg" list of rows of strings.
type report struct {
	Report []struct {
		LV []map[string]string `json:"lv"`
		VG []map[string]string `json:"vg"`
	} `json:"report"`
}

// ParseLVs parses `lvs --reportformat json --units b --nosuffix -o lvFields`.
func ParseLVs(out []byte) ([]LV, error) {
	var r report
	if err := json.Unmarshal(out, &r); err != nil {
		return nil, fmt.Errorf("parse lvs report: %w", err)
	}
	var lvs []LV
	for _, part := range r.Report {
		for _, row := range part.LV {
			lv, err := parseLV(row)
			if err != nil {
				return nil, err
			}
			lvs = append(lvs, lv)
		}
	}
	return lvs, nil
}

func parseLV(row map[string]string) (LV, error) {
	lv := LV{
		Name:      row["lv_name"],
		VG:        row["vg_name"],
		Path:      row["lv_path"],
		Attr:      row["lv_attr"],
		SegType:   row["segtype"],
		PoolLV:    row["pool_lv"],
		Origin:    row["origin"],
		Active:    row["lv_active"] == "active",
		SkipAct:   row["lv_skip_activation"] != "",
		PoolZeros: row["zero"] == "zero",
	}
	if lv.Name == "" {
		return lv, fmt.Errorf("lvs report row without lv_name: %v", row)
	}
	if t := row["lv_tags"]; t != "" {
		lv.Tags = strings.Split(t, ",")
	}
	var err error
	if lv.Size, err = bytesField(row, "lv_size"); err != nil {
		return lv, err
	}
	if lv.ExtentSz, err = bytesField(row, "vg_extent_size"); err != nil {
		return lv, err
	}
	if lv.DataPct, err = percentField(row, "data_percent"); err != nil {
		return lv, err
	}
	if lv.MetaPct, err = percentField(row, "metadata_percent"); err != nil {
		return lv, err
	}
	return lv, nil
}

// ParseVGs parses `vgs --reportformat json --units b --nosuffix -o vgFields`.
func ParseVGs(out []byte) ([]VG, error) {
	var r report
	if err := json.Unmarshal(out, &r); err != nil {
		return nil, fmt.Errorf("parse vgs report: %w", err)
	}
	var vgs []VG
	for _, part := range r.Report {
		for _, row := range part.VG {
			vg := VG{Name: row["vg_name"], Attr: row["vg_attr"]}
			var err error
			if vg.Size, err = bytesField(row, "vg_size"); err != nil {
				return nil, err
			}
			if vg.Free, err = bytesField(row, "vg_free"); err != nil {
				return nil, err
			}
			if vg.ExtentSz, err = bytesField(row, "vg_extent_size"); err != nil {
				return nil, err
			}
			vgs = append(vgs, vg)
		}
	}
	return vgs, nil
}

// bytesField parses a size printed with --units b --nosuffix. A missing
// or empty field is 0 (lvm2 prints "" for fields that do not apply).
func bytesField(row map[string]string, key string) (int64, error) {
	s := row[key]
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("lvm2 report field %s = %q: not a byte count", key, s)
	}
	return n, nil
}

// percentField parses data_percent and metadata_percent ("12.34", or ""
// for LVs that have none, or inactive ones).
func percentField(row map[string]string, key string) (float64, error) {
	s := row[key]
	if s == "" {
		return 0, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 || f > 100 {
		return 0, fmt.Errorf("lvm2 report field %s = %q: not a percentage", key, s)
	}
	return f, nil
}
