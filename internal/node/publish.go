package node

import (
	"context"
	"errors"
	"fmt"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/mountfd"
)

// StageDir bind-mounts directory volume source at staging, opened without
// following a symlink, so that the path cannot be swapped under the mount.
func (n *Node) StageDir(source, staging string) error {
	sh, err := mountfd.Open(staging)
	if err != nil {
		return fmt.Errorf("staging_target_path: %w", err)
	}
	defer sh.Close()
	return BindAt(source, nil, sh, mountfd.Attrs{})
}

// PublishSpec is one bind of a staged volume at a target.
type PublishSpec struct {
	Staging, Target string
	// Block: the target is a file and Source a device node; otherwise the
	// target is a directory and the staged mount at Staging is cloned.
	Block  bool
	Source string // the device, for Block
	Attrs  mountfd.Attrs
}

// Publish makes the target (a directory, or a file for block access) and
// binds the staged mount, or the device, there, removing a target it made
// if the bind fails.
func (n *Node) Publish(p PublishSpec) error {
	th, created, err := mountfd.MakeTarget(p.Target, p.Block)
	if err != nil {
		return fmt.Errorf("target_path: %w", err)
	}
	defer th.Close()
	var src *mountfd.Handle
	if !p.Block {
		// The staged mount, opened the same symlink-free way, is cloned.
		if src, err = mountfd.Open(p.Staging); err != nil {
			return fmt.Errorf("staging_target_path: %w", err)
		}
		defer src.Close()
	}
	if err := BindAt(p.Source, src, th, p.Attrs); err != nil {
		if created {
			if rerr := mountfd.RemoveTarget(p.Target); rerr != nil {
				err = errors.Join(err, rerr)
			}
		}
		return err
	}
	return nil
}

// Unpublish peels the mounts of the volume with identity id off target
// (UnmountOurs) and, unless a foreign mount stopped it, removes the
// target. Only an empty directory or a file goes: if anything is left
// inside, it is not ours.
func (n *Node) Unpublish(ctx context.Context, target string, id Identity) (count int, foreign bool, err error) {
	count, foreign, err = n.UnmountOurs(ctx, target, id)
	if err != nil || foreign {
		return count, foreign, err
	}
	if err := mountfd.RemoveTarget(target); err != nil {
		return count, false, fmt.Errorf("remove target %s: %w", target, err)
	}
	return count, false, nil
}

// MountedElsewhere returns a mount point of the volume with source src
// other than the given paths, or "" if there is none: the single-writer
// check of a publish.
func (n *Node) MountedElsewhere(ctx context.Context, src backend.Source, except ...string) (string, error) {
	mps, err := n.MountsOf(ctx, src)
	if err != nil {
		return "", err
	}
	for _, mp := range mps {
		other := true
		for _, e := range except {
			if mp == e {
				other = false
			}
		}
		if other {
			return mp, nil
		}
	}
	return "", nil
}
