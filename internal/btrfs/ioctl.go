package btrfs

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// Kernel ABI from include/uapi/linux/btrfs.h and btrfs_tree.h. Struct sizes
// and request numbers are pinned by TestABI against the C header values.

const ioctlMagic = 0x94

const (
	iocWrite = 1
	iocRead  = 2
)

func ioc(dir, nr, size uintptr) uintptr {
	return dir<<30 | size<<16 | ioctlMagic<<8 | nr
}

// firstFreeObjectID is the inode number of every subvolume's root directory
// (BTRFS_FIRST_FREE_OBJECTID); it is also the objectid that makes
// INO_LOOKUP answer with the tree id alone.
const firstFreeObjectID = 256

// Subvolume flags (BTRFS_SUBVOL_*).
const subvolRDOnly = 1 << 1

// Quota tree keys and flags.
const (
	quotaTreeObjectID = 8
	rootTreeObjectID  = 1

	rootItemKey     = 132
	qgroupStatusKey = 240
	qgroupInfoKey   = 242
	qgroupLimitKey  = 244

	qgroupStatusFlagOn           = 1 << 0
	qgroupStatusFlagRescan       = 1 << 1
	qgroupStatusFlagInconsistent = 1 << 2

	qgroupLimitMaxRfer = 1 << 0

	// qgroupLimitClear asks btrfs_limit_qgroup to drop a limit (CLEAR_VALUE).
	qgroupLimitClear = ^uint64(0)

	quotaCtlEnable = 1
)

// volNameMax is BTRFS_PATH_NAME_MAX; the byte after it stays NUL.
const volNameMax = 4087

type volArgs struct {
	FD   int64
	Name [volNameMax + 1]byte
}

type volArgsV2 struct {
	FD      int64
	TransID uint64
	Flags   uint64
	Unused  [4]uint64 // union with {size, qgroup_inherit*}; we never inherit
	Name    [4040]byte
}

type inoLookupArgs struct {
	TreeID   uint64
	ObjectID uint64
	Name     [4080]byte
}

type searchKey struct {
	TreeID      uint64
	MinObjectID uint64
	MaxObjectID uint64
	MinOffset   uint64
	MaxOffset   uint64
	MinTransID  uint64
	MaxTransID  uint64
	MinType     uint32
	MaxType     uint32
	NrItems     uint32
	_           uint32
	_           [4]uint64
}

type searchHeader struct {
	TransID  uint64
	ObjectID uint64
	Offset   uint64
	Type     uint32
	Len      uint32
}

type searchArgs struct {
	Key searchKey
	Buf [4096 - unsafe.Sizeof(searchKey{})]byte
}

type quotaCtlArgs struct {
	Cmd    uint64
	Status uint64
}

type qgroupCreateArgs struct {
	Create   uint64
	QgroupID uint64
}

type qgroupLimit struct {
	Flags   uint64
	MaxRfer uint64
	MaxExcl uint64
	RsvRfer uint64
	RsvExcl uint64
}

type qgroupLimitArgs struct {
	QgroupID uint64
	Lim      qgroupLimit
}

type quotaRescanArgs struct {
	Flags    uint64
	Progress uint64
	_        [6]uint64
}

var (
	iocSubvolCreate    = ioc(iocWrite, 14, unsafe.Sizeof(volArgs{}))
	iocSnapDestroy     = ioc(iocWrite, 15, unsafe.Sizeof(volArgs{}))
	iocSnapCreateV2    = ioc(iocWrite, 23, unsafe.Sizeof(volArgsV2{}))
	iocSubvolGetFlags  = ioc(iocRead, 25, 8)
	iocSubvolSetFlags  = ioc(iocWrite, 26, 8)
	iocInoLookup       = ioc(iocRead|iocWrite, 18, unsafe.Sizeof(inoLookupArgs{}))
	iocTreeSearch      = ioc(iocRead|iocWrite, 17, unsafe.Sizeof(searchArgs{}))
	iocSync            = ioc(0, 8, 0)
	iocQuotaCtl        = ioc(iocRead|iocWrite, 40, unsafe.Sizeof(quotaCtlArgs{}))
	iocQgroupCreate    = ioc(iocWrite, 42, unsafe.Sizeof(qgroupCreateArgs{}))
	iocQgroupLimit     = ioc(iocRead, 43, unsafe.Sizeof(qgroupLimitArgs{})) // _IOR in the header, though it writes
	iocQuotaRescan     = ioc(iocWrite, 44, unsafe.Sizeof(quotaRescanArgs{}))
	iocQuotaRescanWait = ioc(0, 46, 0)
)

// ioctl issues req on fd. It uses unix.Syscall rather than RawSyscall because
// several of these requests commit a transaction and can block for seconds.
func ioctl(fd int, req uintptr, arg unsafe.Pointer) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if errno != 0 {
		return errno
	}
	return nil
}

// setName copies name into a NUL-terminated fixed buffer.
func setName(dst []byte, name string) {
	n := copy(dst[:len(dst)-1], name)
	dst[n] = 0
}
