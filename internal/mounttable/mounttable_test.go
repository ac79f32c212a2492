package mounttable_test

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/mounttable"
	"github.com/cairn-csi/cairn/internal/testdriver"
)

// TestMain runs the tests in a private mount namespace: see
// testdriver.MainInPrivateMounts for why.
func TestMain(m *testing.M) { testdriver.MainInPrivateMounts(m, "internal/mounttable") }

func TestReadFindsBindMountsByInode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for mount(2)")
	}
	dir := t.TempDir()
	src, other := filepath.Join(dir, "src"), filepath.Join(dir, "other")
	targets := []string{filepath.Join(dir, "t1"), filepath.Join(dir, "t 2")} // mountinfo escapes the space
	for _, p := range append([]string{src, other}, targets...) {
		if err := os.Mkdir(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, tgt := range targets {
		if err := unix.Mount(src, tgt, "", unix.MS_BIND, ""); err != nil {
			t.Fatal(err)
		}
		defer unix.Unmount(tgt, unix.MNT_DETACH)
	}
	tbl, err := mounttable.Read()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		path string
		want []string
	}{
		{"bind-mounted twice", src, targets},
		{"not mounted", other, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var st unix.Stat_t
			if err := unix.Stat(tc.path, &st); err != nil {
				t.Fatal(err)
			}
			got := slices.Sorted(slices.Values(tbl.Dir(st.Dev, st.Ino)))
			if !slices.Equal(got, slices.Sorted(slices.Values(tc.want))) {
				t.Fatalf("Dir(%s) = %q, want %q", tc.path, got, tc.want)
			}
			// By root name: the same answer, and no name without a mount.
			name := filepath.Base(tc.path)
			got = slices.Sorted(slices.Values(tbl.DirNamed(name, st.Dev, st.Ino)))
			if !slices.Equal(got, slices.Sorted(slices.Values(tc.want))) || tbl.RootNamed(name) != (len(tc.want) > 0) {
				t.Fatalf("DirNamed(%s) = %q, RootNamed %v; want %q", name, got, tbl.RootNamed(name), tc.want)
			}
		})
	}
}

func TestReadFileMissing(t *testing.T) {
	if _, err := mounttable.ReadFile(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Fatal("want an error for a missing mountinfo")
	}
}

func TestMountPoints(t *testing.T) {
	file := filepath.Join(t.TempDir(), "mountinfo")
	lines := "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n" +
		"30 22 0:30 / /srv/a\\040b rw - tmpfs tmpfs rw\n" +
		"31 30 0:31 /vol /srv/a\\040b/c rw - ext4 /dev/vdb rw\n"
	if err := os.WriteFile(file, []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := mounttable.MountPoints(file)
	want := []string{"/", "/srv/a b", "/srv/a b/c"}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("MountPoints = %q, %v; want %q", got, err, want)
	}
	if _, err := mounttable.MountPoints(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("MountPoints(missing) = nil error")
	}
}
