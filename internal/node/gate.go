package node

import (
	"sync"
	"sync/atomic"

	mount "k8s.io/mount-utils"
)

// FirstMountGate serialises Mount and MountSensitive until one has
// succeeded. mount-utils' Mounter detects systemd lazily on its first mount
// and stores the answer without a lock, so concurrent first mounts (two
// NodeStageVolume calls right after a start) are a data race; once a mount
// has gone through, the answer is only read and calls run in parallel.
type FirstMountGate struct {
	mount.Interface
	mu    sync.Mutex
	ready atomic.Bool
}

// Mount is mount.Interface's, gated.
func (g *FirstMountGate) Mount(source, target, fstype string, options []string) error {
	return g.gated(func() error { return g.Interface.Mount(source, target, fstype, options) })
}

// MountSensitive is mount.Interface's, gated.
func (g *FirstMountGate) MountSensitive(source, target, fstype string, options, sensitive []string) error {
	return g.gated(func() error { return g.Interface.MountSensitive(source, target, fstype, options, sensitive) })
}

func (g *FirstMountGate) gated(mount func() error) error {
	if g.ready.Load() {
		return mount()
	}
	g.mu.Lock()
	if g.ready.Load() { // the call we waited for went through
		g.mu.Unlock()
		return mount()
	}
	defer g.mu.Unlock()
	err := mount()
	if err == nil {
		g.ready.Store(true)
	}
	return err
}
