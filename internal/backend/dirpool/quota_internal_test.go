package dirpool

import (
	"os"
	"path/filepath"
	"testing"
)

// TestHint: the allocation hint is only a starting point, so anything
// unreadable in it must mean "start over", never a failure.
func TestHint(t *testing.T) {
	for _, tc := range []struct {
		name    string
		content string
		want    uint32
	}{
		{"missing", "", 0},
		{"written", "16777300\n", 16777300},
		{"no newline", "16777300", 16777300},
		{"torn", "1677", 1677},
		{"garbage", "x\x00y", 0},
		{"negative", "-5\n", 0},
		{"too big", "4294967296\n", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := os.OpenFile(filepath.Join(t.TempDir(), projIDFile), os.O_RDWR|os.O_CREATE, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteString(tc.content); err != nil {
				t.Fatal(err)
			}
			if got := readHint(f); got != tc.want {
				t.Errorf("readHint(%q) = %d, want %d", tc.content, got, tc.want)
			}
			// A rewrite replaces whatever was there, longer or not.
			if err := writeHint(f, 17); err != nil {
				t.Fatal(err)
			}
			if got := readHint(f); got != 17 {
				t.Errorf("after writeHint(17) over %q: readHint = %d", tc.content, got)
			}
		})
	}
}
