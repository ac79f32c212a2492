package errdefs_test

import (
	"errors"
	"fmt"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/errdefs"
)

func TestPathError(t *testing.T) {
	for _, tc := range []struct {
		errno unix.Errno
		class error // nil: unclassed
	}{
		{unix.ENOENT, errdefs.ErrNotFound},
		{unix.EEXIST, errdefs.ErrAlreadyExists},
		{unix.EDQUOT, errdefs.ErrResourceExhausted},
		{unix.ENOSPC, errdefs.ErrResourceExhausted},
		{unix.ENOTTY, errdefs.ErrNotSupported},
		{unix.EOPNOTSUPP, errdefs.ErrNotSupported},
		{unix.ENOSYS, errdefs.ErrNotSupported},
		{unix.ENODEV, errdefs.ErrNotSupported},
		{unix.ENOTEMPTY, errdefs.ErrFailedPrecondition},
		{unix.EBUSY, errdefs.ErrFailedPrecondition},
		{unix.EROFS, errdefs.ErrFailedPrecondition},
		{unix.EXDEV, errdefs.ErrFailedPrecondition},
		{unix.ENOTCONN, errdefs.ErrFailedPrecondition},
		{unix.ESRCH, errdefs.ErrFailedPrecondition},
		{unix.EIO, nil},
	} {
		t.Run(tc.errno.Error(), func(t *testing.T) {
			err := errdefs.PathError("pkg", "op", "/p", fmt.Errorf("inner: %w", tc.errno))
			if !errors.Is(err, tc.errno) {
				t.Errorf("%v does not wrap %v", err, tc.errno)
			}
			if got := errdefs.ClassOfErrno(err); got != tc.class {
				t.Errorf("class of %v = %v, want %v", err, got, tc.class)
			}
		})
	}
	if c := errdefs.ClassOfErrno(errors.New("no errno")); c != nil {
		t.Errorf("class of an error without errno = %v, want nil", c)
	}
}
