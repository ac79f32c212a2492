package store

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestAccessTypeOnDisk: the typed AccessType is stored as the same string
// as before it was typed, so existing records decode unchanged.
func TestAccessTypeOnDisk(t *testing.T) {
	tests := []struct {
		at   AccessType
		json string
	}{
		{AccessMount, `"accessType":"mount"`},
		{AccessBlock, `"accessType":"block"`},
		{"", `"accessType":""`},
	}
	for _, tt := range tests {
		b, err := json.Marshal(Volume{ID: "vol-0123456789abcdef", AccessType: tt.at})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), tt.json) {
			t.Errorf("%q encodes as %s, want %s in it", tt.at, b, tt.json)
		}
		var back Volume
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		if back.AccessType != tt.at {
			t.Errorf("%q decodes as %q", tt.at, back.AccessType)
		}
	}
}
