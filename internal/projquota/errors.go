package projquota

import "github.com/cairn-csi/cairn/internal/errdefs"

// pathErr wraps err from op on path with the errdefs class its errno
// implies (errdefs.PathError).
func pathErr(op, path string, err error) error { return errdefs.PathError("projquota", op, path, err) }
