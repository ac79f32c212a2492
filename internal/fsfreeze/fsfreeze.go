//go:build linux

package fsfreeze

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/errdefs"
)

// FIFREEZE and FITHAW from <linux/fs.h>, _IOWR('X', 119 and 120, int); x/sys/unix
// does not export them. The encoding is the same on every Linux architecture.
const (
	fifreeze = 0xC0045877
	fithaw   = 0xC0045878
)

var (
	// ErrAlreadyFrozen is returned by Freeze when the filesystem is frozen
	// already, by someone else: the caller holds no freeze and must not
	// thaw. It carries no errdefs class: the caller knows whether to retry.
	ErrAlreadyFrozen = errors.New("filesystem already frozen")
	// ErrNotFrozen is returned by thaw when the filesystem was thawed
	// behind our back, so the snapshot taken may not be consistent.
	ErrNotFrozen = errors.New("filesystem was not frozen at thaw")
)

// Freeze flushes the filesystem mounted at mountPoint and blocks writes to
// it until thaw is called. Writers block (they do not fail) meanwhile, so
// keep the frozen time short and always call thaw; it is safe to call more
// than once and returns the first call's result.
//
// mountPoint must be the root of a mount, since a freeze acts on the whole
// filesystem, and must not be on the filesystem of this process's "/",
// which would hang the node (and the caller). Freezing needs CAP_SYS_ADMIN.
func Freeze(ctx context.Context, mountPoint string) (thaw func() error, err error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("fsfreeze: freeze %s: %w", mountPoint, err)
	}
	fd, err := unix.Open(mountPoint, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("fsfreeze: freeze %s: %w", mountPoint, err)
	}
	// The descriptor stays open while frozen: thaw must reach the same
	// filesystem even if the mount point is covered or moved meanwhile.
	keep := false
	defer func() {
		if !keep {
			unix.Close(fd)
		}
	}()
	if err := checkFreezable(fd); err != nil {
		return nil, fmt.Errorf("fsfreeze: freeze %s: %w", mountPoint, err)
	}

	if err := unix.IoctlSetInt(fd, fifreeze, 0); err != nil {
		switch {
		case errors.Is(err, unix.EBUSY):
			return nil, fmt.Errorf("fsfreeze: freeze %s: %w", mountPoint, ErrAlreadyFrozen)
		case errors.Is(err, unix.EOPNOTSUPP):
			return nil, fmt.Errorf("fsfreeze: freeze %s: %w: %w", mountPoint, errdefs.ErrNotSupported, err)
		}
		return nil, fmt.Errorf("fsfreeze: freeze %s: FIFREEZE: %w", mountPoint, err)
	}
	keep = true

	var once sync.Once
	var thawErr error
	return func() error {
		once.Do(func() {
			err := unix.IoctlSetInt(fd, fithaw, 0)
			cerr := unix.Close(fd)
			switch {
			case errors.Is(err, unix.EINVAL):
				thawErr = fmt.Errorf("fsfreeze: thaw %s: %w", mountPoint, ErrNotFrozen)
			case err != nil:
				thawErr = fmt.Errorf("fsfreeze: thaw %s: FITHAW: %w", mountPoint, err)
			case cerr != nil:
				thawErr = fmt.Errorf("fsfreeze: thaw %s: close: %w", mountPoint, cerr)
			}
		})
		return thawErr
	}, nil
}

// checkFreezable refuses a directory that is not a mount's root, or that is
// on the filesystem of "/".
func checkFreezable(fd int) error {
	var stx unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_INO, &stx); err != nil {
		return fmt.Errorf("statx: %w", err)
	}
	root := false
	if stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 {
		root = stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0
	} else {
		// Kernels before 5.8 do not say; a mount's root is on another
		// device than its parent, or is its own parent.
		var st, parent unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return fmt.Errorf("stat: %w", err)
		}
		if err := unix.Fstatat(fd, "..", &parent, 0); err != nil {
			return fmt.Errorf("stat ..: %w", err)
		}
		root = st.Dev != parent.Dev || st.Ino == parent.Ino
	}
	if !root {
		return fmt.Errorf("not a mount point: %w", errdefs.ErrInvalidArgument)
	}

	var st, slash unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat: %w", err)
	}
	if err := unix.Stat("/", &slash); err != nil {
		return fmt.Errorf("stat /: %w", err)
	}
	if st.Dev == slash.Dev {
		return fmt.Errorf("refusing to freeze the filesystem of /: %w", errdefs.ErrInvalidArgument)
	}
	return nil
}

// Thaw thaws the filesystem mounted at mountPoint, whoever froze it. It is
// for recovery: a freeze outlives the process that made it, so a process
// that died between Freeze and thaw leaves the filesystem frozen until
// someone thaws it. A filesystem that is not frozen gives ErrNotFrozen.
func Thaw(mountPoint string) error {
	fd, err := unix.Open(mountPoint, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("fsfreeze: thaw %s: %w", mountPoint, err)
	}
	defer unix.Close(fd)
	if err := unix.IoctlSetInt(fd, fithaw, 0); err != nil {
		if errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("fsfreeze: thaw %s: %w", mountPoint, ErrNotFrozen)
		}
		return fmt.Errorf("fsfreeze: thaw %s: FITHAW: %w", mountPoint, err)
	}
	return nil
}
