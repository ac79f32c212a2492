package errdefs

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// errnoClasses is the one errno→class table of the packages that talk to
// the kernel directly (btrfs ioctls, quotactl). An errno missing here stays
// unclassed, which the driver reports as INTERNAL.
var errnoClasses = map[unix.Errno]error{
	unix.ENOENT: ErrNotFound,
	unix.EEXIST: ErrAlreadyExists,
	unix.EDQUOT: ErrResourceExhausted,
	unix.ENOSPC: ErrResourceExhausted,
	// ENOSYS and ENODEV: the filesystem has no support at all (quotactl).
	unix.ENOTTY:     ErrNotSupported,
	unix.EOPNOTSUPP: ErrNotSupported,
	unix.ENOSYS:     ErrNotSupported,
	unix.ENODEV:     ErrNotSupported,
	unix.ENOTEMPTY:  ErrFailedPrecondition,
	unix.EBUSY:      ErrFailedPrecondition,
	unix.EROFS:      ErrFailedPrecondition,
	unix.EXDEV:      ErrFailedPrecondition,
	// ENOTCONN: what the btrfs qgroup ioctls return while quotas are off;
	// ESRCH: quotactl's answer when project quotas are not turned on.
	unix.ENOTCONN: ErrFailedPrecondition,
	unix.ESRCH:    ErrFailedPrecondition,
}

// ClassOfErrno returns the class that the errno in err's chain implies, or
// nil when err holds no errno or one without a class.
func ClassOfErrno(err error) error {
	var errno unix.Errno
	if !errors.As(err, &errno) {
		return nil
	}
	return errnoClasses[errno]
}

// PathError wraps err from op on path as "pkg: op "path": class: err", so
// that callers can test either the errno (errors.Is(err, unix.EEXIST)) or
// its class.
func PathError(pkg, op, path string, err error) error {
	if class := ClassOfErrno(err); class != nil {
		return fmt.Errorf("%s: %s %q: %w: %w", pkg, op, path, class, err)
	}
	return fmt.Errorf("%s: %s %q: %w", pkg, op, path, err)
}
