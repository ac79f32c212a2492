package bench

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteTable prints the result for a human: a header, one row per phase,
// what was skipped and why, the driver's memory, and the cleanup.
func WriteTable(w io.Writer, r *Result) error {
	c := r.Config
	fmt.Fprintf(w, "driver    %s %s", r.Driver.Name, r.Driver.VendorVersion)
	if r.Driver.NodeID != "" {
		fmt.Fprintf(w, " on node %s", r.Driver.NodeID)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "config    %d volumes of %s, %d concurrent callers, %d lifecycles, %s of data, %s access\n",
		c.Volumes, sizeOrDefault(c.CapacityBytes), c.Concurrency, c.LifecycleRuns, bytesStr(c.DataBytes), c.AccessType)
	cache := "page cache kept (no --drop-caches)"
	if c.DropCaches {
		cache = "page cache dropped before read-backs (--drop-caches)"
	}
	fmt.Fprintf(w, "data      --data-timeout %s per call; %s\n", c.DataTimeout, cache)
	// What the reader must know before trusting the figures comes first,
	// not after the table.
	for _, warn := range r.Warnings {
		fmt.Fprintf(w, "WARNING   %s\n", warn)
	}
	fmt.Fprintln(w)

	var table strings.Builder
	tw := tabwriter.NewWriter(&table, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "PHASE\tOPS\tERRORS\tTIME\tOPS/S\tP50\tP99\tMAX\tNOTE")
	for _, p := range r.Phases {
		opsPerSec, p50, p99, maxLat := "-", "-", "-", "-"
		if p.Ops > 1 {
			opsPerSec = fmt.Sprintf("%.1f", p.OpsPerSecond)
			p50, p99, maxLat = secs(p.Latency.P50), secs(p.Latency.P99), secs(p.Latency.Max)
		}
		note := p.Note
		if p.BytesPerSecond > 0 {
			note = fmt.Sprintf("%s at %s/s; %s", bytesStr(p.Bytes), bytesStr(int64(p.BytesPerSecond)), note)
		}
		if p.FirstError != "" {
			note = "first error: " + p.FirstError
		}
		fmt.Fprintln(tw, strings.Join([]string{p.Name, fmt.Sprint(p.Ops), fmt.Sprint(p.Errors),
			secs(p.TotalSeconds), opsPerSec, p50, p99, maxLat, note}, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// tabwriter pads an empty last cell; trim it so lines end cleanly.
	for _, line := range strings.SplitAfter(table.String(), "\n") {
		if line != "" {
			fmt.Fprintln(w, strings.TrimRight(line, " \n"))
		}
	}
	if len(r.Skipped) > 0 {
		fmt.Fprintln(w, "\nskipped")
		tw = tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
		for _, s := range r.Skipped {
			fmt.Fprintf(tw, "  %s\t%s\n", s.Phase, s.Reason)
		}
		tw.Flush()
	}
	fmt.Fprintln(w)
	if len(r.Ratios) > 0 {
		keys := make([]string, 0, len(r.Ratios))
		for k := range r.Ratios {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(w, "ratio        %s = %.2f\n", k, r.Ratios[k])
		}
	}
	if r.RSS.Known {
		fmt.Fprintf(w, "driver RSS   pid %d: %s with none of the bench's volumes, %s with %d, %s with %d", r.RSS.PID,
			bytesStr(r.RSS.BeforeBytes), bytesStr(r.RSS.MidBytes), r.RSS.MidVolumes, bytesStr(r.RSS.AfterBytes), r.RSS.Volumes)
		if r.RSS.Volumes > r.RSS.MidVolumes {
			fmt.Fprintf(w, ": %s per 1,000 volumes (slope from %d to %d)", signedBytes(int64(r.RSS.BytesPerVolume*1000)), r.RSS.MidVolumes, r.RSS.Volumes)
		}
		fmt.Fprintln(w)
	} else {
		fmt.Fprintf(w, "driver RSS   unknown: %s\n", r.RSS.Reason)
	}
	fmt.Fprintf(w, "cleanup      %d actions, %d errors\n", r.Cleanup.Actions, len(r.Cleanup.Errors))
	for _, e := range r.Cleanup.Errors {
		fmt.Fprintf(w, "  LEFT BEHIND: %s\n", e)
	}
	if r.Interrupted {
		fmt.Fprintln(w, "interrupted: the phases above are what finished")
	}
	return nil
}

func sizeOrDefault(n int64) string {
	if n == 0 {
		return "the driver's default size"
	}
	return bytesStr(n)
}

// bytesStr prints a size in binary units.
func bytesStr(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	v, i := float64(n), 0
	for math.Abs(v) >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	// One decimal, dropped when it is 0: "64 MiB", "9.8 GiB".
	return strings.TrimSuffix(fmt.Sprintf("%.1f", v), ".0") + " " + units[i]
}

func signedBytes(n int64) string {
	if n >= 0 {
		return "+" + bytesStr(n)
	}
	return "-" + bytesStr(-n)
}

// secs prints seconds as a short duration.
func secs(s float64) string { return fmtDuration(time.Duration(s * float64(time.Second))) }

// fmtDuration rounds to three significant digits: 4.82ms, 1.23s.
func fmtDuration(d time.Duration) string {
	switch {
	case d <= 0:
		return "0s"
	case d < time.Microsecond:
		return d.String()
	case d < time.Millisecond:
		return trimDecimals(float64(d)/float64(time.Microsecond)) + "µs"
	case d < time.Second:
		return trimDecimals(float64(d)/float64(time.Millisecond)) + "ms"
	case d < time.Minute:
		return trimDecimals(d.Seconds()) + "s"
	}
	return d.Round(time.Second).String()
}

// trimDecimals keeps three significant digits of v (1 <= v < 1000).
func trimDecimals(v float64) string {
	var s string
	switch {
	case v < 10:
		s = fmt.Sprintf("%.2f", v)
	case v < 100:
		s = fmt.Sprintf("%.1f", v)
	default:
		s = fmt.Sprintf("%.0f", v)
	}
	if strings.Contains(s, ".") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	return s
}
