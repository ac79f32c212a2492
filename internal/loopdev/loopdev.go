//go:build linux

package loopdev

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/errdefs"
)

const (
	loopControl = "/dev/loop-control"
	loopMajor   = 7 // LOOP_MAJOR in <linux/major.h>

	// maxAttachAttempts bounds how often Attach asks for another free device
	// after losing a race for one. Each loss means another attacher won, so
	// this is only reached under pathological contention.
	maxAttachAttempts = 32
	// maxBusyAttempts bounds the EBUSY retries and the wait for a deferred
	// clear in Detach: about a second each, long enough for udev's probes.
	maxBusyAttempts = 12
)

// Options says how Attach sets up a device.
type Options struct {
	// ReadOnly opens the backing file read-only and makes the device refuse
	// writes.
	ReadOnly bool
	// DirectIO asks the kernel to use O_DIRECT on the backing file, so pages
	// are not cached twice (once for the device, once for the file). Kernels
	// and filesystems that cannot do it are not an error: the Device returned
	// says whether it is in effect.
	DirectIO bool
	// AutoClear makes the kernel detach the device at its last close. Attach
	// then keeps the device open and the caller must call Device.Release once
	// something else (a mount) holds it, or the device stays attached until
	// the process exits. Detach of a device still held that way fails
	// with EBUSY.
	AutoClear bool
	// BlockSize pins the device's logical block size (512, 1024, 2048 or
	// 4096; 0 leaves it to the kernel). Pin it: left to the kernel, a
	// direct-I/O device takes the backing file's direct-I/O alignment,
	// which changes when an XFS or btrfs file gets shared extents (a
	// reflink snapshot), and a filesystem made with smaller blocks or
	// sectors than the device's logical block size cannot be mounted.
	BlockSize uint32
}

// Device is an attached loop device.
type Device struct {
	Path   string // device node, e.g. "/dev/loop3"
	Number int    // N in /dev/loopN
	// BackingFile is the backing file's path as the kernel reports it (with
	// symlinks resolved), without the " (deleted)" marker.
	BackingFile string
	DirectIO    bool // direct I/O is in effect
	ReadOnly    bool
	AutoClear   bool
	BlockSize   uint32 // logical block size in bytes, as the kernel reports it
	// Deleted reports that the backing file has been unlinked since it was
	// attached: the device still reads and writes the old inode.
	Deleted bool

	hold *holder // set by Attach for AutoClear devices
}

// holder is the descriptor Attach keeps open on an AutoClear device. It has
// no finalizer on purpose: a garbage collection must not detach a device the
// caller still means to mount by path.
type holder struct {
	once sync.Once
	fd   int
	err  error
}

// Release closes the descriptor Attach keeps open on an AutoClear device;
// when nothing else has the device open, the kernel detaches it. It is a
// no-op for other devices and on every call after the first.
func (d Device) Release() error {
	if d.hold == nil {
		return nil
	}
	d.hold.once.Do(func() {
		if err := unix.Close(d.hold.fd); err != nil {
			d.hold.err = fmt.Errorf("loopdev: release %s: %w", d.Path, err)
		}
	})
	return d.hold.err
}

// Attach attaches backingFile (a regular file or block device) to a free loop
// device and returns it. It does not look for an existing attachment: call
// FindByBackingFile first when a retried request must converge on one
// device.
func Attach(ctx context.Context, backingFile string, opts Options) (Device, error) {
	if err := ctx.Err(); err != nil {
		return Device{}, fmt.Errorf("loopdev: attach %s: %w", backingFile, err)
	}
	name, err := filepath.Abs(backingFile)
	if err != nil {
		return Device{}, fmt.Errorf("loopdev: attach %s: %w", backingFile, err)
	}
	mode := unix.O_RDWR
	if opts.ReadOnly {
		mode = unix.O_RDONLY
	}
	bfd, err := unix.Open(name, mode|unix.O_CLOEXEC, 0)
	if err != nil {
		return Device{}, fmt.Errorf("loopdev: attach %s: open backing file: %w", name, err)
	}
	// The kernel takes its own reference to the file; ours is only needed
	// until the device is configured.
	defer unix.Close(bfd)

	ctl, err := unix.Open(loopControl, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return Device{}, fmt.Errorf("loopdev: attach %s: open %s: %w", name, loopControl, err)
	}
	defer unix.Close(ctl)

	b := newBackoff(time.Millisecond, 50*time.Millisecond)
	for attempt := 1; ; attempt++ {
		n, err := unix.IoctlRetInt(ctl, unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return Device{}, fmt.Errorf("loopdev: attach %s: LOOP_CTL_GET_FREE: %w", name, err)
		}
		dev, err := configure(n, bfd, name, opts)
		if err == nil {
			return dev, nil
		}
		if !errors.Is(err, unix.EBUSY) {
			return Device{}, fmt.Errorf("loopdev: attach %s: %w", name, err)
		}
		if attempt == maxAttachAttempts {
			return Device{}, fmt.Errorf("loopdev: attach %s: lost the race for a free device %d times: %w: %w",
				name, attempt, errdefs.ErrUnavailable, err)
		}
		// Another attacher took loopN between GET_FREE and configure: ask the
		// kernel again, after a jittered pause so that racing goroutines of
		// one process do not stay in lockstep.
		if err := b.wait(ctx); err != nil {
			return Device{}, fmt.Errorf("loopdev: attach %s: %w", name, err)
		}
	}
}

// configure binds the backing file bfd to /dev/loopN. An EBUSY error means
// the device was taken by someone else first.
func configure(n, bfd int, name string, opts Options) (Device, error) {
	path := devPath(n)
	lfd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return Device{}, fmt.Errorf("open %s: %w", path, err)
	}
	keep := false
	defer func() {
		if !keep {
			unix.Close(lfd)
		}
	}()

	var flags uint32
	if opts.ReadOnly {
		flags |= unix.LO_FLAGS_READ_ONLY
	}
	if opts.AutoClear {
		flags |= unix.LO_FLAGS_AUTOCLEAR
	}
	if opts.DirectIO {
		flags |= unix.LO_FLAGS_DIRECT_IO
	}

	if bs := opts.BlockSize; bs != 0 && (bs < 512 || bs > 4096 || bs&(bs-1) != 0) {
		return Device{}, fmt.Errorf("%s: block size %d is not 512, 1024, 2048 or 4096: %w", path, bs, errdefs.ErrInvalidArgument)
	}
	err = loopConfigure(lfd, bfd, name, flags, opts.BlockSize)
	if errors.Is(err, unix.EINVAL) && flags&unix.LO_FLAGS_DIRECT_IO != 0 {
		// The kernel refuses direct I/O when the backing file's filesystem
		// or alignment cannot do it; a cached device is still useful.
		flags &^= unix.LO_FLAGS_DIRECT_IO
		err = loopConfigure(lfd, bfd, name, flags, opts.BlockSize)
	}
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTTY) {
		// Kernels before 5.8 have no LOOP_CONFIGURE.
		if opts.DirectIO {
			flags |= unix.LO_FLAGS_DIRECT_IO
		}
		err = legacyConfigure(lfd, bfd, name, flags, opts.BlockSize)
	}
	if err != nil {
		return Device{}, fmt.Errorf("%s: %w", path, err)
	}

	info, err := unix.IoctlLoopGetStatus64(lfd)
	if err != nil {
		// Not expected right after a successful configure; do not leave a
		// device behind that the caller does not know about.
		_ = unix.IoctlSetInt(lfd, unix.LOOP_CLR_FD, 0)
		return Device{}, fmt.Errorf("%s: LOOP_GET_STATUS64: %w", path, err)
	}
	dev := Device{
		Path:        path,
		Number:      n,
		BackingFile: name,
		DirectIO:    info.Flags&unix.LO_FLAGS_DIRECT_IO != 0,
		ReadOnly:    info.Flags&unix.LO_FLAGS_READ_ONLY != 0,
		AutoClear:   info.Flags&unix.LO_FLAGS_AUTOCLEAR != 0,
	}
	if bs, err := unix.IoctlGetInt(lfd, unix.BLKSSZGET); err == nil {
		dev.BlockSize = uint32(bs)
	}
	// Report the path as List and FindByBackingFile will, symlinks resolved.
	if bf, deleted, ok, err := readBackingFile(sysBlockDir(n)); err == nil && ok {
		dev.BackingFile, dev.Deleted = bf, deleted
	}
	if opts.AutoClear {
		// Closing lfd now would be the last close, which clears the device.
		dev.hold = &holder{fd: lfd}
		keep = true
	}
	return dev, nil
}

func loopConfigure(lfd, bfd int, name string, flags, blockSize uint32) error {
	cfg := unix.LoopConfig{Fd: uint32(bfd), Size: blockSize}
	cfg.Info.Flags = flags
	setFileName(&cfg.Info, name)
	if err := unix.IoctlLoopConfigure(lfd, &cfg); err != nil {
		return fmt.Errorf("LOOP_CONFIGURE: %w", err)
	}
	return nil
}

// legacyConfigure does what LOOP_CONFIGURE does in three steps, for old
// kernels. Read-only follows from bfd's open mode there.
func legacyConfigure(lfd, bfd int, name string, flags, blockSize uint32) error {
	if err := unix.IoctlSetInt(lfd, unix.LOOP_SET_FD, bfd); err != nil {
		return fmt.Errorf("LOOP_SET_FD: %w", err)
	}
	info := unix.LoopInfo64{Flags: flags & unix.LO_FLAGS_AUTOCLEAR}
	setFileName(&info, name)
	if err := unix.IoctlLoopSetStatus64(lfd, &info); err != nil {
		_ = unix.IoctlSetInt(lfd, unix.LOOP_CLR_FD, 0)
		return fmt.Errorf("LOOP_SET_STATUS64: %w", err)
	}
	if blockSize != 0 {
		if err := unix.IoctlSetInt(lfd, unix.LOOP_SET_BLOCK_SIZE, int(blockSize)); err != nil {
			_ = unix.IoctlSetInt(lfd, unix.LOOP_CLR_FD, 0)
			return fmt.Errorf("LOOP_SET_BLOCK_SIZE %d: %w", blockSize, err)
		}
	}
	if flags&unix.LO_FLAGS_DIRECT_IO != 0 {
		// EINVAL: direct I/O is impossible for this file; stay cached.
		if err := unix.IoctlSetInt(lfd, unix.LOOP_SET_DIRECT_IO, 1); err != nil && !errors.Is(err, unix.EINVAL) {
			_ = unix.IoctlSetInt(lfd, unix.LOOP_CLR_FD, 0)
			return fmt.Errorf("LOOP_SET_DIRECT_IO: %w", err)
		}
	}
	return nil
}

// setFileName stores name in lo_file_name, truncated to fit with its NUL,
// the way losetup does; the kernel shows it only in LOOP_GET_STATUS64.
func setFileName(info *unix.LoopInfo64, name string) {
	copy(info.File_name[:len(info.File_name)-1], name)
}

// Detach detaches the loop device at devPath. It is idempotent: a device
// that is not attached, or no longer exists, is not an error.
//
// When another process has the device open (udev probing it, a mount),
// the kernel detaches it only at that last close. Detach waits briefly for
// that and then fails with an error wrapping unix.EBUSY; the device is still
// marked to detach itself, and calling Detach again is safe.
func Detach(ctx context.Context, devPath string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("loopdev: detach %s: %w", devPath, err)
	}
	fd, rdev, err := openLoop(devPath)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENXIO) {
		return nil // no such device, or one being torn down
	}
	if err != nil {
		return fmt.Errorf("loopdev: detach: %w", err)
	}
	sysDir := sysDevDir(rdev)
	before, _, bound, _ := readBackingFile(sysDir)

	b := newBackoff(10*time.Millisecond, 200*time.Millisecond)
	for attempt := 1; ; attempt++ {
		err = unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0)
		if !errors.Is(err, unix.EBUSY) || attempt == maxBusyAttempts {
			break
		}
		if werr := b.wait(ctx); werr != nil {
			err = werr
			break
		}
	}
	// Our descriptor must go before waiting: the kernel clears at last close.
	unix.Close(fd)
	switch {
	case errors.Is(err, unix.ENXIO):
		return nil // not attached
	case err != nil:
		return fmt.Errorf("loopdev: detach %s: LOOP_CLR_FD: %w", devPath, err)
	case !bound:
		return nil
	}

	b = newBackoff(10*time.Millisecond, 200*time.Millisecond)
	for attempt := 1; ; attempt++ {
		now, _, still, err := readBackingFile(sysDir)
		if err != nil {
			return fmt.Errorf("loopdev: detach %s: %w", devPath, err)
		}
		// A different backing file means someone attached anew after us.
		if !still || now != before {
			return nil
		}
		if attempt == maxBusyAttempts {
			return fmt.Errorf("loopdev: detach %s: still open elsewhere, it will detach at last close: %w", devPath, unix.EBUSY)
		}
		if err := b.wait(ctx); err != nil {
			return fmt.Errorf("loopdev: detach %s: %w", devPath, err)
		}
	}
}

// SetCapacity makes the device at devPath pick up its backing file's
// current size, after the file has been grown.
func SetCapacity(ctx context.Context, devPath string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("loopdev: set capacity %s: %w", devPath, err)
	}
	fd, _, err := openLoop(devPath)
	if err != nil {
		return fmt.Errorf("loopdev: set capacity: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.IoctlSetInt(fd, unix.LOOP_SET_CAPACITY, 0); err != nil {
		return fmt.Errorf("loopdev: set capacity %s: LOOP_SET_CAPACITY: %w", devPath, err)
	}
	return nil
}

// Size returns the size in bytes of the device at devPath as the kernel
// sees it now (0 for a device that is not attached).
func Size(ctx context.Context, devPath string) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("loopdev: size %s: %w", devPath, err)
	}
	fd, _, err := openLoop(devPath)
	if err != nil {
		return 0, fmt.Errorf("loopdev: size: %w", err)
	}
	defer unix.Close(fd)
	var size uint64
	// x/sys/unix has no typed helper for a 64-bit out-parameter.
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size))); errno != 0 {
		return 0, fmt.Errorf("loopdev: size %s: BLKGETSIZE64: %w", devPath, errno)
	}
	return int64(size), nil
}

// openLoop opens devPath read-only and checks that it is a loop device, so
// that a wrong path never gets a loop ioctl. It returns the device number.
func openLoop(devPath string) (int, uint64, error) {
	fd, err := unix.Open(devPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, 0, fmt.Errorf("open %s: %w", devPath, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("stat %s: %w", devPath, err)
	}
	rdev := uint64(st.Rdev)
	if st.Mode&unix.S_IFMT != unix.S_IFBLK || unix.Major(rdev) != loopMajor {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("%s is not a loop device: %w", devPath, errdefs.ErrInvalidArgument)
	}
	return fd, rdev, nil
}

func devPath(n int) string { return fmt.Sprintf("/dev/loop%d", n) }

// backoff is a bounded, jittered exponential delay that honours ctx.
type backoff struct{ delay, max time.Duration }

func newBackoff(initial, max time.Duration) *backoff { return &backoff{delay: initial, max: max} }

func (b *backoff) wait(ctx context.Context) error {
	d := b.delay/2 + rand.N(b.delay/2+1)
	b.delay = min(2*b.delay, b.max)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
