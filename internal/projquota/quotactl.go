package projquota

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Kernel ABI from include/uapi/linux/quota.h, dqblk_xfs.h and fs.h. Sizes and
// numbers are pinned by TestABI against the C header values.

const (
	prjQuota = 2 // PRJQUOTA

	qGetQuota   = 0x800007 // Q_GETQUOTA
	qSetQuota   = 0x800008 // Q_SETQUOTA
	qXGetQStatV = 0x5808   // Q_XGETQSTATV: ('X'<<8)+8

	qifBLimits = 1 // QIF_BLIMITS: dqb_bhardlimit and dqb_bsoftlimit
	qifILimits = 4 // QIF_ILIMITS: dqb_ihardlimit and dqb_isoftlimit

	// qifBlockSize is QIF_DQBLKSIZE: if_dqblk block limits are in 1 KiB
	// units whatever the filesystem's block size; dqb_curspace is in bytes.
	qifBlockSize = 1024

	fsQStatVVersion1 = 1
	fsQuotaPDQAcct   = 0x0010 // FS_QUOTA_PDQ_ACCT: project usage is counted
	fsQuotaPDQEnfd   = 0x0020 // FS_QUOTA_PDQ_ENFD: project limits are enforced

	fsXFlagProjInherit = 0x00000200 // FS_XFLAG_PROJINHERIT
)

func qcmd(cmd, typ uint32) uint32 { return cmd<<8 | typ&0xff }

type ifDqblk struct {
	BHardLimit uint64
	BSoftLimit uint64
	CurSpace   uint64
	IHardLimit uint64
	ISoftLimit uint64
	CurInodes  uint64
	BTime      uint64
	ITime      uint64
	Valid      uint32
	_          uint32
}

type fsQFileStatV struct {
	Ino      uint64
	NBlks    uint64
	NExtents uint32
	_        uint32
}

type fsQuotaStatV struct {
	Version      int8
	_            uint8
	Flags        uint16
	InCoreDQs    uint32
	UQuota       fsQFileStatV
	GQuota       fsQFileStatV
	PQuota       fsQFileStatV
	BTimeLimit   int32
	ITimeLimit   int32
	RTBTimeLimit int32
	BWarnLimit   uint16
	IWarnLimit   uint16
	RTBWarnLimit uint16
	_            uint16
	_            uint32
	_            [7]uint64
}

type fsxattr struct {
	XFlags     uint32
	ExtSize    uint32
	NExtents   uint32
	ProjID     uint32
	CowExtSize uint32
	_          [8]byte
}

var (
	fsIocFSGetXattr = uintptr(2<<30 | unsafe.Sizeof(fsxattr{})<<16 | 'X'<<8 | 31) // _IOR('X', 31, struct fsxattr)
	fsIocFSSetXattr = uintptr(1<<30 | unsafe.Sizeof(fsxattr{})<<16 | 'X'<<8 | 32) // _IOW('X', 32, struct fsxattr)
)

// useQuotactlFD lets tests force the quotactl(2) fallback.
var useQuotactlFD = quotactlFDAvailable

// quotactlFDAvailable reports whether the kernel has quotactl_fd(2) (5.14+)
// and seccomp lets us call it. Probing with fd -1 tells "no such syscall"
// (ENOSYS) apart from the ENOSYS a filesystem without quota support gives.
var quotactlFDAvailable = sync.OnceValue(func() bool {
	_, _, errno := unix.Syscall6(unix.SYS_QUOTACTL_FD, ^uintptr(0), uintptr(qcmd(qGetQuota, prjQuota)), 0, 0, 0, 0)
	return errno != unix.ENOSYS && errno != unix.EPERM
})

// quotactl runs quota command cmd for id on the filesystem holding path,
// through quotactl_fd(2) on an fd of path, or, where that syscall is
// missing, through quotactl(2) on the filesystem's block device.
func quotactl(path string, cmd uint32, id uint32, addr unsafe.Pointer) error {
	if useQuotactlFD() {
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		_, _, errno := unix.Syscall6(unix.SYS_QUOTACTL_FD, uintptr(fd), uintptr(cmd), uintptr(id), uintptr(addr), 0, 0)
		if errno != 0 {
			return quotactlErrno{errno}
		}
		return nil
	}
	dev, err := blockDevice(path)
	if err != nil {
		return err
	}
	special, err := unix.BytePtrFromString(dev)
	if err != nil {
		return err
	}
	_, _, errno := unix.Syscall6(unix.SYS_QUOTACTL, uintptr(cmd), uintptr(unsafe.Pointer(special)), uintptr(id), uintptr(addr), 0, 0)
	if errno != 0 {
		return fmt.Errorf("quotactl on %s: %w", dev, quotactlErrno{errno})
	}
	return nil
}

// quotactlErrno is an errno from the quota syscall itself, as opposed to one
// from opening path or finding its device: ENOENT means "no such quota",
// not "no such file".
type quotactlErrno struct{ unix.Errno }

func (e quotactlErrno) Unwrap() error { return e.Errno }

// quotactlFailed returns the errno of a failed quota syscall in err.
func quotactlFailed(err error) (unix.Errno, bool) {
	var qe quotactlErrno
	if errors.As(err, &qe) {
		return qe.Errno, true
	}
	return 0, false
}

// mountinfoPath is a seam for tests.
var mountinfoPath = "/proc/self/mountinfo"

// blockDevice returns a path to the block device of the filesystem holding
// path: the mount source in mountinfo whose major:minor matches path's
// st_dev, or /dev/block/MAJ:MIN when the source is not that device node
// (inside a container, say).
func blockDevice(path string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return "", err
	}
	want := fmt.Sprintf("%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev))
	source, err := mountSource(want)
	if err != nil {
		return "", err
	}
	for _, dev := range []string{source, "/dev/block/" + want} {
		var dst unix.Stat_t
		if unix.Stat(dev, &dst) == nil && dst.Mode&unix.S_IFMT == unix.S_IFBLK && dst.Rdev == st.Dev {
			return dev, nil
		}
	}
	return "", fmt.Errorf("no block device node for %s (mount source %q): %w", want, source, unix.ENODEV)
}

// mountSource returns the mount source of the first mountinfo line for
// device majMin. Lines read:
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
func mountSource(majMin string) (string, error) {
	f, err := os.Open(mountinfoPath)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 || fields[2] != majMin {
			continue
		}
		for i, f := range fields {
			if f == "-" && i+2 < len(fields) {
				return unescapeMountinfo(fields[i+2]), nil
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", fmt.Errorf("device %s not in %s: %w", majMin, mountinfoPath, unix.ENODEV)
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 for a space).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
