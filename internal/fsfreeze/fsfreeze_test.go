//go:build linux

package fsfreeze

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/testfs"
)

// guard bounds every wait, only so that a broken freeze fails the test
// instead of hanging it; nothing is asserted about how long anything takes.
const guard = 60 * time.Second

func TestFreezeBlocksWritesUntilThaw(t *testing.T) {
	mnt := testfs.New(t, "ext4", 0)
	ctx := context.Background()

	thaw, err := Freeze(ctx, mnt)
	if err != nil {
		t.Fatal(err)
	}
	// Never leave the test filesystem frozen: its unmount would hang.
	t.Cleanup(func() { _ = thaw() })

	data := []byte("written while frozen")
	path := filepath.Join(mnt, "file")
	tids := make(chan int, 1)
	done := make(chan error, 1)
	go func() {
		// Pinned to one thread, so the test can watch that thread block.
		runtime.LockOSThread()
		tids <- unix.Gettid()
		done <- os.WriteFile(path, data, 0o644)
	}()
	waitBlocked(t, <-tids, done)
	select {
	case err := <-done:
		t.Fatalf("write completed while frozen: %v", err)
	default:
	}

	if err := thaw(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("write after thaw: %v", err)
		}
	case <-time.After(guard):
		t.Fatal("write still blocked after thaw")
	}
	if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, data) {
		t.Errorf("file = %q, %v; want %q", got, err, data)
	}
	if err := thaw(); err != nil {
		t.Errorf("second thaw = %v; want the first's nil", err)
	}
}

// waitBlocked waits until thread tid sleeps uninterruptibly in the kernel,
// as a writer waiting for a thaw does, and fails if done fires first.
func waitBlocked(t *testing.T, tid int, done <-chan error) {
	t.Helper()
	deadline := time.Now().Add(guard)
	for {
		select {
		case err := <-done:
			t.Fatalf("write completed while frozen: %v", err)
		default:
		}
		if threadState(t, tid) == 'D' {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the writer never blocked")
		}
		time.Sleep(time.Millisecond)
	}
}

// threadState returns the state letter of thread tid of this process from
// /proc/self/task/<tid>/stat: "tid (comm) S ...", where comm may hold any
// character, so the state follows the last ')'.
func threadState(t *testing.T, tid int) byte {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/stat", tid))
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		t.Fatalf("unexpected stat line %q", b)
	}
	return b[i+2]
}

func TestFreezeTwice(t *testing.T) {
	mnt := testfs.New(t, "ext4", 0)
	ctx := context.Background()

	thaw, err := Freeze(ctx, mnt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = thaw() })
	if thaw2, err := Freeze(ctx, mnt); !errors.Is(err, ErrAlreadyFrozen) || thaw2 != nil {
		t.Fatalf("second Freeze = %v, %v; want nil, ErrAlreadyFrozen", thaw2 != nil, err)
	}
	// The failed second freeze took nothing away from the first.
	if err := thaw(); err != nil {
		t.Fatalf("thaw = %v", err)
	}
	thaw, err = Freeze(ctx, mnt)
	if err != nil {
		t.Fatalf("Freeze after thaw = %v", err)
	}
	if err := thaw(); err != nil {
		t.Fatal(err)
	}
}

func TestThawAfterForeignThaw(t *testing.T) {
	mnt := testfs.New(t, "ext4", 0)
	thaw, err := Freeze(context.Background(), mnt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = thaw() })
	// Someone else thaws, as fsfreeze -u would.
	fd, err := unix.Open(mnt, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.IoctlSetInt(fd, fithaw, 0); err != nil {
		t.Fatal(err)
	}
	if err := thaw(); !errors.Is(err, ErrNotFrozen) {
		t.Errorf("thaw after a foreign thaw = %v; want ErrNotFrozen", err)
	}
}

func TestFreezeRefuses(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		path string
		want error
	}{
		{"not a mount point", context.Background(), dir, errdefs.ErrInvalidArgument},
		{"the root filesystem", context.Background(), "/", errdefs.ErrInvalidArgument},
		{"missing", context.Background(), filepath.Join(dir, "nope"), fs.ErrNotExist},
		{"a file", context.Background(), file, unix.ENOTDIR},
		{"canceled", canceled, dir, context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			thaw, err := Freeze(tc.ctx, tc.path)
			if thaw != nil {
				_ = thaw()
			}
			if !errors.Is(err, tc.want) || thaw != nil {
				t.Errorf("Freeze(%s) = %v, %v; want nil, %v", tc.path, thaw != nil, err, tc.want)
			}
		})
	}
}
