package driver

import (
	"context"
	"errors"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/mounttable"
	"github.com/cairn-csi/cairn/internal/store"
)

// Paging. A caller that leaves max_entries at 0 still gets pages: one
// reply for every volume of a big node would exceed gRPC's 4 MiB default
// message limit, and the caller could never list at all. The byte budget
// also caps pages the caller sized, since entries vary in size (the CSI
// spec lets a plugin return fewer than max_entries).
const (
	defaultPageEntries = 1000
	maxReplyBytes      = 1 << 20
)

// pageLimit is how many entries a page may hold at most.
func pageLimit(maxEntries int32) int {
	if maxEntries > 0 {
		return int(maxEntries)
	}
	return defaultPageEntries
}

// listView holds what one listing call reads once and then looks every
// volume up in, so that the call costs time linear in volumes plus mounts:
// the mount table (read and stat'ed once), each pool's capacity
// enforcement (one statfs per pool, not per volume) and, for image
// volumes, the loop devices by backing file.
type listView struct {
	d        *Driver
	mounts   *mounttable.Table
	mountErr error
	enforced map[string]*bool
	loops    map[mounttable.DevIno][]uint64 // backing file -> loop devices' rdevs
}

func (d *Driver) newListView() *listView {
	lv := &listView{d: d, enforced: map[string]*bool{}}
	lv.mounts, lv.mountErr = mounttable.Read()
	if lv.mountErr != nil {
		d.log.Warn("reading the mount table for a listing; published nodes left empty", "err", lv.mountErr)
	}
	return lv
}

// csiVolume is Driver.csiVolume with the pool's statfs done once per call.
func (lv *listView) csiVolume(ctx context.Context, v store.Volume) *csi.Volume {
	e, ok := lv.enforced[v.Pool]
	if !ok {
		if b, found := lv.d.pools[v.Pool]; found {
			if c, err := b.Capacity(ctx); err == nil {
				e = &c.Enforced
			}
		}
		lv.enforced[v.Pool] = e
	}
	return lv.d.volumeMessage(v, e)
}

// published is Driver.publishedNodes answered from the call's mount table.
func (lv *listView) published(ctx context.Context, v store.Volume) []string {
	if lv.mounts == nil {
		return nil
	}
	pool, ok := lv.d.pools[v.Pool]
	if !ok {
		return nil
	}
	src, err := pool.Source(ctx, v.ID)
	if err != nil {
		return nil
	}
	if len(lv.mountsOf(ctx, src)) > 0 {
		return []string{lv.d.cfg.NodeID}
	}
	return nil
}

// mountsOf identifies src by device and inode, as Driver.identityOf does,
// and looks it up in the table.
func (lv *listView) mountsOf(ctx context.Context, src backend.Source) []string {
	var st unix.Stat_t
	if unix.Stat(src.Path, &st) != nil {
		return nil
	}
	switch src.Kind {
	case backend.SourceDirectory:
		return lv.mounts.Dir(st.Dev, st.Ino)
	case backend.SourceBlockDevice:
		return lv.mounts.Devices([]uint64{st.Rdev})
	case backend.SourceImageFile:
		if lv.loops == nil {
			lv.loops = lv.readLoops(ctx)
		}
		return lv.mounts.Devices(lv.loops[mounttable.DevIno{Dev: st.Dev, Ino: st.Ino}])
	}
	return nil
}

// readLoops indexes the attached loop devices by their backing file's
// device and inode. A device whose file was unlinked belongs to no
// existing image (as in loopdev.FindByBackingFile).
func (lv *listView) readLoops(ctx context.Context) map[mounttable.DevIno][]uint64 {
	out := map[mounttable.DevIno][]uint64{}
	if lv.d.cfg.Loop == nil {
		return out
	}
	devs, err := lv.d.cfg.Loop.List(ctx)
	if err != nil {
		lv.d.log.Warn("listing loop devices for a listing", "err", err)
		return out
	}
	ids, _ := lv.d.cfg.Loop.(LoopBackingIDs)
	for dev, file := range devs {
		var fst, dst unix.Stat_t
		if unix.Stat(dev, &dst) != nil || strings.HasSuffix(file, " (deleted)") {
			continue // gone since, or unlinked
		}
		var k mounttable.DevIno
		if err := unix.Stat(file, &fst); err == nil {
			k = mounttable.DevIno{Dev: fst.Dev, Ino: fst.Ino}
		} else if fsDev, ino, ok := backingIDOf(ids, dev, err); ok {
			k = mounttable.DevIno{Dev: fsDev, Ino: ino}
		} else {
			continue
		}
		out[k] = append(out[k], dst.Rdev)
	}
	return out
}

// backingIDOf asks the device for its file when its reported path names
// nothing here (statErr), as loopdev.FindByBackingFile does.
func backingIDOf(ids LoopBackingIDs, dev string, statErr error) (uint64, uint64, bool) {
	if ids == nil || (!errors.Is(statErr, unix.ENOENT) && !errors.Is(statErr, unix.ENOTDIR)) {
		return 0, 0, false
	}
	return ids.BackingID(dev)
}

// fits reports whether one more entry of n bytes keeps a reply of used
// bytes under the budget; the first entry always fits, so a page is never
// empty while entries remain.
func fits(used, n, count int) bool { return count == 0 || used+n <= maxReplyBytes }

func entrySize(m proto.Message) int { return proto.Size(m) + 8 } // + field tag and length
