// Package errdefs owns Cairn's error classes. Code below the gRPC edge wraps one
// of these sentinels with %w; only internal/driver turns a class into a gRPC code.
package errdefs

import "errors"

// The classes. Each maps to exactly one gRPC code in internal/driver.
var (
	ErrInvalidArgument    = errors.New("invalid argument")    // INVALID_ARGUMENT
	ErrNotFound           = errors.New("not found")           // NOT_FOUND
	ErrAlreadyExists      = errors.New("already exists")      // ALREADY_EXISTS
	ErrOutOfRange         = errors.New("out of range")        // OUT_OF_RANGE
	ErrResourceExhausted  = errors.New("resource exhausted")  // RESOURCE_EXHAUSTED
	ErrFailedPrecondition = errors.New("failed precondition") // FAILED_PRECONDITION
	ErrAborted            = errors.New("aborted")             // ABORTED
	ErrUnavailable        = errors.New("unavailable")         // UNAVAILABLE
	ErrNotSupported       = errors.New("not supported")       // UNIMPLEMENTED
	ErrPermissionDenied   = errors.New("permission denied")   // PERMISSION_DENIED: a secret that does not unlock
)

// Is reports whether err is of class class. It is errors.Is, named for call sites
// that read better as errdefs.Is(err, errdefs.ErrNotFound).
func Is(err, class error) bool { return errors.Is(err, class) }
