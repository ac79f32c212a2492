package store

import (
	"errors"
	"fmt"
	"sync"

	bolt "go.etcd.io/bbolt"

	"github.com/cairn-csi/cairn/internal/crashpoint"
)

// group commits concurrent writers together, with no timer. A writer that
// finds the store idle commits at once, alone: the sequential caller pays
// one transaction and nothing more (bbolt's Batch waits MaxBatchDelay for
// company first, every time). Writers that arrive while a commit is in
// flight queue; when it ends, the first of them leads the next commit,
// which applies every queued change in one transaction, so that N waiting
// callers share one pair of fdatasyncs instead of paying N. The group grows
// exactly as much as the disk is slow, which is the batch size that costs
// no latency.
//
// Each change is applied in the order queued. If one fails, the whole
// transaction rolls back; the others are retried as a group without it,
// and it is then run alone so that its caller gets the error of its own
// change against the committed state (as bbolt's Batch does). A writer's
// fn may therefore run more than once.
type group struct {
	// before runs ahead of every group's transaction (SetBeforeCommit).
	before func() error

	mu      sync.Mutex
	busy    bool // a commit is in flight, or a leader is about to start one
	pending []*write
}

type write struct {
	fn   func(*bolt.Tx) error
	err  error
	done chan struct{} // closed when err is final
	lead chan struct{} // closed when this writer must lead the next commit
}

func (g *group) update(db *bolt.DB, fn func(*bolt.Tx) error) error {
	w := &write{fn: fn, done: make(chan struct{}), lead: make(chan struct{})}
	g.mu.Lock()
	g.pending = append(g.pending, w)
	if g.busy {
		g.mu.Unlock()
		select {
		case <-w.done:
			return w.err
		case <-w.lead:
		}
		g.mu.Lock()
	}
	g.busy = true
	batch := g.pending
	g.pending = nil
	g.mu.Unlock()

	if g.before != nil {
		if err := g.before(); err != nil {
			for _, o := range batch {
				o.err = fmt.Errorf("store: before commit: %w", err)
			}
		} else {
			commitAll(db, batch)
		}
	} else {
		commitAll(db, batch)
	}

	// Hand over before waking anyone: the next group starts as soon as
	// this one is durable, led by the first writer that waited for it.
	g.mu.Lock()
	if len(g.pending) > 0 {
		close(g.pending[0].lead)
	} else {
		g.busy = false
	}
	g.mu.Unlock()
	for _, o := range batch {
		if o != w {
			close(o.done)
		}
	}
	return w.err
}

// errFailed marks which change of a group failed.
type errFailed struct {
	i   int
	err error
}

func (e *errFailed) Error() string { return e.err.Error() }

// commitAll applies batch in one transaction and sets each write's err.
func commitAll(db *bolt.DB, batch []*write) {
	if len(batch) == 0 {
		return
	}
	err := db.Update(func(tx *bolt.Tx) error {
		for i, w := range batch {
			if err := safely(w.fn, tx); err != nil {
				return &errFailed{i: i, err: err}
			}
		}
		// Every change of the group is in the transaction and none is
		// durable: a death here loses all of them, and no caller has
		// been answered.
		crashpoint.Hit("group:applied")
		return nil
	})
	var failed *errFailed
	if !errors.As(err, &failed) {
		if err == nil {
			// Durable, and no caller knows yet: after a death here every
			// change is in the store although no call returned.
			crashpoint.Hit("group:committed")
		}
		for _, w := range batch {
			w.err = err
		}
		return
	}
	bad := batch[failed.i]
	if len(batch) == 1 {
		bad.err = failed.err
		return
	}
	commitAll(db, append(batch[:failed.i:failed.i], batch[failed.i+1:]...))
	bad.err = db.Update(func(tx *bolt.Tx) error { return safely(bad.fn, tx) })
}

// safely runs fn, turning a panic into its caller's error: a panic in the
// leader's goroutine would leave every other writer of the group waiting.
func safely(fn func(*bolt.Tx) error, tx *bolt.Tx) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("store: update panicked: %v", r)
		}
	}()
	return fn(tx)
}
