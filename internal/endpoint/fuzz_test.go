package endpoint

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cairn-csi/cairn/internal/errdefs"
)

// FuzzParse: Parse never panics; what it accepts is a unix endpoint with
// an absolute, clean path or a tcp endpoint with a host part; what it
// refuses is refused as ErrInvalidArgument.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"unix:///run/cairn/csi.sock", "unix:/run/csi.sock", "tcp://127.0.0.1:10000", "tcp://[::1]:1",
		"unix://host/x", "unix:rel", "tcp://", "", "unix:///a/../../b", "unix:///a%2Fb", "unix:///a?b#c",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e, err := Parse(s)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("Parse(%q) err = %v, not ErrInvalidArgument", s, err)
			}
			if e != (Endpoint{}) {
				t.Fatalf("Parse(%q) failed but returned %+v", s, e)
			}
			return
		}
		switch e.Network {
		case "unix":
			if !filepath.IsAbs(e.Address) || filepath.Clean(e.Address) != e.Address {
				t.Fatalf("Parse(%q) accepted unix path %q, which is not absolute and clean", s, e.Address)
			}
			if strings.ContainsFunc(e.Address, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
				t.Fatalf("Parse(%q) accepted a path with a control character", s)
			}
		case "tcp":
			if e.Address == "" {
				t.Fatalf("Parse(%q) accepted tcp with no address", s)
			}
		default:
			t.Fatalf("Parse(%q) returned network %q", s, e.Network)
		}
	})
}
