package app

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// FuzzPoolFlag: Set never panics; what it accepts has a valid name, a
// known type and an absolute, clean path, and String gives back a value
// that Set parses to the same pool.
func FuzzPoolFlag(f *testing.F) {
	for _, s := range []string{
		"default=dir:/var/lib/cairn/pools/default", "a=dir:/", "fast=btrfs:/srv/fast", "img=image:/srv/img",
		"a=dir:relative", "A=dir:/x", "a=dir", "=:", "a=dir:/x/../../..", "a=dir:/x,b=dir:/y",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var p poolFlags
		err := p.Set(s)
		if err != nil {
			if len(p) != 0 {
				t.Fatalf("Set(%q) failed but added %v", s, p)
			}
			return
		}
		if len(p) != 1 {
			t.Fatalf("Set(%q) added %d pools", s, len(p))
		}
		got := p[0]
		if !poolNamePattern.MatchString(got.Name) || strings.ContainsAny(got.Name, "/.\x00") {
			t.Fatalf("Set(%q) accepted name %q", s, got.Name)
		}
		if !slices.Contains(PoolTypes(), got.Type) {
			t.Fatalf("Set(%q) accepted type %q", s, got.Type)
		}
		if !filepath.IsAbs(got.Path) || filepath.Clean(got.Path) != got.Path {
			t.Fatalf("Set(%q) accepted path %q, not absolute and clean", s, got.Path)
		}
		for _, el := range strings.Split(got.Path, "/") {
			if el == ".." {
				t.Fatalf("Set(%q) kept a '..' in %q", s, got.Path)
			}
		}
		var again poolFlags
		if err := again.Set(p.String()); err != nil || !slices.Equal(again, p) {
			t.Fatalf("Set(%q).String() = %q does not parse back: %v, %v", s, p.String(), again, err)
		}
	})
}
