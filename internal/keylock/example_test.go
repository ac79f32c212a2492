package keylock_test

import (
	"fmt"

	"github.com/cairn-csi/cairn/internal/keylock"
)

// A second operation on a busy volume is refused at once (CSI's ABORTED)
// rather than queued, while other volumes stay free.
func ExampleLocks() {
	var locks keylock.Locks

	fmt.Println("first create of vol-1:", locks.TryLock("vol/vol-1"))
	fmt.Println("second call on vol-1: ", locks.TryLock("vol/vol-1"))
	fmt.Println("a call on vol-2:      ", locks.TryLock("vol/vol-2"))

	locks.Unlock("vol/vol-1")
	locks.Unlock("vol/vol-2")
	fmt.Println("keys held:", locks.Len())
	// Output:
	// first create of vol-1: true
	// second call on vol-1:  false
	// a call on vol-2:       true
	// keys held: 0
}

// TryLockAll takes several keys (a snapshot's name and its source volume)
// or none of them.
func ExampleLocks_TryLockAll() {
	var locks keylock.Locks
	locks.TryLock("vol/vol-1") // something else works on the source

	_, ok := locks.TryLockAll("snapname/nightly", "vol/vol-1")
	fmt.Println("taken:", ok, "keys held:", locks.Len())

	locks.Unlock("vol/vol-1")
	unlock, ok := locks.TryLockAll("snapname/nightly", "vol/vol-1")
	fmt.Println("taken:", ok, "keys held:", locks.Len())
	unlock()
	fmt.Println("keys held after unlock:", locks.Len())
	// Output:
	// taken: false keys held: 1
	// taken: true keys held: 2
	// keys held after unlock: 0
}
