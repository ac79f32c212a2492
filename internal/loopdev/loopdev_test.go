//go:build linux

package loopdev

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/errdefs"
)

// ours records every backing file the tests create, so that the leak check
// in TestMain can tell this binary's devices from those of test binaries
// running in parallel (go test runs packages concurrently).
var ours struct {
	sync.Mutex
	files map[string]bool
}

func TestMain(m *testing.M) {
	ctx := context.Background()
	before, _ := List(ctx)
	code := m.Run()
	if os.Geteuid() == 0 {
		if err := leakCheck(ctx, before); err != nil {
			fmt.Fprintln(os.Stderr, err)
			if code == 0 {
				code = 1
			}
		}
	}
	os.Exit(code)
}

// leakCheck fails if a device attached by these tests is still attached.
// Other changes to the set of devices since before are reported but not
// failed, since parallel test binaries attach and detach their own.
func leakCheck(ctx context.Context, before []Device) error {
	after, err := List(ctx)
	if err != nil {
		return fmt.Errorf("leak check: %w", err)
	}
	ours.Lock()
	defer ours.Unlock()
	var leaked []string
	for _, d := range after {
		if slices.ContainsFunc(before, func(b Device) bool { return b.Path == d.Path && b.BackingFile == d.BackingFile }) {
			continue
		}
		if ours.files[d.BackingFile] {
			leaked = append(leaked, fmt.Sprintf("%s -> %s", d.Path, d.BackingFile))
		} else {
			fmt.Fprintf(os.Stderr, "leak check: %s -> %s appeared meanwhile, not ours\n", d.Path, d.BackingFile)
		}
	}
	if len(leaked) > 0 {
		return fmt.Errorf("leak check: devices left attached: %v", leaked)
	}
	return nil
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to attach loop devices")
	}
	if _, err := os.Stat(loopControl); err != nil {
		t.Skipf("needs %s: %v", loopControl, err)
	}
}

// sparseFile makes a sparse file of size bytes under t.TempDir, with symlinks
// in its path resolved so it compares equal to what sysfs reports.
func sparseFile(t testing.TB, size int64) string {
	t.Helper()
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "backing.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	ours.Lock()
	defer ours.Unlock()
	if ours.files == nil {
		ours.files = map[string]bool{}
	}
	ours.files[path] = true
	return path
}

// attach attaches path and detaches it at cleanup unless the test did.
func attach(t testing.TB, path string, opts Options) Device {
	t.Helper()
	d, err := Attach(context.Background(), path, opts)
	if err != nil {
		t.Fatalf("Attach(%s, %+v): %v", path, opts, err)
	}
	t.Cleanup(func() {
		if err := d.Release(); err != nil {
			t.Error(err)
		}
		if err := Detach(context.Background(), d.Path); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return d
}

func sysfsBacking(t testing.TB, n int) (string, bool) {
	t.Helper()
	p, _, bound, err := readBackingFile(sysBlockDir(n))
	if err != nil {
		t.Fatal(err)
	}
	return p, bound
}

func TestLoopNumber(t *testing.T) {
	for _, tc := range []struct {
		name string
		n    int
		ok   bool
	}{
		{"loop0", 0, true},
		{"loop17", 17, true},
		{"loop", 0, false},
		{"loop-control", 0, false},
		{"loop+1", 0, false},
		{"loop1p2", 0, false},
		{"vda", 0, false},
		{"zram0", 0, false},
		{"loop12345678901", 0, false},
	} {
		n, ok := loopNumber(tc.name)
		if n != tc.n || ok != tc.ok {
			t.Errorf("loopNumber(%q) = %d, %v; want %d, %v", tc.name, n, ok, tc.n, tc.ok)
		}
	}
}

func TestReadBackingFile(t *testing.T) {
	for _, tc := range []struct {
		name    string
		content *string // nil: no loop/backing_file, as for an unbound device
		path    string
		deleted bool
		bound   bool
	}{
		{name: "unbound"},
		{name: "empty", content: ptr("")},
		{name: "plain", content: ptr("/srv/img/vol-1.img\n"), path: "/srv/img/vol-1.img", bound: true},
		{name: "deleted", content: ptr("/srv/img/vol-1.img (deleted)\n"), path: "/srv/img/vol-1.img", deleted: true, bound: true},
		{name: "spaces", content: ptr("/srv/my img.img\n"), path: "/srv/my img.img", bound: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.content != nil {
				if err := os.Mkdir(filepath.Join(dir, "loop"), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, "loop", "backing_file"), []byte(*tc.content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			path, deleted, bound, err := readBackingFile(dir)
			if err != nil {
				t.Fatal(err)
			}
			if path != tc.path || deleted != tc.deleted || bound != tc.bound {
				t.Errorf("got %q, deleted=%v, bound=%v; want %q, %v, %v", path, deleted, bound, tc.path, tc.deleted, tc.bound)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestDetachNotALoopDevice(t *testing.T) {
	ctx := context.Background()
	if err := Detach(ctx, "/dev/null"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("Detach(/dev/null) = %v; want ErrInvalidArgument", err)
	}
	if _, err := Size(ctx, "/dev/null"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("Size(/dev/null) = %v; want ErrInvalidArgument", err)
	}
	if err := Detach(ctx, filepath.Join(t.TempDir(), "loop99")); err != nil {
		t.Errorf("Detach(missing node) = %v; want nil", err)
	}
}

func TestCanceledContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Attach(ctx, "/nonexistent", Options{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Attach = %v; want context.Canceled", err)
	}
	if err := Detach(ctx, "/dev/loop0"); !errors.Is(err, context.Canceled) {
		t.Errorf("Detach = %v; want context.Canceled", err)
	}
	if _, err := List(ctx); err != nil && !errors.Is(err, context.Canceled) {
		t.Errorf("List = %v; want nil or context.Canceled", err)
	}
}

func TestLifecycle(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	const size = 64 << 20
	file := sparseFile(t, size)

	d, err := Attach(ctx, file, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = Detach(context.Background(), d.Path) }) // in case of a failure below
	if d.Path != fmt.Sprintf("/dev/loop%d", d.Number) || d.BackingFile != file || d.ReadOnly || d.AutoClear || d.Deleted {
		t.Fatalf("Attach = %+v", d)
	}
	if got, bound := sysfsBacking(t, d.Number); !bound || got != file {
		t.Fatalf("sysfs backing_file = %q, %v; want %q", got, bound, file)
	}

	all, err := List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(all, d) {
		t.Errorf("List = %+v; does not contain %+v", all, d)
	}

	// The same file by another name is found by its inode.
	link := filepath.Join(t.TempDir(), "link.img")
	if err := os.Symlink(file, link); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{file, link, filepath.Dir(file) + "/./backing.img"} {
		found, err := FindByBackingFile(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		if len(found) != 1 || found[0] != d {
			t.Errorf("FindByBackingFile(%s) = %+v; want [%+v]", p, found, d)
		}
	}

	if got, err := Size(ctx, d.Path); err != nil || got != size {
		t.Fatalf("Size = %d, %v; want %d", got, err, size)
	}
	if err := os.Truncate(file, 2*size); err != nil {
		t.Fatal(err)
	}
	// The device keeps its size until told.
	if got, err := Size(ctx, d.Path); err != nil || got != size {
		t.Fatalf("Size after growing the file = %d, %v; want %d", got, err, size)
	}
	if err := SetCapacity(ctx, d.Path); err != nil {
		t.Fatal(err)
	}
	if got, err := Size(ctx, d.Path); err != nil || got != 2*size {
		t.Fatalf("Size after SetCapacity = %d, %v; want %d", got, err, 2*size)
	}

	if err := Detach(ctx, d.Path); err != nil {
		t.Fatal(err)
	}
	if got, bound := sysfsBacking(t, d.Number); bound {
		t.Fatalf("sysfs backing_file after Detach = %q", got)
	}
	if found, err := FindByBackingFile(ctx, file); err != nil || len(found) != 0 {
		t.Errorf("FindByBackingFile after Detach = %+v, %v; want none", found, err)
	}
	if err := Detach(ctx, d.Path); err != nil {
		t.Errorf("second Detach = %v; want nil", err)
	}
	if err := SetCapacity(ctx, d.Path); !errors.Is(err, unix.ENXIO) {
		t.Errorf("SetCapacity on a detached device = %v; want ENXIO", err)
	}
}

func TestAttachOptions(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name  string
		opts  Options
		check func(t *testing.T, d Device)
	}{
		{"defaults", Options{}, func(t *testing.T, d Device) {
			if d.ReadOnly || d.AutoClear {
				t.Errorf("device = %+v", d)
			}
			writeDevice(t, d.Path, nil)
		}},
		{"read-only", Options{ReadOnly: true}, func(t *testing.T, d Device) {
			if !d.ReadOnly {
				t.Errorf("ReadOnly = false")
			}
			writeDevice(t, d.Path, []error{unix.EROFS, unix.EACCES, unix.EPERM})
		}},
		{"direct I/O", Options{DirectIO: true}, func(t *testing.T, d Device) {
			// Whether the kernel grants it depends on the backing
			// filesystem; what Attach reports must be the truth.
			dio, err := readFlag(filepath.Join(sysBlockDir(d.Number), "loop", "dio"))
			if err != nil {
				t.Fatal(err)
			}
			if d.DirectIO != dio {
				t.Errorf("DirectIO = %v; sysfs says %v", d.DirectIO, dio)
			}
			t.Logf("direct I/O in effect: %v", dio)
			writeDevice(t, d.Path, nil)
		}},
		{"autoclear", Options{AutoClear: true}, func(t *testing.T, d Device) {
			if !d.AutoClear {
				t.Errorf("AutoClear = false")
			}
			// Attach holds the device open: it must survive until Release.
			if _, bound := sysfsBacking(t, d.Number); !bound {
				t.Fatal("autoclear device gone before Release")
			}
			if err := d.Release(); err != nil {
				t.Fatal(err)
			}
			if err := d.Release(); err != nil {
				t.Errorf("second Release = %v", err)
			}
			waitUnbound(t, d.Number)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := sparseFile(t, 16<<20)
			d := attach(t, file, tc.opts)
			listed, err := FindByBackingFile(context.Background(), file)
			if err != nil {
				t.Fatal(err)
			}
			if len(listed) != 1 || listed[0].ReadOnly != d.ReadOnly || listed[0].DirectIO != d.DirectIO || listed[0].AutoClear != d.AutoClear {
				t.Errorf("FindByBackingFile = %+v; Attach said %+v", listed, d)
			}
			tc.check(t, d)
		})
	}
}

// writeDevice writes one block to the device and fails unless the error is
// one of want (nil want: the write must succeed).
func writeDevice(t *testing.T, path string, want []error) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err == nil {
		_, err = f.WriteAt(make([]byte, 4096), 0)
		if err == nil {
			err = f.Sync()
		}
		f.Close()
	}
	switch {
	case want == nil && err != nil:
		t.Errorf("write to %s: %v", path, err)
	case want != nil && !slices.ContainsFunc(want, func(w error) bool { return errors.Is(err, w) }):
		t.Errorf("write to %s = %v; want one of %v", path, err, want)
	}
}

// waitUnbound waits for loopN to lose its backing file; the timeout only
// guards against a hang.
func waitUnbound(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, bound := sysfsBacking(t, n); !bound {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("loop%d still bound", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestFindDeleted(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	file := sparseFile(t, 16<<20)
	d := attach(t, file, Options{})
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}

	found, err := FindByBackingFile(ctx, file)
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 1 || found[0].Path != d.Path || !found[0].Deleted || found[0].BackingFile != file {
		t.Fatalf("FindByBackingFile(deleted) = %+v; want %s, Deleted", found, d.Path)
	}

	// A new file at the same path is not what the device holds.
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	found, err = FindByBackingFile(ctx, file)
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 0 {
		t.Errorf("FindByBackingFile(replaced) = %+v; want none", found)
	}
}

func TestDetachWhileOpen(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	d := attach(t, sparseFile(t, 16<<20), Options{})

	f, err := os.Open(d.Path)
	if err != nil {
		t.Fatal(err)
	}
	if err := Detach(ctx, d.Path); !errors.Is(err, unix.EBUSY) {
		f.Close()
		t.Fatalf("Detach while open = %v; want EBUSY", err)
	}
	if _, bound := sysfsBacking(t, d.Number); !bound {
		t.Fatal("device detached while still open")
	}
	// The kernel marked it to detach at the last close, which is ours.
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	waitUnbound(t, d.Number)
	if err := Detach(ctx, d.Path); err != nil {
		t.Errorf("Detach after last close = %v; want nil", err)
	}
}

func TestAttachConcurrent(t *testing.T) {
	requireRoot(t)
	const n = 8
	files := make([]string, n)
	for i := range files {
		files[i] = sparseFile(t, 8<<20)
	}
	devs := make([]Device, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start // maximise the race for the same free device
			devs[i], errs[i] = Attach(context.Background(), files[i], Options{})
		})
	}
	close(start)
	wg.Wait()
	for i, d := range devs {
		if errs[i] == nil {
			t.Cleanup(func() {
				if err := Detach(context.Background(), d.Path); err != nil {
					t.Error(err)
				}
			})
		}
	}
	seen := map[string]int{}
	for i, d := range devs {
		if errs[i] != nil {
			t.Errorf("Attach(%s): %v", files[i], errs[i])
			continue
		}
		if j, dup := seen[d.Path]; dup {
			t.Errorf("%s and %s both got %s", files[j], files[i], d.Path)
		}
		seen[d.Path] = i
		if got, _ := sysfsBacking(t, d.Number); got != files[i] {
			t.Errorf("%s backs %q; want %q", d.Path, got, files[i])
		}
	}
}

// TestAttachBlockSize closes the hole of issue 10 item 5: a device's
// logical block size was left to the kernel, which with direct I/O takes
// the backing file's alignment (4096 once an XFS file is reflinked), so a
// filesystem made on one attach could not be mounted on the next. The
// pinned size must be what the kernel uses, with or without direct I/O.
func TestAttachBlockSize(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		bs  uint32
		dio bool
	}{
		{512, false}, {1024, false}, {4096, false},
		{512, true}, {1024, true}, {4096, true},
	} {
		t.Run(fmt.Sprintf("%d/dio=%v", tc.bs, tc.dio), func(t *testing.T) {
			d := attach(t, sparseFile(t, 8<<20), Options{BlockSize: tc.bs, DirectIO: tc.dio})
			raw, err := os.ReadFile(filepath.Join(sysBlockDir(d.Number), "queue", "logical_block_size"))
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.TrimSpace(string(raw)); got != fmt.Sprint(tc.bs) || d.BlockSize != tc.bs {
				t.Errorf("logical block size: sysfs %s, Device.BlockSize %d; want %d", got, d.BlockSize, tc.bs)
			}
			if found, err := FindByBackingFile(context.Background(), d.BackingFile); err != nil || len(found) != 1 || found[0].BlockSize != tc.bs {
				t.Errorf("FindByBackingFile = %+v, %v; want one device with block size %d", found, err, tc.bs)
			}
			writeDevice(t, d.Path, nil)
		})
	}
	t.Run("invalid", func(t *testing.T) {
		_, err := Attach(context.Background(), sparseFile(t, 8<<20), Options{BlockSize: 3000})
		if !errdefs.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Attach with block size 3000: %v; want invalid argument", err)
		}
	})
}

// TestFindAttachedElsewhere: a device attached through a mount that this
// mount namespace does not have (a container's bind mount, gone with the
// container) reports its backing file relative to that mount's root, a
// path that leads nowhere here. FindByBackingFile must still find it by
// the file's identity: a CSI node plugin restarted in a new container
// otherwise takes its staged volumes' devices for someone else's, and
// neither unpublishes nor unstages them (TestChartDynamic, cairn's node
// pod killed under running pods).
func TestFindAttachedElsewhere(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	file := sparseFile(t, 16<<20)
	bind := t.TempDir()
	if err := unix.Mount(filepath.Dir(file), bind, "", unix.MS_BIND, ""); err != nil {
		t.Skipf("cannot bind mount (%v): the case needs a mount to attach through", err)
	}
	mounted := true
	t.Cleanup(func() {
		if mounted {
			unix.Unmount(bind, unix.MNT_DETACH)
		}
	})
	d := attach(t, filepath.Join(bind, filepath.Base(file)), Options{})
	// the container's mount namespace goes: its mount is detached
	if err := unix.Unmount(bind, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	mounted = false
	reported, _ := sysfsBacking(t, d.Number)
	if reported == file {
		t.Fatalf("sysfs reports %s, the real path: the case is not reproduced", reported)
	}
	if _, err := os.Stat(reported); err == nil {
		t.Fatalf("sysfs reports %s, which exists here: the case is not reproduced", reported)
	}
	t.Logf("attached through a detached bind mount: sysfs reports %q for %s", reported, file)

	found, err := FindByBackingFile(ctx, file)
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 1 || found[0].Path != d.Path {
		t.Fatalf("FindByBackingFile(%s) = %+v; want %s", file, found, d.Path)
	}

	// another file is not matched by that device
	other := sparseFile(t, 1<<20)
	if found, err := FindByBackingFile(ctx, other); err != nil || len(found) != 0 {
		t.Errorf("FindByBackingFile(%s) = %+v, %v; want none", other, found, err)
	}
}
