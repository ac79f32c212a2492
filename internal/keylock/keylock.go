// Package keylock owns per-key try-locks: the driver takes one per volume
// name or ID so that operations on different volumes run in parallel while a
// second operation on the same volume is refused at once (CSI's ABORTED),
// never queued behind a global mutex.
package keylock

import "sync"

// Locks is a set of named reader/writer try-locks. The zero value is ready.
type Locks struct {
	mu   sync.Mutex
	held map[string]int // -1: one writer; n > 0: n readers
}

// TryLock takes key exclusively. It returns false if key is held in any way.
func (l *Locks) TryLock(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held == nil {
		l.held = map[string]int{}
	}
	if l.held[key] != 0 {
		return false
	}
	l.held[key] = -1
	return true
}

// TryRLock takes key shared. It returns false if key is held exclusively.
func (l *Locks) TryRLock(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held == nil {
		l.held = map[string]int{}
	}
	if l.held[key] < 0 {
		return false
	}
	l.held[key]++
	return true
}

// Unlock releases one hold on key, exclusive or shared.
func (l *Locks) Unlock(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch n := l.held[key]; {
	case n == -1 || n == 1:
		delete(l.held, key) // keep the map as small as the set of busy keys
	case n > 1:
		l.held[key] = n - 1
	default:
		panic("keylock: unlock of unlocked key " + key)
	}
}

// TryLockAll takes every key exclusively, or none of them.
func (l *Locks) TryLockAll(keys ...string) (unlock func(), ok bool) {
	for i, k := range keys {
		if !l.TryLock(k) {
			for _, taken := range keys[:i] {
				l.Unlock(taken)
			}
			return nil, false
		}
	}
	return func() {
		for _, k := range keys {
			l.Unlock(k)
		}
	}, true
}

// Len is the number of keys held; tests use it to prove nothing leaks.
func (l *Locks) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.held)
}
