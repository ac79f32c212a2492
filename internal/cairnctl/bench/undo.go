package bench

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// undoStack remembers how to take back everything the bench created, in
// the reverse order of creation, like defer. An entry is pushed before
// the call that creates its resource, so that a call cut off by Ctrl-C
// or a timeout is still undone: the undo works out whether the resource
// came to exist.
type undoStack struct {
	mu      sync.Mutex
	entries []*undoEntry
}

type undoEntry struct {
	desc string
	fn   func(ctx context.Context) error
	mu   sync.Mutex
	done bool
}

// finish marks the entry as no longer needed: the bench took the resource
// back itself as part of a measured phase.
func (e *undoEntry) finish() {
	e.mu.Lock()
	e.done = true
	e.mu.Unlock()
}

func (e *undoEntry) isDone() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.done
}

func (s *undoStack) push(desc string, fn func(ctx context.Context) error) *undoEntry {
	e := &undoEntry{desc: desc, fn: fn}
	s.mu.Lock()
	s.entries = append(s.entries, e)
	s.mu.Unlock()
	return e
}

// mark returns the current depth, for unwindTo.
func (s *undoStack) mark() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.entries)
}

// unwindTo undoes every pending entry pushed after mark, newest first,
// and returns how many it ran and the errors. Entries whose undo failed
// are dropped all the same: they are reported, and trying again at the
// end would only repeat the error.
func (s *undoStack) unwindTo(ctx context.Context, mark int) (int, []error) {
	s.mu.Lock()
	tail := s.entries[mark:]
	s.entries = s.entries[:mark:mark]
	s.mu.Unlock()
	ran := 0
	var errs []error
	for i := len(tail) - 1; i >= 0; i-- {
		e := tail[i]
		if e.isDone() {
			continue
		}
		ran++
		if err := retry(ctx, e.fn); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", e.desc, err))
		}
		e.finish()
	}
	return ran, errs
}

// retryFor bounds how long an undo waits out a busy driver.
const retryFor = time.Minute

// retry calls fn until it succeeds, fails for good, or retryFor passes.
// ABORTED (an operation on the same volume is in flight: typically the
// bench's own cancelled call, which the driver is still finishing) and
// UNAVAILABLE are worth waiting for; anything else is final.
func retry(ctx context.Context, fn func(context.Context) error) error {
	delay := 50 * time.Millisecond
	deadline := time.Now().Add(retryFor)
	for {
		err := fn(ctx)
		c := status.Code(err)
		if err == nil || (c != codes.Aborted && c != codes.Unavailable) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(delay):
		}
		delay = min(2*delay, 2*time.Second)
	}
}
