package staging

import (
	"errors"
	"sync"
	"sync/atomic"

	"github.com/cairn-csi/cairn/internal/crashpoint"
)

// Directory fsyncs are group-committed per directory, as the store's
// transactions are: a caller whose rename must be durable needs an fsync
// of the directory that starts after its rename. If none is running it
// starts one at once (an idle pool pays exactly one fsync, with no
// timer); if one is running, it may have started before the rename, so the
// caller waits for it to end and then shares the next, which every caller
// that arrived meanwhile also shares. N concurrent creates in one
// directory then cost about two fsyncs of it, not N.
type dirSyncer struct {
	mu       sync.Mutex
	cond     *sync.Cond
	running  bool
	started  uint64 // fsyncs started
	finished uint64 // fsyncs finished; they run one at a time, in order
	errGen   uint64 // the last fsync that failed, and its error
	err      error
}

var (
	syncersMu sync.Mutex // guards the map only, never an fsync
	syncers   = map[string]*dirSyncer{}
)

func syncerFor(path string) *dirSyncer {
	syncersMu.Lock()
	defer syncersMu.Unlock()
	s := syncers[path]
	if s == nil {
		s = &dirSyncer{}
		s.cond = sync.NewCond(&s.mu)
		syncers[path] = s
	}
	return s
}

// syncDirShared makes every change to directory path made before the call
// durable, sharing the fsync with concurrent callers.
func syncDirShared(path string) error {
	s := syncerFor(path)
	s.mu.Lock()
	defer s.mu.Unlock()
	want := s.started + 1 // the first fsync to start from now on covers us
	for s.finished < want {
		if s.running {
			s.cond.Wait()
			continue
		}
		s.running = true
		s.started++
		gen := s.started
		s.mu.Unlock()
		err := syncDir(path)
		if err == nil {
			// The renames of every caller sharing this fsync are durable,
			// and none of them has committed to the store yet.
			crashpoint.Hit("group:synced")
		}
		s.mu.Lock()
		s.running = false
		s.finished = gen
		if err != nil {
			s.errGen, s.err = gen, err
		}
		s.cond.Broadcast()
	}
	// Any fsync from want on covered us; if one of them failed, the
	// change may not be durable (a later success on a fresh descriptor
	// does not prove otherwise).
	if s.errGen >= want {
		return s.err
	}
	return nil
}

// Deferred directory fsyncs: one commit group for both layers. By default
// Create and Delete fsync the directory themselves after the rename, which
// makes the directory fsync and the store commit two separate groups with
// separate flushes. When the process's commits all go through a store that
// runs SyncPending before it commits a group (internal/app wires
// store.SetBeforeCommit(staging.SyncPending)), DeferDirSyncs(true) makes
// them only note the directory: the group's leader then makes every
// member's rename durable with one fsync per directory, and then commits
// every member's record in one transaction. Each member's rename is still
// durable before its record is, which is all the protocol asks.
var (
	deferSyncs atomic.Bool
	dirtyMu    sync.Mutex // guards dirty only, never an fsync
	dirty      = map[string]bool{}
)

// DeferDirSyncs turns deferred directory fsyncs on or off for the process.
// Turn it on only when every commit func given to Create and Delete ends
// in a store transaction that runs SyncPending first.
func DeferDirSyncs(on bool) { deferSyncs.Store(on) }

// afterRename makes a rename in directory path durable now, or, with
// deferred fsyncs, notes the directory for the commit's SyncPending.
func afterRename(path string) error {
	if !deferSyncs.Load() {
		return syncDirShared(path)
	}
	dirtyMu.Lock()
	dirty[path] = true
	dirtyMu.Unlock()
	return nil
}

// SyncPending fsyncs every directory with a deferred rename, once each. A
// store runs it before it commits a group: every rename noted before a
// member queued its commit is then durable before the group's records
// are. Directories whose fsync failed stay noted, so a later group cannot
// commit over a rename that is not durable.
func SyncPending() error {
	dirtyMu.Lock()
	dirs := dirty
	dirty = map[string]bool{}
	dirtyMu.Unlock()
	var errs []error
	for d := range dirs {
		if err := syncDirShared(d); err != nil {
			dirtyMu.Lock()
			dirty[d] = true
			dirtyMu.Unlock()
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
