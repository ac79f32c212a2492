package projquota

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/errdefs"
)

// pathErr wraps err from op on path with the errdefs class it implies, so
// callers can test either errors.Is(err, unix.EDQUOT) or the class.
func pathErr(op, path string, err error) error {
	if class := classOf(err); class != nil {
		return fmt.Errorf("projquota: %s %q: %w: %w", op, path, class, err)
	}
	return fmt.Errorf("projquota: %s %q: %w", op, path, err)
}

func classOf(err error) error {
	var errno unix.Errno
	if !errors.As(err, &errno) {
		return nil
	}
	switch errno {
	case unix.ENOENT:
		return errdefs.ErrNotFound
	case unix.EDQUOT, unix.ENOSPC:
		return errdefs.ErrResourceExhausted
	case unix.ENOTTY, unix.EOPNOTSUPP, unix.ENOSYS, unix.ENODEV:
		// ENOSYS: the filesystem has no quota support at all.
		return errdefs.ErrNotSupported
	case unix.ESRCH:
		// Quota support exists but project quotas are not turned on.
		return errdefs.ErrFailedPrecondition
	}
	return nil
}
