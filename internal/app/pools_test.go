package app

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestPoolFlagSet(t *testing.T) {
	tests := []struct {
		in      string
		want    poolSpec
		wantErr string // substring; "" = success
	}{
		{in: "default=dir:/var/lib/cairn/pools/default", want: poolSpec{"default", "dir", "/var/lib/cairn/pools/default"}},
		{in: "a=dir:/", want: poolSpec{"a", "dir", "/"}},
		{in: "fast-1=dir:/srv//fast/../fast2/", want: poolSpec{"fast-1", "dir", "/srv/fast2"}},
		{in: "p=dir:/path:with:colons", want: poolSpec{"p", "dir", "/path:with:colons"}},
		{in: "p=dir:/with=equals", want: poolSpec{"p", "dir", "/with=equals"}},
		{in: strings.Repeat("a", 63) + "=dir:/x", want: poolSpec{strings.Repeat("a", 63), "dir", "/x"}},
		{in: "0=dir:/x", want: poolSpec{"0", "dir", "/x"}},
		{in: "thin=lvm:vg0/thinpool", want: poolSpec{"thin", "lvm", "vg0/thinpool"}},
		{in: "thick=lvm:vg0", want: poolSpec{"thick", "lvm", "vg0"}},

		{in: "", wantErr: "want name=type:path"},
		{in: "nope", wantErr: "want name=type:path"},
		{in: "a=dir", wantErr: "want name=type:path"},
		{in: "a:dir=/x", wantErr: "want name=type:path"},
		{in: "=dir:/x", wantErr: "pool name"},
		{in: "A=dir:/x", wantErr: "pool name"},
		{in: "-a=dir:/x", wantErr: "pool name"},
		{in: "a-=dir:/x", wantErr: "pool name"},
		{in: "a_b=dir:/x", wantErr: "pool name"},
		{in: "a.b=dir:/x", wantErr: "pool name"},
		{in: "../x=dir:/x", wantErr: "pool name"},
		{in: strings.Repeat("a", 64) + "=dir:/x", wantErr: "pool name"},
		{in: "a=zfs:/x", wantErr: "unknown type"},
		{in: "a=:/x", wantErr: "unknown type"},
		{in: "a=DIR:/x", wantErr: "unknown type"},
		{in: "a=dir:", wantErr: "must be absolute"},
		{in: "a=dir:relative/x", wantErr: "must be absolute"},
		{in: "a=dir:./x", wantErr: "must be absolute"},
		{in: "a=lvm:/dev/vg0", wantErr: "want VG or VG/THINPOOL"},
		{in: "a=lvm:vg0/", wantErr: "thin pool name"},
		{in: "a=lvm:vg0/a/b", wantErr: "thin pool name"},
		{in: "a=lvm:", wantErr: "want VG or VG/THINPOOL"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			var p poolFlags
			err := p.Set(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Set(%q) err = %v, want one mentioning %q", tt.in, err, tt.wantErr)
				}
				if len(p) != 0 {
					t.Errorf("a refused Set added %v", p)
				}
				return
			}
			if err != nil {
				t.Fatalf("Set(%q): %v", tt.in, err)
			}
			if len(p) != 1 || p[0] != tt.want {
				t.Errorf("Set(%q) = %v, want %v", tt.in, p, tt.want)
			}
		})
	}
}

func TestPoolFlagDuplicateAndString(t *testing.T) {
	var p poolFlags
	for _, v := range []string{"a=dir:/x", "b=dir:/y"} {
		if err := p.Set(v); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Set("a=dir:/z"); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("a second pool named a: err = %v", err)
	}
	// Two lvm pools on one thin pool would reconcile away each other's
	// volumes; a thick pool on its VG is another pool.
	var l poolFlags
	for _, v := range []string{"thin=lvm:vg0/tp", "thick=lvm:vg0"} {
		if err := l.Set(v); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Set("enc=lvm:vg0/tp"); err == nil || !strings.Contains(err.Error(), `already pool "thin"`) {
		t.Errorf("a second lvm pool on vg0/tp: err = %v", err)
	}
	if got := p.String(); got != "a=dir:/x,b=dir:/y" {
		t.Errorf("String() = %q", got)
	}
	var empty poolFlags
	if got := empty.String(); got != "" {
		t.Errorf("empty String() = %q", got)
	}
}

func TestPoolTypes(t *testing.T) {
	types := PoolTypes()
	if !slices.Contains(types, "dir") {
		t.Errorf("PoolTypes() = %v, want it to include dir", types)
	}
	if !slices.IsSorted(types) {
		t.Errorf("PoolTypes() = %v, not sorted", types)
	}
}

func TestOpenPoolsDir(t *testing.T) {
	root := filepath.Join(t.TempDir(), "pool")
	var p poolFlags
	if err := p.Set("default=dir:" + root); err != nil {
		t.Fatal(err)
	}
	pools, err := openPools(context.Background(), p, nil, poolOptions{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if len(pools) != 1 || pools[0].Name != "default" || pools[0].Backend.Type() != "dir" {
		t.Fatalf("openPools = %+v", pools)
	}
	if _, err := os.Stat(filepath.Join(root, "volumes")); err != nil {
		t.Errorf("dir pool layout not created: %v", err)
	}
}

func TestOpenPoolsFailure(t *testing.T) {
	// A pool path below a regular file cannot be created.
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	var p poolFlags
	if err := p.Set("bad=dir:" + file + "/pool"); err != nil {
		t.Fatal(err)
	}
	_, err := openPools(context.Background(), p, nil, poolOptions{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err == nil || !strings.Contains(err.Error(), "pool bad") {
		t.Errorf("openPools over a file: err = %v, want one naming the pool", err)
	}
}
