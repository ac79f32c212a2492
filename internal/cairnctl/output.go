package cairnctl

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"sigs.k8s.io/yaml"
)

// Output formats for -o.
const (
	formatTable = "table"
	formatJSON  = "json"
	formatYAML  = "yaml"
)

var formats = []string{formatTable, formatJSON, formatYAML}

// printer writes one command's result in the chosen format. JSON and YAML
// come from the same view structs (YAML through their JSON tags), so the
// two always carry the same fields.
type printer struct {
	w      io.Writer
	format string
}

// print writes v as JSON or YAML, or calls table with a tabwriter that is
// flushed afterwards.
func (p printer) print(v any, table func(w io.Writer)) error {
	switch p.format {
	case formatJSON:
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(p.w, "%s\n", b)
		return err
	case formatYAML:
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = p.w.Write(b)
		return err
	}
	tw := newTable(p.w)
	table(tw)
	return tw.Flush()
}

func newTable(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 8, 2, ' ', 0) }

// row writes one tab-separated row.
func row(w io.Writer, cells ...string) {
	fmt.Fprintln(w, strings.Join(cells, "\t"))
}

// kvRows writes a vertical key/value table for one object; a value with
// several lines continues under an empty key.
func kvRows(w io.Writer, pairs ...[2]string) {
	for _, p := range pairs {
		lines := strings.Split(p[1], "\n")
		row(w, p[0], lines[0])
		for _, l := range lines[1:] {
			row(w, "", l)
		}
	}
}

// humanBytes prints a size in binary units: "64 MiB", "9.8 GiB", "512 B".
func humanBytes(n int64) string {
	if n < 0 {
		return strconv.FormatInt(n, 10)
	}
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	v := float64(n)
	i := 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	// One decimal, dropped when it is 0: "64 MiB", "9.8 GiB".
	return strings.TrimSuffix(fmt.Sprintf("%.1f", v), ".0") + " " + units[i]
}

// orDash stands in for an empty cell, which tabwriter would collapse.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// joinMap prints a map as sorted k=v pairs joined by sep.
func joinMap(m map[string]string, sep string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, sep)
}

func joinTopologies(ts []map[string]string) string {
	parts := make([]string, 0, len(ts))
	for _, t := range ts {
		parts = append(parts, joinMap(t, ","))
	}
	return strings.Join(parts, " ")
}
