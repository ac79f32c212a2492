package projquota

import (
	"context"
	"errors"
	"fmt"
	"github.com/cairn-csi/cairn/internal/testfs"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/errdefs"
)

const mib = 1 << 20

// TestABI pins request numbers and struct sizes to the values the C headers
// (linux/quota.h, dqblk_xfs.h, fs.h) give on amd64, checked with a one-off C
// program.
func TestABI(t *testing.T) {
	for _, tc := range []struct {
		name      string
		got, want uint64
	}{
		{"FS_IOC_FSGETXATTR", uint64(fsIocFSGetXattr), 0x801c581f},
		{"FS_IOC_FSSETXATTR", uint64(fsIocFSSetXattr), 0x401c5820},
		{"QCMD(Q_GETQUOTA, PRJQUOTA)", uint64(qcmd(qGetQuota, prjQuota)), 0x80000702},
		{"QCMD(Q_SETQUOTA, PRJQUOTA)", uint64(qcmd(qSetQuota, prjQuota)), 0x80000802},
		{"QCMD(Q_XGETQSTATV, PRJQUOTA)", uint64(qcmd(qXGetQStatV, prjQuota)), 0x580802},
		{"sizeof(struct if_dqblk)", uint64(unsafe.Sizeof(ifDqblk{})), 72},
		{"sizeof(struct fs_quota_statv)", uint64(unsafe.Sizeof(fsQuotaStatV{})), 160},
		{"sizeof(struct fsxattr)", uint64(unsafe.Sizeof(fsxattr{})), 28},
		{"offsetof(fs_quota_statv, qs_pquota)", uint64(unsafe.Offsetof(fsQuotaStatV{}.PQuota)), 56},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %#x, want %#x", tc.name, tc.got, tc.want)
		}
	}
}

func TestMountSource(t *testing.T) {
	info := filepath.Join(t.TempDir(), "mountinfo")
	lines := `22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
36 22 7:3 / /srv/a\040b rw,relatime shared:2 - xfs /dev/loop3 rw,prjquota
37 22 7:4 / /srv/c rw master:1 shared:3 - ext4 /dev/disk\040one rw
38 22 7:3 /sub /srv/bind rw - xfs /dev/loop3 rw
`
	if err := os.WriteFile(info, []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	old := mountinfoPath
	mountinfoPath = info
	t.Cleanup(func() { mountinfoPath = old })

	for _, tc := range []struct {
		majMin, want string
		wantErr      error
	}{
		{"253:1", "/dev/vda1", nil},
		{"7:3", "/dev/loop3", nil},
		{"7:4", "/dev/disk one", nil},
		{"8:0", "", unix.ENODEV},
	} {
		got, err := mountSource(tc.majMin)
		if got != tc.want || !errors.Is(err, tc.wantErr) {
			t.Errorf("mountSource(%s) = %q, %v; want %q, %v", tc.majMin, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	for in, want := range map[string]string{
		`/dev/sda1`:       "/dev/sda1",
		`/a\040b`:         "/a b",
		`tab\011and\134`:  "tab\tand\\",
		`trailing\04`:     `trailing\04`,
		`not\9octal\040x`: "not\\9octal x",
	} {
		if got := unescapeMountinfo(in); got != want {
			t.Errorf("unescapeMountinfo(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestArgumentChecks(t *testing.T) {
	ctx := context.Background()
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	dir := t.TempDir()
	for _, tc := range []struct {
		name    string
		call    func() error
		wantErr error
	}{
		{"SetLimit project 0", func() error { return SetLimit(ctx, dir, 0, mib) }, errdefs.ErrInvalidArgument},
		{"SetInodeLimit project 0", func() error { return SetInodeLimit(ctx, dir, 0, 10) }, errdefs.ErrInvalidArgument},
		{"ClearLimit project 0", func() error { return ClearLimit(ctx, dir, 0) }, errdefs.ErrInvalidArgument},
		{"Supported canceled", func() error { _, err := Supported(canceled, dir); return err }, context.Canceled},
		{"SetProject canceled", func() error { return SetProject(canceled, dir, 1) }, context.Canceled},
		{"GetProject canceled", func() error { _, err := GetProject(canceled, dir); return err }, context.Canceled},
		{"SetLimit canceled", func() error { return SetLimit(canceled, dir, 1, mib) }, context.Canceled},
		{"SetInodeLimit canceled", func() error { return SetInodeLimit(canceled, dir, 1, 1) }, context.Canceled},
		{"ClearLimit canceled", func() error { return ClearLimit(canceled, dir, 1) }, context.Canceled},
		{"Usage canceled", func() error { _, _, _, err := Usage(canceled, dir, 1); return err }, context.Canceled},
		{"Supported missing path", func() error { _, err := Supported(ctx, filepath.Join(dir, "nope")); return err }, errdefs.ErrNotFound},
		{"SetProject symlink", func() error {
			link := filepath.Join(dir, "link")
			if err := os.Symlink(dir, link); err != nil {
				return err
			}
			return SetProject(ctx, link, 1)
		}, unix.ELOOP},
	} {
		if err := tc.call(); !errors.Is(err, tc.wantErr) {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.wantErr)
		}
	}
}

func TestSupported(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		kind string
		want bool
	}{
		{"ext4", false}, // no project feature
		{"xfs", false},  // mounted without prjquota
		{"btrfs", false},
		{"tmpfs", false},
		{"ext4-prjquota", true},
		{"xfs-prjquota", true},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			mnt := newTestFS(t, tc.kind)
			sub := filepath.Join(mnt, "sub")
			if err := os.Mkdir(sub, 0o755); err != nil {
				t.Fatal(err)
			}
			for _, m := range quotactlModes {
				t.Run(m.name, func(t *testing.T) {
					setMode(t, m.fd)
					for _, p := range []string{mnt, sub} {
						got, err := Supported(ctx, p)
						if err != nil || got != tc.want {
							t.Errorf("Supported(%s) = %v, %v; want %v, nil", p, got, err, tc.want)
						}
					}
				})
			}
		})
	}
	if got, err := Supported(ctx, "/proc"); err != nil || got {
		t.Errorf("Supported(/proc) = %v, %v; want false, nil", got, err)
	}
}

// TestProjectInheritance checks tagging and that new files, directories and
// their contents inherit the tag. XFS keeps project IDs whether or not
// quotas are on, so plain XFS covers this where quota mounts are impossible.
func TestProjectInheritance(t *testing.T) {
	ctx := context.Background()
	for _, kind := range []string{"xfs", "ext4-prjquota", "xfs-prjquota"} {
		t.Run(kind, func(t *testing.T) {
			mnt := newTestFS(t, kind)
			vol := filepath.Join(mnt, "vol")
			if err := os.WriteFile(filepath.Join(mnt, "before"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(vol, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := SetProject(ctx, vol, 4242); err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(filepath.Join(vol, "a", "b"), 0o755); err != nil {
				t.Fatal(err)
			}
			for _, p := range []string{"f", "a/f", "a/b/f"} {
				if err := os.WriteFile(filepath.Join(vol, p), []byte("x"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			for _, tc := range []struct {
				path        string
				wantID      uint32
				wantInherit bool
			}{
				{vol, 4242, true},
				{filepath.Join(vol, "f"), 4242, false},
				{filepath.Join(vol, "a"), 4242, true},
				{filepath.Join(vol, "a", "f"), 4242, false},
				{filepath.Join(vol, "a", "b"), 4242, true},
				{filepath.Join(vol, "a", "b", "f"), 4242, false},
				{filepath.Join(mnt, "before"), 0, false},
			} {
				id, err := GetProject(ctx, tc.path)
				inh, ierr := inherits(tc.path)
				if err != nil || ierr != nil || id != tc.wantID || inh != tc.wantInherit {
					t.Errorf("%s: project %d (%v), inherit %v (%v); want %d, %v",
						tc.path, id, err, inh, ierr, tc.wantID, tc.wantInherit)
				}
			}
			// A file can be tagged too (no inherit flag), and 0 untags.
			if err := SetProject(ctx, filepath.Join(mnt, "before"), 7); err != nil {
				t.Errorf("SetProject on a file: %v", err)
			}
			if err := SetProject(ctx, vol, 0); err != nil {
				t.Fatal(err)
			}
			if id, err := GetProject(ctx, vol); err != nil || id != 0 {
				t.Errorf("after untagging: project %d, %v", id, err)
			}
			if inh, err := inherits(vol); err != nil || inh {
				t.Errorf("after untagging: inherit %v, %v; want false", inh, err)
			}
		})
	}
}

func TestWithoutProjectQuota(t *testing.T) {
	ctx := context.Background()
	t.Run("ext4 without project feature", func(t *testing.T) {
		mnt := newTestFS(t, "ext4")
		if err := SetProject(ctx, mnt, 42); !errors.Is(err, errdefs.ErrNotSupported) {
			t.Errorf("SetProject = %v, want ErrNotSupported", err)
		}
		if err := SetProject(ctx, mnt, 0); err != nil {
			t.Errorf("SetProject(0) = %v, want nil (it is every file's project)", err)
		}
		checkQuotaOff(t, mnt)
	})
	t.Run("xfs without prjquota", func(t *testing.T) {
		checkQuotaOff(t, newTestFS(t, "xfs"))
	})
}

func checkQuotaOff(t *testing.T, mnt string) {
	t.Helper()
	ctx := context.Background()
	for _, m := range quotactlModes {
		t.Run(m.name, func(t *testing.T) {
			setMode(t, m.fd)
			for name, err := range map[string]error{
				"SetLimit": SetLimit(ctx, mnt, 42, mib),
				"Usage":    func() error { _, _, _, err := Usage(ctx, mnt, 42); return err }(),
			} {
				if !errors.Is(err, errdefs.ErrFailedPrecondition) && !errors.Is(err, errdefs.ErrNotSupported) {
					t.Errorf("%s with project quota off = %v, want ErrFailedPrecondition or ErrNotSupported", name, err)
				}
			}
		})
	}
}

func TestLimits(t *testing.T) {
	ctx := context.Background()
	for _, kind := range []string{"ext4-prjquota", "xfs-prjquota"} {
		t.Run(kind, func(t *testing.T) {
			mnt := newTestFS(t, kind)
			for i, m := range quotactlModes {
				t.Run(m.name, func(t *testing.T) {
					setMode(t, m.fd)
					checkLimits(t, ctx, mnt, fmt.Sprintf("vol%d", i), uint32(100+i))
				})
			}
		})
	}
}

func checkLimits(t *testing.T, ctx context.Context, mnt, name string, id uint32) {
	vol := filepath.Join(mnt, name)
	if err := os.Mkdir(vol, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := SetProject(ctx, vol, id); err != nil {
		t.Fatal(err)
	}
	if err := SetLimit(ctx, mnt, id, 8*mib); err != nil {
		t.Fatal(err)
	}
	used, limit, _, err := Usage(ctx, mnt, id)
	if err != nil || limit != 8*mib || used > 64<<10 {
		t.Fatalf("Usage of a fresh project = used %d, limit %d, %v; want ~0, 8 MiB", used, limit, err)
	}

	// 16 MiB into an 8 MiB project stops at the limit, from a subdirectory
	// too since it inherits the project.
	if err := os.Mkdir(filepath.Join(vol, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	written, err := testfs.WriteFileUnprivileged(filepath.Join(vol, "sub", "big"), 16*mib)
	if want := quotaErrno(t, mnt); !errors.Is(err, want) { // XFS says ENOSPC for projects
		t.Fatalf("writing 16 MiB under an 8 MiB limit: wrote %d, err %v; want %v", written, err, want)
	}
	t.Logf("stopped after %d bytes: %v", written, err)
	used, limit, inodes, err := Usage(ctx, mnt, id)
	if err != nil {
		t.Fatal(err)
	}
	if used > 8*mib || used+mib < min(uint64(written), 8*mib) || limit != 8*mib || inodes != 3 {
		t.Errorf("Usage after hitting the limit = used %d, limit %d, inodes %d; want ~%d (<= 8 MiB), 8 MiB, 3 (vol, sub, big)",
			used, limit, inodes, written)
	}

	// Raising the limit lets writes through. Odd sizes round up: to 1 KiB
	// on ext4, to the block size on XFS.
	if err := SetLimit(ctx, mnt, id, 32*mib+1); err != nil {
		t.Fatal(err)
	}
	_, raised, _, err := Usage(ctx, mnt, id)
	if err != nil || raised < 32*mib+1024 || raised > 32*mib+64<<10 {
		t.Errorf("limit after SetLimit(32 MiB + 1) = %d, %v; want 32 MiB + 1 rounded up to at most 64 KiB", raised, err)
	}
	if _, err := testfs.WriteFileUnprivileged(filepath.Join(vol, "more"), 8*mib); err != nil {
		t.Errorf("write after raising the limit: %v", err)
	}

	// Inode limit: room for exactly two more files.
	_, _, inodes, _ = Usage(ctx, mnt, id)
	if err := SetInodeLimit(ctx, mnt, id, inodes+2); err != nil {
		t.Fatal(err)
	}
	for i, wantFail := range []bool{false, false, true} {
		err := testfs.Unprivileged(func() error {
			return os.WriteFile(filepath.Join(vol, fmt.Sprintf("n%d", i)), nil, 0o644)
		})
		failed := errors.Is(err, unix.EDQUOT) || errors.Is(err, unix.ENOSPC)
		if failed != wantFail || (err != nil && !failed) {
			t.Errorf("file %d under the inode limit: %v, want failure=%v (EDQUOT or ENOSPC)", i, err, wantFail)
		}
	}
	if _, limit, _, _ := Usage(ctx, mnt, id); limit != raised {
		t.Errorf("SetInodeLimit changed the byte limit from %d to %d", raised, limit)
	}

	if err := ClearLimit(ctx, mnt, id); err != nil {
		t.Fatal(err)
	}
	if _, limit, _, err := Usage(ctx, mnt, id); err != nil || limit != 0 {
		t.Errorf("after ClearLimit: limit %d, %v; want 0", limit, err)
	}
	if _, err := testfs.WriteFileUnprivileged(filepath.Join(vol, "unlimited"), 40*mib); err != nil {
		t.Errorf("write after ClearLimit: %v", err)
	}
	if err := ClearLimit(ctx, mnt, id); err != nil {
		t.Errorf("second ClearLimit: %v", err)
	}

	// A project nobody used has no usage and no limit.
	if used, limit, inodes, err := Usage(ctx, mnt, 999999); err != nil || used != 0 || limit != 0 || inodes != 0 {
		t.Errorf("Usage of an unused project = %d, %d, %d, %v; want zeros", used, limit, inodes, err)
	}
}
