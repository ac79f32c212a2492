package projquota

import (
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/testfs"
)

// fsKinds are the filesystems tests can ask newTestFS for.
var fsKinds = map[string]struct {
	fstype string
	mkfs   []string // mkfs.<fstype> arguments before the image path
	opts   string   // mount options
	config []string // kernel options the mount needs, named in skips
}{
	"ext4":          {"ext4", []string{"-F", "-q", "-I", "256"}, "", nil},
	"ext4-prjquota": {"ext4", []string{"-F", "-q", "-I", "256", "-O", "quota,project"}, "prjquota", []string{"CONFIG_QUOTA", "CONFIG_QFMT_V2"}},
	"xfs":           {"xfs", []string{"-f", "-q"}, "", nil},
	"xfs-prjquota":  {"xfs", []string{"-f", "-q"}, "prjquota", []string{"CONFIG_XFS_QUOTA"}},
	"btrfs":         {"btrfs", []string{"-f", "-q"}, "", nil},
	"tmpfs":         {"tmpfs", nil, "size=16m", nil},
}

// newTestFS mounts a fresh filesystem of the given kind (a key of fsKinds),
// backed by a sparse file on a loop device under tb.TempDir(), and returns
// its mount point; cleanup unmounts, detaches and removes it. It skips when
// not root, when a tool is missing, or when the kernel cannot mount that
// kind (quota support not built in). A private stand-in for
// internal/testfs, which did not exist when this package was written.
func newTestFS(tb testing.TB, kind string) string {
	tb.Helper()
	k, ok := fsKinds[kind]
	if !ok {
		tb.Fatalf("unknown filesystem kind %q", kind)
	}
	if os.Geteuid() != 0 {
		tb.Skipf("needs root: mounts a %s filesystem", kind)
	}
	dir := tb.TempDir()
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		tb.Fatal(err)
	}
	if k.fstype == "tmpfs" {
		if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, k.opts); err != nil {
			tb.Fatalf("mount tmpfs: %v", err)
		}
		tb.Cleanup(func() { unmount(tb, mnt) })
		return mnt
	}

	mkfs, err := exec.LookPath("mkfs." + k.fstype)
	if err != nil {
		tb.Skipf("mkfs.%s not installed", k.fstype)
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		tb.Skip("losetup not installed")
	}
	img := filepath.Join(dir, "fs.img")
	f, err := os.Create(img)
	if err != nil {
		tb.Fatal(err)
	}
	if err := f.Truncate(512 << 20); err != nil { // XFS wants >= 300 MiB
		tb.Fatal(err)
	}
	f.Close()
	if out, err := exec.Command(mkfs, append(k.mkfs, img)...).CombinedOutput(); err != nil {
		tb.Fatalf("mkfs.%s: %v: %s", k.fstype, err, out)
	}
	out, err := exec.Command("losetup", "--find", "--show", img).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%w: %s", err, ee.Stderr)
		}
		tb.Fatalf("losetup --find --show %s: %v", img, err)
	}
	dev := strings.TrimSpace(string(out))
	tb.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			tb.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	if err := unix.Mount(dev, mnt, k.fstype, 0, k.opts); err != nil {
		// Skip only when the kernel may lack quota support: when its
		// config is readable and has every option, the failure is ours.
		if missing, known := missingConfig(k.config); len(k.config) > 0 && errors.Is(err, unix.EINVAL) && (!known || len(missing) > 0) {
			why := "it needs " + strings.Join(k.config, ", ")
			if known {
				why = "/proc/config.gz lacks " + strings.Join(missing, ", ")
			}
			testfs.SkipKernel(tb, "kernel cannot mount %s (%v): %s", kind, err, why)
		}
		tb.Fatalf("mount %s on %s: %v", kind, dev, err)
	}
	tb.Cleanup(func() { unmount(tb, mnt) })
	return mnt
}

// missingConfig returns which of opts /proc/config.gz does not set, and
// whether the kernel exposes its config at all.
func missingConfig(opts []string) (missing []string, known bool) {
	f, err := os.Open("/proc/config.gz")
	if err != nil {
		return nil, false
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, false
	}
	set := map[string]bool{}
	sc := bufio.NewScanner(zr)
	for sc.Scan() {
		if name, val, ok := strings.Cut(sc.Text(), "="); ok && (val == "y" || val == "m") {
			set[name] = true
		}
	}
	if sc.Err() != nil {
		return nil, false
	}
	for _, o := range opts {
		if !set[o] {
			missing = append(missing, o)
		}
	}
	return missing, true
}

func unmount(tb testing.TB, mnt string) {
	for range 50 {
		err := unix.Unmount(mnt, 0)
		if err == nil {
			return
		}
		if !errors.Is(err, unix.EBUSY) {
			tb.Errorf("unmount %s: %v", mnt, err)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
		tb.Errorf("lazy unmount %s: %v", mnt, err)
	}
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

// unprivileged runs fn on an OS thread without CAP_SYS_RESOURCE in its
// effective set, as a pod's process would run: the generic quota code (ext4)
// lets holders of that capability, such as the root test process, write past
// hard limits. The thread is discarded afterwards, never reused.
func unprivileged(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// No UnlockOSThread: the thread exits with this goroutine.
		runtime.LockOSThread()
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("capget: %w", err)
			return
		}
		data[unix.CAP_SYS_RESOURCE/32].Effective &^= 1 << (unix.CAP_SYS_RESOURCE % 32)
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("capset: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// writeFile writes n bytes to path in 1 MiB chunks and fsyncs, without
// CAP_SYS_RESOURCE, returning how many bytes write(2) accepted and the first
// error.
func writeFile(path string, n int64) (written int64, err error) {
	err = unprivileged(func() error {
		var err error
		written, err = writeFileAsIs(path, n)
		return err
	})
	return written, err
}

func writeFileAsIs(path string, n int64) (int64, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return 0, err
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	var written int64
	for written < n {
		m, err := f.Write(buf[:min(int64(len(buf)), n-written)])
		written += int64(m)
		if err != nil {
			f.Close()
			return written, err
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return written, err
	}
	return written, f.Close()
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
