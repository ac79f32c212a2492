//go:build linux

// Package testfs owns throwaway filesystems for tests: a sparse image file
// under t.TempDir, attached to a loop device with internal/loopdev,
// formatted with the real mkfs tool and mounted, then unmounted, detached
// and removed by t.Cleanup. It never touches a disk it did not make.
//
// It is a test helper: import it from _test.go files only. Everything here
// needs root, and skips the test (never fails it) when not root, when the
// mkfs tool is missing, or when the kernel cannot mount the filesystem.
// In the VM lane (hack/vm-lane.sh sets CAIRN_VM_LANE=1, see VMLane), a
// kernel or capability the test needs is required instead: its absence
// fails the test, so that the lane cannot pass by skipping.
package testfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/loopdev"
)

// kind is how to make and mount one filesystem type.
type kind struct {
	fstype   string   // for mount(2)
	mkfs     string   // tool
	pkg      string   // Debian package that has the tool
	mkfsArgs []string // always passed, before the caller's
	data     string   // mount(2) data (options)
	minSize  int64    // the smallest image the tool accepts, used when New is given 0
}

var kinds = map[string]kind{
	"ext4":          {fstype: "ext4", mkfs: "mkfs.ext4", pkg: "e2fsprogs", mkfsArgs: []string{"-q", "-F"}, minSize: 32 << 20},
	"ext4-encrypt":  {fstype: "ext4", mkfs: "mkfs.ext4", pkg: "e2fsprogs", mkfsArgs: []string{"-q", "-F", "-O", "encrypt"}, minSize: 32 << 20},
	"ext4-prjquota": {fstype: "ext4", mkfs: "mkfs.ext4", pkg: "e2fsprogs", mkfsArgs: []string{"-q", "-F", "-I", "256", "-O", "quota,project"}, data: "prjquota", minSize: 32 << 20},
	"xfs":           {fstype: "xfs", mkfs: "mkfs.xfs", pkg: "xfsprogs", mkfsArgs: []string{"-q", "-f"}, data: "prjquota", minSize: 300 << 20},
	"xfs-noquota":   {fstype: "xfs", mkfs: "mkfs.xfs", pkg: "xfsprogs", mkfsArgs: []string{"-q", "-f"}, minSize: 300 << 20},
	"btrfs":         {fstype: "btrfs", mkfs: "mkfs.btrfs", pkg: "btrfs-progs", mkfsArgs: []string{"-q", "-f"}, minSize: 128 << 20},
}

// Types lists the fstype names New accepts:
//
//   - "ext4"
//   - "ext4-encrypt": ext4 made with -O encrypt (fscrypt)
//   - "ext4-prjquota": ext4 made with -O quota,project, mounted -o prjquota
//   - "xfs": mounted -o prjquota; skips on kernels without XFS quota support
//     (and fails in the VM lane, see SkipKernel)
//   - "xfs-noquota": xfs without quota options, for tests that only need xfs
//   - "btrfs"
func Types() []string {
	names := make([]string, 0, len(kinds))
	for n := range kinds {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// FS is a mounted throwaway filesystem.
type FS struct {
	Type       string // as given to NewFS
	MountPoint string
	Device     string // the loop device, e.g. "/dev/loop3"
	Image      string // the sparse backing file
}

// New makes, mounts and returns the mount point of a filesystem of fstype
// (see Types) on a sparse image of sizeBytes (0: the smallest the mkfs tool
// accepts). mkfsArgs go to the mkfs tool before the device. Cleanup
// unmounts it, detaches the loop device and removes the image.
func New(t testing.TB, fstype string, sizeBytes int64, mkfsArgs ...string) string {
	t.Helper()
	return NewFS(t, fstype, sizeBytes, mkfsArgs...).MountPoint
}

// NewFS is New for tests that also need the device or the image, e.g. to
// grow it.
func NewFS(t testing.TB, fstype string, sizeBytes int64, mkfsArgs ...string) *FS {
	t.Helper()
	fs, err := NewIfSupported(t, fstype, sizeBytes, mkfsArgs...)
	if err != nil {
		SkipKernel(t, "%v", err)
	}
	return fs
}

// NewIfSupported is NewFS for callers that must not skip: when this
// machine's kernel cannot mount fstype, it returns an *UnsupportedError
// instead of skipping; in the VM lane it fails the test instead. It still skips when not root or the mkfs tool is missing.
func NewIfSupported(t testing.TB, fstype string, sizeBytes int64, mkfsArgs ...string) (*FS, error) {
	t.Helper()
	fs, err := newFS(t, fstype, sizeBytes, mkfsArgs...)
	if err != nil && VMLane() {
		t.Fatalf("%v (CAIRN_VM_LANE=1: the VM lane requires it)", err)
	}
	return fs, err
}

func newFS(t testing.TB, fstype string, sizeBytes int64, mkfsArgs ...string) (*FS, error) {
	t.Helper()
	k, ok := kinds[fstype]
	if !ok {
		t.Fatalf("testfs: unknown filesystem type %q; want one of %v", fstype, Types())
	}
	RequireRoot(t)
	tool, err := exec.LookPath(k.mkfs)
	if err != nil {
		t.Skipf("testfs: %s not found (apt-get install -y %s): %v", k.mkfs, k.pkg, err)
	}
	if sizeBytes == 0 {
		sizeBytes = k.minSize
	}
	ctx := t.Context()

	dir := t.TempDir()
	fs := &FS{Type: fstype, MountPoint: filepath.Join(dir, "mnt"), Image: filepath.Join(dir, fstype+".img")}
	if err := os.Mkdir(fs.MountPoint, 0o755); err != nil {
		t.Fatalf("testfs: %v", err)
	}
	if err := makeSparse(fs.Image, sizeBytes); err != nil {
		t.Fatalf("testfs: %v", err)
	}

	dev, err := loopdev.Attach(ctx, fs.Image, loopdev.Options{})
	if err != nil {
		t.Fatalf("testfs: %v", err)
	}
	fs.Device = dev.Path
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err := loopdev.Detach(ctx, dev.Path)
		switch {
		case errors.Is(err, unix.EBUSY):
			// Something else has the device open for a moment (udev, or
			// another process scanning loop devices); it is marked and
			// detaches itself at that last close. A real leak (a mount
			// left on it) fails the unmount cleanup, which runs first.
			t.Logf("testfs: cleanup: %v", err)
		case err != nil:
			t.Errorf("testfs: cleanup: %v", err)
		}
	})

	args := append(slices.Clone(k.mkfsArgs), mkfsArgs...)
	args = append(args, dev.Path)
	cmd := exec.CommandContext(ctx, tool, args...)
	// Fixed locale so that a failure reads the same on every machine.
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("testfs: %s %s: %v\n%s", tool, strings.Join(args, " "), err, out)
	}

	if err := k.mount(fs); err != nil {
		var ue *UnsupportedError
		if errors.As(err, &ue) {
			return nil, ue
		}
		t.Fatalf("testfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unmount(fs.MountPoint); err != nil {
			t.Errorf("testfs: cleanup: %v", err)
		}
	})
	return fs, nil
}

// mount mounts fs.Device on fs.MountPoint with the kind's options. A
// kernel that cannot is an *UnsupportedError.
func (k kind) mount(fs *FS) error {
	err := unix.Mount(fs.Device, fs.MountPoint, k.fstype, 0, k.data)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.ENODEV):
		return &UnsupportedError{Type: fs.Type, Reason: fmt.Sprintf("the kernel cannot mount %s: %v", k.fstype, err)}
	case k.data != "" && errors.Is(err, unix.EINVAL):
		// Kernels built without quota support (CONFIG_QFMT_V2 for ext4,
		// CONFIG_XFS_QUOTA for xfs) refuse these filesystems or options
		// with EINVAL: the machine's limit, not a bug; dmesg says which.
		return &UnsupportedError{Type: fs.Type, Reason: fmt.Sprintf("the kernel refused %s with -o %s, most likely built without quota support: %v", k.fstype, k.data, err)}
	}
	return fmt.Errorf("mount %s on %s (%s, %q): %w", fs.Device, fs.MountPoint, k.fstype, k.data, err)
}

// Remount unmounts the filesystem and mounts it again from the same
// device with the same options, as a reboot would: what survives is only
// what is on disk.
func (fs *FS) Remount(t testing.TB) {
	t.Helper()
	if err := unmount(fs.MountPoint); err != nil {
		t.Fatalf("testfs: remount: %v", err)
	}
	if err := kinds[fs.Type].mount(fs); err != nil {
		t.Fatalf("testfs: remount: %v", err)
	}
}

// UnsupportedError says that this machine's kernel cannot mount a
// filesystem type (or not with the options it needs). Its loop device
// is detached when the test ends.
type UnsupportedError struct {
	Type   string // as given to New
	Reason string
}

func (e *UnsupportedError) Error() string { return "testfs: " + e.Type + ": " + e.Reason }

// VMLaneHint ends every skip for a kernel or capability this machine
// lacks: hack/vm-lane.sh runs those tests in a VM whose kernel has it.
const VMLaneHint = "runs in the VM lane (hack/vm-lane.sh)"

// VMLane reports whether the tests run in the VM lane (CAIRN_VM_LANE=1),
// where every kernel feature and capability the tests use is present.
func VMLane() bool { return os.Getenv("CAIRN_VM_LANE") == "1" }

// SkipKernel skips the test because the kernel (or the process's
// capabilities) lacks what it needs, naming the VM lane that runs it. In
// the VM lane it fails the test instead: there, a missing feature is a
// broken lane, not a reason to pass.
func SkipKernel(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if VMLane() {
		t.Fatalf("%s (CAIRN_VM_LANE=1: the VM lane requires it)", msg)
	}
	t.Skipf("%s; %s", msg, VMLaneHint)
}

// RequireRoot skips the test unless it runs as root on a machine with loop
// devices.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("testfs: needs root for loop devices and mount(2)")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skipf("testfs: needs loop device support: %v", err)
	}
}

func makeSparse(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// unmount unmounts mnt, retrying while something (a test's leftover open
// file, a writeback) keeps it busy. As a last resort it detaches the mount
// lazily, so that removing the temporary directory cannot reach into the
// filesystem, and reports the error.
func unmount(mnt string) error {
	delay := 10 * time.Millisecond
	var err error
	for range 10 {
		err = unix.Unmount(mnt, 0)
		if err == nil || errors.Is(err, unix.EINVAL) { // EINVAL: not mounted
			return nil
		}
		if !errors.Is(err, unix.EBUSY) {
			break
		}
		time.Sleep(delay)
		delay = min(2*delay, 500*time.Millisecond)
	}
	if lerr := unix.Unmount(mnt, unix.MNT_DETACH); lerr != nil {
		return fmt.Errorf("unmount %s: %w (lazy unmount: %w)", mnt, err, lerr)
	}
	return fmt.Errorf("unmount %s: %w; detached lazily, the device stays busy until its last user goes", mnt, err)
}
