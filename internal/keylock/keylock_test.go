package keylock

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
)

// step is one call on a Locks in a table-driven sequence.
type step struct {
	op   string // "lock", "rlock", "unlock", "all"
	keys []string
	want bool // for the try calls: whether the lock is expected to be taken
}

func TestSequences(t *testing.T) {
	tests := []struct {
		name    string
		steps   []step
		wantLen int // keys still held at the end
	}{
		{
			name:    "exclusive then exclusive is refused",
			steps:   []step{{"lock", []string{"a"}, true}, {"lock", []string{"a"}, false}},
			wantLen: 1,
		},
		{
			name:    "exclusive then shared is refused",
			steps:   []step{{"lock", []string{"a"}, true}, {"rlock", []string{"a"}, false}},
			wantLen: 1,
		},
		{
			name:    "shared holds stack",
			steps:   []step{{"rlock", []string{"a"}, true}, {"rlock", []string{"a"}, true}, {"rlock", []string{"a"}, true}},
			wantLen: 1,
		},
		{
			name:    "shared then exclusive is refused",
			steps:   []step{{"rlock", []string{"a"}, true}, {"lock", []string{"a"}, false}},
			wantLen: 1,
		},
		{
			name: "exclusive is free again after all shared holds are released",
			steps: []step{
				{"rlock", []string{"a"}, true}, {"rlock", []string{"a"}, true},
				{"unlock", []string{"a"}, false}, {"lock", []string{"a"}, false},
				{"unlock", []string{"a"}, false}, {"lock", []string{"a"}, true},
			},
			wantLen: 1,
		},
		{
			name:    "different keys are independent",
			steps:   []step{{"lock", []string{"a"}, true}, {"lock", []string{"b"}, true}, {"rlock", []string{"c"}, true}},
			wantLen: 3,
		},
		{
			name:    "unlock releases the key entirely",
			steps:   []step{{"lock", []string{"a"}, true}, {"unlock", []string{"a"}, false}, {"lock", []string{"a"}, true}, {"unlock", []string{"a"}, false}},
			wantLen: 0,
		},
		{
			name:    "the empty key is a key like any other",
			steps:   []step{{"lock", []string{""}, true}, {"lock", []string{""}, false}},
			wantLen: 1,
		},
		{
			name:    "all-or-nothing takes every key",
			steps:   []step{{"all", []string{"a", "b", "c"}, true}, {"lock", []string{"b"}, false}},
			wantLen: 3,
		},
		{
			name: "all-or-nothing takes none when one key is busy",
			steps: []step{
				{"lock", []string{"c"}, true},
				{"all", []string{"a", "b", "c", "d"}, false},
				{"lock", []string{"a"}, true}, {"lock", []string{"b"}, true}, {"lock", []string{"d"}, true},
			},
			wantLen: 4,
		},
		{
			name:    "all-or-nothing refuses a shared-held key",
			steps:   []step{{"rlock", []string{"b"}, true}, {"all", []string{"a", "b"}, false}, {"lock", []string{"a"}, true}},
			wantLen: 2,
		},
		{
			name:    "all-or-nothing with no keys succeeds and holds nothing",
			steps:   []step{{"all", nil, true}},
			wantLen: 0,
		},
		{
			name:    "all-or-nothing with a repeated key fails and leaks nothing",
			steps:   []step{{"all", []string{"a", "a"}, false}, {"lock", []string{"a"}, true}},
			wantLen: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var l Locks
			for i, s := range tt.steps {
				var got bool
				switch s.op {
				case "lock":
					got = l.TryLock(s.keys[0])
				case "rlock":
					got = l.TryRLock(s.keys[0])
				case "unlock":
					l.Unlock(s.keys[0])
					continue
				case "all":
					var unlock func()
					unlock, got = l.TryLockAll(s.keys...)
					if got != (unlock != nil) {
						t.Fatalf("step %d: TryLockAll returned ok=%v with unlock nil=%v", i, got, unlock == nil)
					}
				}
				if got != s.want {
					t.Fatalf("step %d: %s%q = %v, want %v", i, s.op, s.keys, got, s.want)
				}
			}
			if n := l.Len(); n != tt.wantLen {
				t.Errorf("Len() = %d at the end, want %d", n, tt.wantLen)
			}
		})
	}
}

func TestTryLockAllUnlockReleasesEverything(t *testing.T) {
	var l Locks
	unlock, ok := l.TryLockAll("name/x", "vol/y", "snap/z")
	if !ok {
		t.Fatal("TryLockAll on free keys failed")
	}
	if n := l.Len(); n != 3 {
		t.Fatalf("Len() = %d while held, want 3", n)
	}
	unlock()
	if n := l.Len(); n != 0 {
		t.Fatalf("Len() = %d after unlock, want 0 (a key leaked)", n)
	}
	for _, k := range []string{"name/x", "vol/y", "snap/z"} {
		if !l.TryLock(k) {
			t.Errorf("key %q is still held after unlock", k)
		}
	}
}

func TestUnlockOfUnlockedKeyPanics(t *testing.T) {
	tests := []struct {
		name  string
		setup func(*Locks)
	}{
		{"never locked", func(*Locks) {}},
		{"released twice", func(l *Locks) { l.TryLock("k"); l.Unlock("k") }},
		{"one shared hold released twice", func(l *Locks) { l.TryRLock("k"); l.Unlock("k") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var l Locks
			tt.setup(&l)
			defer func() {
				if recover() == nil {
					t.Error("Unlock of an unlocked key did not panic: a double unlock would go unnoticed")
				}
			}()
			l.Unlock("k")
		})
	}
}

// TestConcurrentExclusive proves mutual exclusion under contention: many
// goroutines try the same few keys, and whoever holds a key is alone in
// its critical section. Run with -race.
func TestConcurrentExclusive(t *testing.T) {
	var l Locks
	const workers, rounds, keys = 32, 500, 4
	var inside [keys]atomic.Int32
	var taken, refused atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				k := (w + r) % keys
				key := fmt.Sprintf("vol/%d", k)
				if !l.TryLock(key) {
					refused.Add(1)
					continue
				}
				taken.Add(1)
				if n := inside[k].Add(1); n != 1 {
					t.Errorf("%d holders of exclusive key %s at once", n, key)
				}
				inside[k].Add(-1)
				l.Unlock(key)
			}
		}()
	}
	wg.Wait()
	if n := l.Len(); n != 0 {
		t.Errorf("Len() = %d after every holder released, want 0", n)
	}
	if taken.Load() == 0 {
		t.Error("no goroutine ever took a lock")
	}
	t.Logf("taken %d, refused %d", taken.Load(), refused.Load())
}

// TestConcurrentReadersAndWriters mixes shared and exclusive holds: a
// writer never overlaps a reader or another writer.
func TestConcurrentReadersAndWriters(t *testing.T) {
	var l Locks
	var readers, writers atomic.Int32
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				if w%4 == 0 {
					if !l.TryLock("k") {
						continue
					}
					if writers.Add(1) != 1 || readers.Load() != 0 {
						t.Error("a writer overlapped another holder")
					}
					writers.Add(-1)
					l.Unlock("k")
					continue
				}
				if !l.TryRLock("k") {
					continue
				}
				readers.Add(1)
				if writers.Load() != 0 {
					t.Error("a reader overlapped a writer")
				}
				readers.Add(-1)
				l.Unlock("k")
			}
		}()
	}
	wg.Wait()
	if n := l.Len(); n != 0 {
		t.Errorf("Len() = %d at the end, want 0", n)
	}
}

// TestConcurrentLockAll has goroutines take overlapping key sets: a set is
// taken whole or not at all, so no two holders share a key, and nothing
// leaks when the refused ones back out.
func TestConcurrentLockAll(t *testing.T) {
	var l Locks
	sets := [][]string{{"a", "b"}, {"b", "c"}, {"c", "a"}, {"a", "b", "c"}, {"d"}, {"d", "a"}}
	var owner [4]atomic.Int32 // a, b, c, d
	idx := map[string]int{"a": 0, "b": 1, "c": 2, "d": 3}
	var wg sync.WaitGroup
	for w := range 24 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			set := sets[w%len(sets)]
			for range 500 {
				unlock, ok := l.TryLockAll(set...)
				if !ok {
					continue
				}
				for _, k := range set {
					if !owner[idx[k]].CompareAndSwap(0, int32(w+1)) {
						t.Errorf("key %s already owned while worker %d holds %v", k, w, set)
					}
				}
				for _, k := range set {
					owner[idx[k]].Store(0)
				}
				unlock()
			}
		}()
	}
	wg.Wait()
	if n := l.Len(); n != 0 {
		t.Errorf("Len() = %d at the end, want 0: TryLockAll leaked a key", n)
	}
}

func BenchmarkTryLockUnlockParallel(b *testing.B) {
	var l Locks
	var n atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		key := fmt.Sprintf("vol/%d", n.Add(1))
		for pb.Next() {
			if !l.TryLock(key) {
				b.Error("own key busy")
				return
			}
			l.Unlock(key)
		}
	})
}
