package driver

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-csi/cairn/internal/errdefs"
)

func TestToStatus(t *testing.T) {
	deadline, cancel := context.WithTimeout(context.Background(), 0)
	defer cancel()
	<-deadline.Done()

	tests := []struct {
		name string
		err  error
		code codes.Code
	}{
		{"invalid argument", errdefs.ErrInvalidArgument, codes.InvalidArgument},
		{"not found", errdefs.ErrNotFound, codes.NotFound},
		{"already exists", errdefs.ErrAlreadyExists, codes.AlreadyExists},
		{"out of range", errdefs.ErrOutOfRange, codes.OutOfRange},
		{"resource exhausted", errdefs.ErrResourceExhausted, codes.ResourceExhausted},
		{"failed precondition", errdefs.ErrFailedPrecondition, codes.FailedPrecondition},
		{"aborted", errdefs.ErrAborted, codes.Aborted},
		{"unavailable", errdefs.ErrUnavailable, codes.Unavailable},
		{"not supported", errdefs.ErrNotSupported, codes.Unimplemented},

		{"wrapped once", fmt.Errorf("volume x: %w", errdefs.ErrNotFound), codes.NotFound},
		{"wrapped thrice", fmt.Errorf("a: %w", fmt.Errorf("b: %w", fmt.Errorf("c: %w", errdefs.ErrAborted))), codes.Aborted},
		{"joined with an unclassed error", errors.Join(errors.New("disk on fire"), errdefs.ErrFailedPrecondition), codes.FailedPrecondition},
		{"invalid helper", invalid("x %d", 1), codes.InvalidArgument},

		{"unclassed", errors.New("EIO"), codes.Internal},
		{"unclassed wrapped", fmt.Errorf("mkdir: %w", errors.New("EIO")), codes.Internal},

		{"context canceled", context.Canceled, codes.Canceled},
		{"context deadline", context.DeadlineExceeded, codes.DeadlineExceeded},
		{"real deadline", deadline.Err(), codes.DeadlineExceeded},
		{"wrapped canceled", fmt.Errorf("store: %w", context.Canceled), codes.Canceled},
		// A call cut short is reported as such, whatever class it also carries.
		{"canceled and classed", fmt.Errorf("%w: %w", errdefs.ErrUnavailable, context.Canceled), codes.Canceled},

		{"status passes through", status.Error(codes.ResourceExhausted, "no room"), codes.ResourceExhausted},
		{"status OK-coded passes", status.Error(codes.Unknown, "?"), codes.Unknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := toStatus(tt.err)
			st, ok := status.FromError(got)
			if !ok {
				t.Fatalf("toStatus(%v) = %v, not a status error", tt.err, got)
			}
			if st.Code() != tt.code {
				t.Errorf("toStatus(%v) code = %v, want %v", tt.err, st.Code(), tt.code)
			}
			if codeOf(tt.err) != tt.code {
				t.Errorf("codeOf(%v) = %v, want %v", tt.err, codeOf(tt.err), tt.code)
			}
			// The spec: "status.details ... MUST be empty".
			if d := st.Proto().GetDetails(); len(d) != 0 {
				t.Errorf("toStatus(%v) has %d details, want none", tt.err, len(d))
			}
			if st.Message() != tt.err.Error() && !isStatus(tt.err) {
				t.Errorf("message = %q, want the error's text %q", st.Message(), tt.err.Error())
			}
		})
	}
}

func isStatus(err error) bool { _, ok := status.FromError(err); return ok }

func TestToStatusNil(t *testing.T) {
	if err := toStatus(nil); err != nil {
		t.Errorf("toStatus(nil) = %v, want nil", err)
	}
	if c := codeOf(nil); c != codes.OK {
		t.Errorf("codeOf(nil) = %v, want OK", c)
	}
}

// TestEveryClassMapped keeps classCodes and errdefs in step: each class has
// exactly one code, and no two classes share one.
func TestEveryClassMapped(t *testing.T) {
	classes := []error{
		errdefs.ErrInvalidArgument, errdefs.ErrNotFound, errdefs.ErrAlreadyExists, errdefs.ErrOutOfRange,
		errdefs.ErrResourceExhausted, errdefs.ErrFailedPrecondition, errdefs.ErrAborted, errdefs.ErrUnavailable,
		errdefs.ErrNotSupported, errdefs.ErrPermissionDenied,
	}
	seen := map[codes.Code]error{}
	for _, c := range classes {
		code := codeOf(c)
		if code == codes.Internal || code == codes.Unknown {
			t.Errorf("class %v has no code", c)
		}
		if prev, dup := seen[code]; dup {
			t.Errorf("classes %v and %v both map to %v", prev, c, code)
		}
		seen[code] = c
	}
	if len(classCodes) != len(classes) {
		t.Errorf("classCodes has %d entries, errdefs has %d classes", len(classCodes), len(classes))
	}
}

// codeOf is the gRPC code toStatus gives err.
func codeOf(err error) codes.Code { return status.Code(toStatus(err)) }
