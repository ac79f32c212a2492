package cairnctl

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ExitCode is what cairnctl returns to the shell.
type ExitCode int

// Exit codes. They are part of cairnctl's interface: scripts branch on
// them, so a code, once given a meaning, keeps it.
const (
	ExitOK                 ExitCode = 0
	ExitError              ExitCode = 1 // a gRPC error not listed below, or a local failure
	ExitUsage              ExitCode = 2
	ExitConnect            ExitCode = 3
	ExitNotFound           ExitCode = 4
	ExitAlreadyExists      ExitCode = 5
	ExitInvalidArgument    ExitCode = 6 // INVALID_ARGUMENT and OUT_OF_RANGE
	ExitFailedPrecondition ExitCode = 7
	ExitResourceExhausted  ExitCode = 8
	ExitAborted            ExitCode = 9 // another operation on the volume is in flight: retry
	ExitUnimplemented      ExitCode = 10
	ExitDeadlineExceeded   ExitCode = 11 // --timeout passed
	ExitNotReady           ExitCode = 12 // probe: the driver answered ready=false
	ExitInterrupted        ExitCode = 130
)

// ExitCodes describes every exit code, in order, for help text and docs.
var ExitCodes = []struct {
	Code    ExitCode
	Meaning string
}{
	{ExitOK, "success"},
	{ExitError, "the driver returned a gRPC error not listed below (Internal, Unknown, Unavailable, ...), or a local failure (bench I/O, --json-out)"},
	{ExitUsage, "usage error: unknown command or flag, bad flag value, wrong number of arguments"},
	{ExitConnect, "cannot connect to the endpoint (no socket, connection refused, TLS handshake failed)"},
	{ExitNotFound, "NotFound"},
	{ExitAlreadyExists, "AlreadyExists"},
	{ExitInvalidArgument, "InvalidArgument or OutOfRange"},
	{ExitFailedPrecondition, "FailedPrecondition"},
	{ExitResourceExhausted, "ResourceExhausted"},
	{ExitAborted, "Aborted (an operation on the same volume is in progress; retry)"},
	{ExitUnimplemented, "Unimplemented (the driver does not serve this call or service)"},
	{ExitDeadlineExceeded, "DeadlineExceeded (a call took longer than --timeout)"},
	{ExitNotReady, "probe: the driver answered, but is not ready"},
	{ExitInterrupted, "interrupted (SIGINT or SIGTERM); bench cleans up first"},
}

var codeExits = map[codes.Code]ExitCode{
	codes.NotFound:           ExitNotFound,
	codes.AlreadyExists:      ExitAlreadyExists,
	codes.InvalidArgument:    ExitInvalidArgument,
	codes.OutOfRange:         ExitInvalidArgument,
	codes.FailedPrecondition: ExitFailedPrecondition,
	codes.ResourceExhausted:  ExitResourceExhausted,
	codes.Aborted:            ExitAborted,
	codes.Unimplemented:      ExitUnimplemented,
	codes.DeadlineExceeded:   ExitDeadlineExceeded,
}

// usageError is a mistake on the command line.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// connectError means the endpoint could not be reached at all.
type connectError struct {
	endpoint string
	err      error
}

func (e connectError) Error() string {
	return fmt.Sprintf("cannot connect to %s: %v", e.endpoint, e.err)
}
func (e connectError) Unwrap() error { return e.err }

// rpcError is a gRPC status from the driver, printed as "Code: message".
type rpcError struct {
	code codes.Code
	msg  string
}

func (e rpcError) Error() string { return e.code.String() + ": " + e.msg }

// GRPCStatus lets status.Code and status.FromError see through wrapping.
func (e rpcError) GRPCStatus() *status.Status { return status.New(e.code, e.msg) }

// fromRPC turns a gRPC call's error into an rpcError.
func fromRPC(err error) error {
	if err == nil {
		return nil
	}
	st, _ := status.FromError(err)
	return rpcError{code: st.Code(), msg: st.Message()}
}

// errNotReady is probe's verdict when the driver answers ready=false.
var errNotReady = errors.New("driver is not ready")

// exitCodeOf classifies an error returned by a command.
func exitCodeOf(err error) ExitCode {
	var (
		ue usageError
		ce connectError
	)
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &ue):
		return ExitUsage
	case errors.As(err, &ce):
		return ExitConnect
	case errors.Is(err, errNotReady):
		return ExitNotReady
	case errors.Is(err, context.Canceled):
		return ExitInterrupted
	}
	// status.FromError sees a status anywhere in the chain: an rpcError,
	// or a raw gRPC error that bench wrapped.
	if st, ok := status.FromError(err); ok {
		if c, ok := codeExits[st.Code()]; ok {
			return c
		}
	}
	return ExitError
}
