package driver

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-csi/cairn/internal/errdefs"
)

// classCodes maps each error class to its gRPC code. It is the only place
// where classes become codes; mapErrors (server.go) applies it to every
// unary call at the gRPC edge.
var classCodes = []struct {
	class error
	code  codes.Code
}{
	{errdefs.ErrInvalidArgument, codes.InvalidArgument},
	{errdefs.ErrNotFound, codes.NotFound},
	{errdefs.ErrAlreadyExists, codes.AlreadyExists},
	{errdefs.ErrOutOfRange, codes.OutOfRange},
	{errdefs.ErrResourceExhausted, codes.ResourceExhausted},
	{errdefs.ErrFailedPrecondition, codes.FailedPrecondition},
	{errdefs.ErrAborted, codes.Aborted},
	{errdefs.ErrUnavailable, codes.Unavailable},
	{errdefs.ErrNotSupported, codes.Unimplemented},
	{errdefs.ErrPermissionDenied, codes.PermissionDenied},
}

// toStatus turns any error into a gRPC status error with no details, as the
// CSI spec requires. An error that already is a status passes through
// unchanged. Only mapErrors calls it (and tests of the table).
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	}
	for _, cc := range classCodes {
		if errors.Is(err, cc.class) {
			return status.Error(cc.code, err.Error())
		}
	}
	return status.Error(codes.Internal, err.Error())
}
