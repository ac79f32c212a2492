package node

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	mount "k8s.io/mount-utils"
)

// lazyMounter mimics mount-utils' Mounter: it detects something on the
// first Mount and caches it without a lock.
type lazyMounter struct {
	mount.Interface
	detected *bool
	fail     atomic.Int32 // fail this many calls first
}

func (m *lazyMounter) Mount(source, target, fstype string, options []string) error {
	return m.MountSensitive(source, target, fstype, options, nil)
}

func (m *lazyMounter) MountSensitive(source, target, fstype string, options, sensitive []string) error {
	// The unsynchronised lazy init, before anything that would order the
	// callers for the race detector.
	if m.detected == nil {
		v := true
		m.detected = &v
	}
	_ = *m.detected
	if m.fail.Add(-1) >= 0 {
		return errors.New("mount failed")
	}
	return nil
}

// TestFirstMountGate: under -race, concurrent first mounts through the gate
// do not race on the wrapped mounter's lazy state; after a success, calls
// run in parallel again.
func TestFirstMountGate(t *testing.T) {
	inner := &lazyMounter{Interface: mount.NewFakeMounter(nil)}
	inner.fail.Store(2) // the first two calls fail: the gate stays shut
	g := &FirstMountGate{Interface: inner}
	var wg sync.WaitGroup
	var failures atomic.Int32
	for i := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if i%2 == 0 {
				err = g.Mount("/src", "/dst", "", []string{"bind"})
			} else {
				err = g.MountSensitive("/src", "/dst", "ext4", nil, nil)
			}
			if err != nil {
				failures.Add(1)
			}
		}()
	}
	wg.Wait()
	if failures.Load() != 2 {
		t.Errorf("%d calls failed, want the 2 the mounter failed", failures.Load())
	}
	if !g.ready.Load() {
		t.Error("the gate did not open after a successful mount")
	}
	// Open: calls overlap now.
	start := make(chan struct{})
	release := make(chan struct{})
	blocking := &blockingMounter{Interface: mount.NewFakeMounter(nil), entered: start, release: release}
	g2 := &FirstMountGate{Interface: blocking}
	g2.ready.Store(true)
	done := make(chan error, 2)
	for range 2 {
		go func() { done <- g2.Mount("/a", "/b", "", nil) }()
	}
	<-start
	<-start // both inside at once: not serialised
	close(release)
	for range 2 {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}

type blockingMounter struct {
	mount.Interface
	entered chan struct{}
	release chan struct{}
}

func (m *blockingMounter) Mount(source, target, fstype string, options []string) error {
	m.entered <- struct{}{}
	<-m.release
	return nil
}
