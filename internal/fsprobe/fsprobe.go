// Package fsprobe reads the superblocks of the filesystems Cairn makes in
// image volumes (ext2/3/4, XFS, btrfs): which filesystem a device or image
// holds, its block and sector sizes, and how many bytes of the device it
// covers. The node layer uses these to pin a loop device's logical block
// size before attaching and to grow a filesystem only when its device is
// larger, without running the filesystems' tools to find out.
package fsprobe

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/cairn-csi/cairn/internal/errdefs"
)

// ErrNoFilesystem is returned by Read when no superblock it knows is found.
var ErrNoFilesystem = fmt.Errorf("no ext2/3/4, xfs or btrfs superblock: %w", errdefs.ErrNotFound)

// Info is what a superblock says.
type Info struct {
	Type      string // "ext2", "ext3", "ext4", "xfs" or "btrfs"
	BlockSize int64  // filesystem block size in bytes
	// SectorSize is the smallest unit the filesystem reads and writes: a
	// device whose logical block size is larger cannot mount it (ext4
	// "bad block size", XFS "device supports N byte sectors").
	SectorSize int64
	// Size is how many bytes of its device the filesystem covers.
	Size int64

	ext *extGeometry
}

// extGeometry is what resize2fs's last-group rule needs.
type extGeometry struct {
	firstDataBlock, blocksPerGroup int64
	inodeBlocksPerGroup            int64
	descBlocks, reservedGDT        int64
}

const (
	extSuperOffset   = 1024
	xfsSuperOffset   = 0
	btrfsSuperOffset = 64 << 10

	extMagic   = 0xEF53
	xfsMagic   = "XFSB"
	btrfsMagic = "_BHRfS_M"
)

// Read probes the device or image file at path.
func Read(ctx context.Context, path string) (Info, error) {
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	f, err := os.Open(path)
	if err != nil {
		return Info{}, fmt.Errorf("fsprobe: %w", err)
	}
	defer f.Close()
	info, err := ReadFrom(f)
	if err != nil {
		return Info{}, fmt.Errorf("fsprobe %s: %w", path, err)
	}
	return info, nil
}

// ReadFrom probes r, as Read does.
func ReadFrom(r io.ReaderAt) (Info, error) {
	// One read covers all three superblocks; a short device simply ends it.
	buf := make([]byte, btrfsSuperOffset+4096)
	n, err := r.ReadAt(buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return Info{}, err
	}
	buf = buf[:n]
	if info, ok := parseXFS(buf); ok {
		return info, nil
	}
	if info, ok := parseExt(buf); ok {
		return info, nil
	}
	if info, ok := parseBtrfs(buf); ok {
		return info, nil
	}
	return Info{}, ErrNoFilesystem
}

func parseExt(buf []byte) (Info, bool) {
	if len(buf) < extSuperOffset+1024 {
		return Info{}, false
	}
	sb := buf[extSuperOffset : extSuperOffset+1024]
	le := binary.LittleEndian
	if le.Uint16(sb[0x38:]) != extMagic {
		return Info{}, false
	}
	logBS := le.Uint32(sb[0x18:])
	if logBS > 6 { // 64 KiB is the largest block ext4 knows
		return Info{}, false
	}
	bs := int64(1024) << logBS
	compat, incompat := le.Uint32(sb[0x5C:]), le.Uint32(sb[0x60:])
	blocks := int64(le.Uint32(sb[0x04:]))
	const incompat64bit, incompatExtents, incompatFlexBG = 0x80, 0x40, 0x200
	descSize := int64(32)
	if incompat&incompat64bit != 0 {
		blocks |= int64(le.Uint32(sb[0x150:])) << 32
		if ds := int64(le.Uint16(sb[0xFE:])); ds >= 64 {
			descSize = ds
		}
	}
	inodeSize := int64(128)
	if le.Uint32(sb[0x4C:]) >= 1 { // dynamic revision: the size is recorded
		inodeSize = int64(le.Uint16(sb[0x58:]))
	}
	g := &extGeometry{
		firstDataBlock: int64(le.Uint32(sb[0x14:])),
		blocksPerGroup: int64(le.Uint32(sb[0x20:])),
		reservedGDT:    int64(le.Uint16(sb[0xCE:])),
	}
	ipg := int64(le.Uint32(sb[0x28:]))
	if g.blocksPerGroup == 0 || inodeSize == 0 {
		return Info{}, false
	}
	g.inodeBlocksPerGroup = (ipg*inodeSize + bs - 1) / bs
	groups := (blocks - g.firstDataBlock + g.blocksPerGroup - 1) / g.blocksPerGroup
	g.descBlocks = (groups*descSize + bs - 1) / bs
	typ := "ext2"
	switch {
	case incompat&(incompat64bit|incompatExtents|incompatFlexBG) != 0:
		typ = "ext4"
	case compat&0x4 != 0: // has_journal
		typ = "ext3"
	}
	return Info{Type: typ, BlockSize: bs, SectorSize: bs, Size: blocks * bs, ext: g}, true
}

func parseXFS(buf []byte) (Info, bool) {
	if len(buf) < xfsSuperOffset+512 {
		return Info{}, false
	}
	sb := buf[xfsSuperOffset:]
	if string(sb[0:4]) != xfsMagic {
		return Info{}, false
	}
	be := binary.BigEndian
	bs := int64(be.Uint32(sb[4:]))
	sect := int64(be.Uint16(sb[102:]))
	if bs == 0 || sect == 0 {
		return Info{}, false
	}
	return Info{Type: "xfs", BlockSize: bs, SectorSize: sect, Size: int64(be.Uint64(sb[8:])) * bs}, true
}

func parseBtrfs(buf []byte) (Info, bool) {
	if len(buf) < btrfsSuperOffset+4096 {
		return Info{}, false
	}
	sb := buf[btrfsSuperOffset:]
	if string(sb[64:72]) != btrfsMagic {
		return Info{}, false
	}
	le := binary.LittleEndian
	sect := int64(le.Uint32(sb[144:]))
	if sect == 0 {
		return Info{}, false
	}
	// dev_item.total_bytes: what this device contributes, which is what
	// "btrfs filesystem resize max" changes.
	return Info{Type: "btrfs", BlockSize: sect, SectorSize: sect, Size: int64(le.Uint64(sb[201+8:]))}, true
}

// btrfsMinResize is the smallest size the kernel resizes a btrfs device to
// (btrfs_ioctl_resize refuses less than 256 MiB with EINVAL).
const btrfsMinResize = 256 << 20

// GrowTarget returns the size the filesystem would have if grown to fill a
// device of devSize bytes: devSize rounded down to whole blocks, less the
// last ext block group where resize2fs would drop it as too small to hold
// its own metadata; a btrfs below 256 MiB cannot be resized at all. Comparing it with Size tells whether a grow would do
// anything, so that an unchanged volume never runs the resize tools.
func (i Info) GrowTarget(devSize int64) int64 {
	if i.BlockSize <= 0 {
		return devSize
	}
	if i.Type == "btrfs" && devSize < btrfsMinResize {
		return i.Size
	}
	blocks := devSize / i.BlockSize
	if g := i.ext; g != nil {
		// resize2fs's adjust_fs_info: a last group with fewer blocks than
		// its bookkeeping plus 50 is cut off. The backup superblock and
		// descriptors are counted as if that group had them, so the
		// estimate never promises more than resize2fs will do.
		overhead := 2 + g.inodeBlocksPerGroup + 1 + g.descBlocks + g.reservedGDT
		if rem := (blocks - g.firstDataBlock) % g.blocksPerGroup; rem > 0 && blocks-g.firstDataBlock > g.blocksPerGroup && rem < overhead+50 {
			blocks -= rem
		}
	}
	return blocks * i.BlockSize
}
