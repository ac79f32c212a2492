package node

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cairn-csi/cairn/internal/fsfreeze"
	"github.com/cairn-csi/cairn/internal/testfs"
)

// frozen reports whether the filesystem at mnt is frozen, by trying to
// freeze it (and thawing at once if that worked).
func frozen(t *testing.T, mnt string) bool {
	t.Helper()
	thaw, err := fsfreeze.Freeze(context.Background(), mnt)
	if errors.Is(err, fsfreeze.ErrAlreadyFrozen) {
		return true
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := thaw(); err != nil {
		t.Fatal(err)
	}
	return false
}

// TestThawLeftovers: a freeze outlives the process that made it. At start
// the node thaws exactly the filesystems its previous run recorded as
// frozen for a snapshot, and leaves anyone else's freeze alone.
func TestThawLeftovers(t *testing.T) {
	ctx := context.Background()
	ours := testfs.New(t, "ext4", 0)
	theirs := testfs.New(t, "ext4", 0)
	d := New(Config{StateDir: t.TempDir()})

	// A previous run froze ours and died before the thaw; someone else
	// froze theirs.
	marker, err := d.markFrozen("vol-0000000000000001", ours)
	if err != nil {
		t.Fatal(err)
	}
	thawOurs, err := fsfreeze.Freeze(ctx, ours)
	if err != nil {
		t.Fatal(err)
	}
	defer thawOurs() // only if the driver did not
	thawTheirs, err := fsfreeze.Freeze(ctx, theirs)
	if err != nil {
		t.Fatal(err)
	}
	defer thawTheirs()
	// And a marker whose mount is gone (a reboot in between).
	gone, err := d.markFrozen("vol-0000000000000002", filepath.Join(t.TempDir(), "gone"))
	if err != nil {
		t.Fatal(err)
	}

	d.ThawLeftovers(ctx)

	if frozen(t, ours) {
		t.Error("the filesystem the previous run froze is still frozen")
	}
	if !frozen(t, theirs) {
		t.Error("someone else's freeze was thawed")
	}
	for _, m := range []string{marker, gone} {
		if _, err := os.Stat(m); !os.IsNotExist(err) {
			t.Errorf("marker %s is still there: %v", m, err)
		}
	}
}
