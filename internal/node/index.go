package node

import (
	"context"
	"errors"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/mounttable"
)

// MountIndex reads the node's mount table once and indexes it, for a call
// that looks many volumes up (a listing): MountsOf per volume would read
// and stat the whole table for each one.
func (n *Node) MountIndex() (*mounttable.Table, error) {
	infos, err := n.table.Mounts()
	if err != nil {
		return nil, err
	}
	return mounttable.FromInfos(infos), nil
}

// LoopsByBackingFile indexes the attached loop devices (their rdevs) by
// their backing file's device and inode, for the same kind of call. A
// device whose file was unlinked belongs to no existing image (as in
// loopdev.FindByBackingFile). A node without loop devices has none.
func (n *Node) LoopsByBackingFile(ctx context.Context) (map[mounttable.DevIno][]uint64, error) {
	out := map[mounttable.DevIno][]uint64{}
	if n.loop == nil {
		return out, nil
	}
	devs, err := n.loop.List(ctx)
	if err != nil {
		return out, err
	}
	ids, _ := n.loop.(LoopBackingIDs)
	for _, dev := range devs {
		var fst, dst unix.Stat_t
		if dev.Deleted || unix.Stat(dev.Path, &dst) != nil {
			continue // unlinked, or gone since
		}
		var k mounttable.DevIno
		if err := unix.Stat(dev.BackingFile, &fst); err == nil {
			k = mounttable.DevIno{Dev: fst.Dev, Ino: fst.Ino}
		} else if fsDev, ino, ok := backingIDOf(ids, dev.Path, err); ok {
			k = mounttable.DevIno{Dev: fsDev, Ino: ino}
		} else {
			continue
		}
		out[k] = append(out[k], dst.Rdev)
	}
	return out, nil
}

// backingIDOf asks the device for its file when its reported path names
// nothing here (statErr), as loopdev.FindByBackingFile does.
func backingIDOf(ids LoopBackingIDs, dev string, statErr error) (uint64, uint64, bool) {
	if ids == nil || (!errors.Is(statErr, unix.ENOENT) && !errors.Is(statErr, unix.ENOTDIR)) {
		return 0, 0, false
	}
	return ids.BackingID(dev)
}
