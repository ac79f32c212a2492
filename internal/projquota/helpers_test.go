package projquota

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/testfs"
)

// fsKinds maps the filesystem kinds these tests name to testfs types and
// the mkfs arguments they add; "tmpfs" is mounted directly.
var fsKinds = map[string]struct {
	testfs string
	mkfs   []string
}{
	"ext4":          {"ext4", []string{"-I", "256"}}, // no project feature
	"ext4-prjquota": {"ext4-prjquota", nil},
	"xfs":           {"xfs-noquota", nil},
	"xfs-prjquota":  {"xfs", nil}, // testfs's xfs is mounted -o prjquota
	"btrfs":         {"btrfs", nil},
	"tmpfs":         {"", nil},
}

// newTestFS mounts a fresh 512 MiB filesystem of the given kind (a key of
// fsKinds) through internal/testfs, which skips when not root, when a tool
// is missing, or when the kernel cannot mount that kind (and fails in the
// VM lane instead), and returns its mount point.
func newTestFS(tb testing.TB, kind string) string {
	tb.Helper()
	k, ok := fsKinds[kind]
	if !ok {
		tb.Fatalf("unknown filesystem kind %q", kind)
	}
	if k.testfs != "" {
		return testfs.New(tb, k.testfs, 512<<20, k.mkfs...) // XFS wants >= 300 MiB
	}
	testfs.RequireRoot(tb)
	mnt := tb.TempDir()
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=16m"); err != nil {
		tb.Fatalf("mount tmpfs: %v", err)
	}
	tb.Cleanup(func() { testfs.Unmount(tb, mnt) })
	return mnt
}

// quotactlModes runs each case through quotactl_fd(2) and through the
// quotactl(2) fallback.
var quotactlModes = []struct {
	name string
	fd   bool
}{
	{"quotactl_fd", true},
	{"quotactl", false},
}

func setMode(t *testing.T, fd bool) {
	t.Helper()
	if fd && !quotactlFDAvailable() {
		testfs.SkipKernel(t, "kernel has no quotactl_fd(2)")
	}
	useQuotactlFD = func() bool { return fd }
	t.Cleanup(func() { useQuotactlFD = quotactlFDAvailable })
}

// inherits reports whether path has FS_XFLAG_PROJINHERIT.
func inherits(path string) (bool, error) {
	fsx, err := getXattr(path)
	return fsx.XFlags&fsXFlagProjInherit != 0, err
}

// quotaErrno is the error a write past a project's hard limit gets on the
// filesystem at path: XFS says ENOSPC for project quota, ext4 (the
// kernel's generic quota code) EDQUOT.
func quotaErrno(tb testing.TB, path string) unix.Errno {
	tb.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		tb.Fatal(err)
	}
	if st.Type == unix.XFS_SUPER_MAGIC {
		return unix.ENOSPC
	}
	return unix.EDQUOT
}
