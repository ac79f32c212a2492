//go:build linux

package testfs

import (
	"fmt"
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// Unmount unmounts mnt as the cleanup of New does (retrying while busy,
// then detaching lazily) and fails the test if it could not. For tests
// that mount something themselves, such as a tmpfs.
func Unmount(t testing.TB, mnt string) {
	t.Helper()
	if err := unmount(mnt); err != nil {
		t.Errorf("testfs: %v", err)
	}
}

// WriteFile writes n bytes to path (created or truncated) in 1 MiB chunks
// and fsyncs, returning how many bytes write(2) accepted and the first
// error, so that a test can see where a limit stopped it. The data is a
// pattern seeded by fill, not zeros, so that no filesystem can skip it.
func WriteFile(path string, n int64, fill byte) (written int64, err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return 0, err
	}
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = fill + byte(i*7)
	}
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

// WriteFileUnprivileged is WriteFile without CAP_SYS_RESOURCE (see
// Unprivileged), as a pod's process writes.
func WriteFileUnprivileged(path string, n int64) (written int64, err error) {
	err = Unprivileged(func() error {
		var err error
		written, err = WriteFile(path, n, 0)
		return err
	})
	return written, err
}

// Unprivileged runs fn on an OS thread without CAP_SYS_RESOURCE in its
// effective set, as a pod's process runs: the kernel's generic quota code
// (ext4) lets holders of that capability, such as a root test process,
// write past hard limits. The thread is discarded afterwards, never reused.
func Unprivileged(fn func() error) error {
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
