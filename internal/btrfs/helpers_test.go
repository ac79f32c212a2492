package btrfs

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// newTestFS makes a btrfs filesystem of size bytes in a sparse file under
// tb.TempDir(), attaches it to a loop device and mounts it; cleanup
// unmounts, detaches and removes it. It skips unless root with mkfs.btrfs
// and losetup installed. A private stand-in for internal/testfs, which did
// not exist when this package was written.
func newTestFS(tb testing.TB, size int64) string {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root: mounts a btrfs filesystem on a loop device")
	}
	mkfs, err := exec.LookPath("mkfs.btrfs")
	if err != nil {
		tb.Skip("mkfs.btrfs not installed (apt-get install btrfs-progs)")
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		tb.Skip("losetup not installed")
	}

	dir := tb.TempDir()
	img := filepath.Join(dir, "btrfs.img")
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		tb.Fatal(err)
	}
	f, err := os.Create(img)
	if err != nil {
		tb.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		tb.Fatal(err)
	}
	f.Close()
	if out, err := exec.Command(mkfs, "-q", img).CombinedOutput(); err != nil {
		tb.Fatalf("mkfs.btrfs: %v: %s", err, out)
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
	if err := unix.Mount(dev, mnt, "btrfs", 0, ""); err != nil {
		tb.Fatalf("mount %s: %v", dev, err)
	}
	tb.Cleanup(func() { unmount(tb, mnt) })
	return mnt
}

func unmount(tb testing.TB, mnt string) {
	// Busy only if something still holds a file open: retry briefly, then
	// detach lazily so the loop device is freed when it closes.
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

// writeFile writes n bytes of data to path in 1 MiB chunks and fsyncs,
// returning how many bytes write(2) accepted and the first error.
func writeFile(path string, n int64, fill byte) (int64, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return 0, err
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = fill + byte(i*7)
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
