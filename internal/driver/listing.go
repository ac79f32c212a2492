package driver

import (
	"context"
	"path/filepath"

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
// spec lets a plugin return fewer than max_entries). The budget counts
// ListVolumes entries by a bound about twice their size (sizeBound), so a
// page of 5,000 typical volumes, about 0.8 MiB, fits it; each page costs
// a store read and a mount-table read, so pages are as large as that.
const (
	defaultPageEntries = 5000
	maxReplyBytes      = 2 << 20
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
	contexts map[contextKey]map[string]string // shared by the volumes alike
	loops    map[mounttable.DevIno][]uint64   // backing file -> loop devices' rdevs
	maxFixed int                              // sizeBound's constant part, 0 until needed
}

func (d *Driver) newListView() *listView {
	lv := &listView{d: d, enforced: map[string]*bool{}, contexts: map[contextKey]map[string]string{}}
	lv.mounts, lv.mountErr = d.node.MountIndex()
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
	if v.Encryption != "" { // the key ID makes the context the volume's own
		return lv.d.volumeMessage(v, e)
	}
	// Volumes alike share one context map: a listing is marshalled and
	// dropped, and nothing changes a message's context.
	k := contextKey{v.Pool, v.FsType, v.MkfsOptions, e != nil && *e, e != nil}
	vc, ok := lv.contexts[k]
	if !ok {
		vc = volumeContext(v, e)
		lv.contexts[k] = vc
	}
	return lv.d.volumeWithContext(v, vc)
}

// contextKey is everything an unencrypted volume's context is made of.
type contextKey struct {
	pool, fsType, mkfsOptions string
	enforced, known           bool
}

// sizeBound bounds the encoded size of v's ListVolumes entry, as
// entrySize counts it, from the size of v's stored record (rawLen)
// without encoding the entry: every string of the entry that varies is a
// value of the record, which its JSON holds whole, with more framing
// around it than protobuf adds; the rest (context keys, topology, the
// published node, the widest integers) is measured once per call on an
// entry whose varying strings are one byte long. Summing exact sizes
// cost as much as encoding every page twice.
func (lv *listView) sizeBound(rawLen int) int {
	if lv.maxFixed == 0 {
		one := "x"
		skel := store.Volume{ID: one, Pool: one, FsType: one, MkfsOptions: one, Encryption: one, KeyID: one,
			SourceSnapshotID: one, CapacityBytes: -1}
		e := &csi.ListVolumesResponse_Entry{
			Volume: lv.d.volumeMessage(skel, new(bool)),
			Status: &csi.ListVolumesResponse_VolumeStatus{PublishedNodeIds: []string{lv.d.cfg.NodeID}},
		}
		lv.maxFixed = entrySize(e) + 32 // + slack for longer length prefixes
	}
	return rawLen + lv.maxFixed
}

// published is Driver.publishedNodes answered from the call's mount table.
// For a pool of directories named by ID, a volume no mount is named after
// has no bind mount, and costs a map lookup instead of two stats; the few
// that are named are still decided by device and inode.
func (lv *listView) published(ctx context.Context, v store.Volume) []string {
	if lv.mounts == nil {
		return nil
	}
	pool, ok := lv.d.pools[v.Pool]
	if !ok {
		return nil
	}
	named := false
	if nd, ok := pool.(backend.DirsNamedByID); ok && nd.VolumeDirsNamedByID() {
		if !lv.mounts.RootNamed(v.ID) {
			return nil
		}
		named = true
	}
	src, err := pool.Source(ctx, v.ID)
	if err != nil {
		return nil
	}
	if len(lv.mountsOf(ctx, src, named)) > 0 {
		return []string{lv.d.cfg.NodeID}
	}
	return nil
}

// mountsOf identifies src by device and inode, as node.IdentityOf does,
// and looks it up in the table. named: src is a directory named by its
// volume's ID, so only the mounts of that name need a stat.
func (lv *listView) mountsOf(ctx context.Context, src backend.Source, named bool) []string {
	var st unix.Stat_t
	if unix.Stat(src.Path, &st) != nil {
		return nil
	}
	switch src.Kind {
	case backend.SourceDirectory:
		if named {
			return lv.mounts.DirNamed(filepath.Base(src.Path), st.Dev, st.Ino)
		}
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

// readLoops is the node's loop devices by backing file; a failure leaves
// image volumes unpublished in this listing, as a mount-table failure does.
func (lv *listView) readLoops(ctx context.Context) map[mounttable.DevIno][]uint64 {
	out, err := lv.d.node.LoopsByBackingFile(ctx)
	if err != nil {
		lv.d.log.Warn("listing loop devices for a listing", "err", err)
	}
	return out
}

// fits reports whether one more entry of n bytes keeps a reply of used
// bytes under the budget; the first entry always fits, so a page is never
// empty while entries remain.
func fits(used, n, count int) bool { return count == 0 || used+n <= maxReplyBytes }

func entrySize(m proto.Message) int { return proto.Size(m) + 8 } // + field tag and length
