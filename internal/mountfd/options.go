package mountfd

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/errdefs"
)

// Attrs are the per-mount flags (the same for a bind mount and for the
// filesystem mount it came from).
type Attrs struct {
	ReadOnly, NoSuid, NoDev, NoExec, NoDiratime, NoSymfollow bool
	Atime                                                    string // "", "relatime", "noatime" or "strictatime"
	Sync, DirSync, LazyTime                                  bool   // filesystem mounts only
}

func (a Attrs) set() uint64 {
	var v uint64
	for _, f := range []struct {
		on  bool
		bit uint64
	}{
		{a.ReadOnly, unix.MOUNT_ATTR_RDONLY}, {a.NoSuid, unix.MOUNT_ATTR_NOSUID}, {a.NoDev, unix.MOUNT_ATTR_NODEV},
		{a.NoExec, unix.MOUNT_ATTR_NOEXEC}, {a.NoDiratime, unix.MOUNT_ATTR_NODIRATIME}, {a.NoSymfollow, unix.MOUNT_ATTR_NOSYMFOLLOW},
	} {
		if f.on {
			v |= f.bit
		}
	}
	switch a.Atime {
	case "noatime":
		v |= unix.MOUNT_ATTR_NOATIME
	case "strictatime":
		v |= unix.MOUNT_ATTR_STRICTATIME
	case "relatime":
		v |= unix.MOUNT_ATTR_RELATIME
	}
	return v
}

// clear is what set needs cleared: the atime mode is one field.
func (a Attrs) clear() uint64 {
	if a.Atime != "" {
		return unix.MOUNT_ATTR__ATIME
	}
	return 0
}

func (a Attrs) msFlags() uintptr {
	var v uintptr
	for _, f := range []struct {
		on  bool
		bit uintptr
	}{
		{a.ReadOnly, unix.MS_RDONLY}, {a.NoSuid, unix.MS_NOSUID}, {a.NoDev, unix.MS_NODEV}, {a.NoExec, unix.MS_NOEXEC},
		{a.NoDiratime, unix.MS_NODIRATIME}, {a.NoSymfollow, unix.MS_NOSYMFOLLOW},
		{a.Sync, unix.MS_SYNCHRONOUS}, {a.DirSync, unix.MS_DIRSYNC}, {a.LazyTime, unix.MS_LAZYTIME},
		{a.Atime == "noatime", unix.MS_NOATIME}, {a.Atime == "strictatime", unix.MS_STRICTATIME}, {a.Atime == "relatime", unix.MS_RELATIME},
	} {
		if f.on {
			v |= f.bit
		}
	}
	return v
}

// vfsOption applies a per-mount option to a, reporting whether opt is one.
func (a *Attrs) vfsOption(opt string) bool {
	switch opt {
	case "ro":
		a.ReadOnly = true
	case "rw", "defaults", "suid", "dev", "exec", "diratime", "symfollow", "async", "nolazytime":
		// The kernel's defaults: nothing to set.
	case "nosuid":
		a.NoSuid = true
	case "nodev":
		a.NoDev = true
	case "noexec":
		a.NoExec = true
	case "nodiratime":
		a.NoDiratime = true
	case "nosymfollow":
		a.NoSymfollow = true
	case "noatime", "relatime", "strictatime":
		a.Atime = opt
	case "sync":
		a.Sync = true
	case "dirsync":
		a.DirSync = true
	case "lazytime":
		a.LazyTime = true
	default:
		return false
	}
	return true
}

// fsOptions are the filesystem options a caller may set, per filesystem:
// each maps an option name to a check of its value ("" for a flag with no
// value). Anything that names a device, a file or a path (ext4 journal_path
// and journal_dev, xfs logdev and rtdev, btrfs device and subvol) is absent
// on purpose: it would let a caller reach the host's disks. So is every
// option that turns an error into a node crash (errors=panic).
var fsOptions = map[string]map[string]func(string) bool{
	"ext4": {
		"discard": flag, "nodiscard": flag, "barrier": flag, "nobarrier": flag, "commit": uintIn(0, 300),
		"data": oneOf("ordered", "writeback", "journal"), "errors": oneOf("remount-ro", "continue"),
		"noauto_da_alloc": flag, "auto_da_alloc": flag, "dioread_nolock": flag, "dioread_lock": flag,
		"delalloc": flag, "nodelalloc": flag, "user_xattr": flag, "acl": flag, "noacl": flag,
		"inode_readahead_blks": uintIn(0, 1<<30), "init_itable": uintIn(0, 1000), "noinit_itable": flag,
		"max_batch_time": uintIn(0, 1<<30), "min_batch_time": uintIn(0, 1<<30), "stripe": uintIn(0, 1<<30),
		"journal_checksum": flag, "nojournal_checksum": flag, "prjquota": flag, "usrquota": flag, "grpquota": flag,
	},
	"xfs": {
		"discard": flag, "nodiscard": flag, "nouuid": flag, "noquota": flag, "prjquota": flag, "pquota": flag,
		"uquota": flag, "usrquota": flag, "gquota": flag, "grpquota": flag, "allocsize": size, "largeio": flag,
		"nolargeio": flag, "inode64": flag, "inode32": flag, "logbufs": uintIn(2, 8), "logbsize": size,
		"wsync": flag, "swalloc": flag, "attr2": flag, "noattr2": flag, "filestreams": flag,
	},
	"btrfs": {
		"discard": oneOf("", "sync", "async"), "nodiscard": flag, "compress": compress, "compress-force": compress,
		"autodefrag": flag, "noautodefrag": flag, "ssd": flag, "nossd": flag, "ssd_spread": flag, "commit": uintIn(0, 300),
		"space_cache": oneOf("", "v1", "v2"), "nospace_cache": flag, "datacow": flag, "nodatacow": flag,
		"datasum": flag, "nodatasum": flag, "flushoncommit": flag, "noflushoncommit": flag,
	},
}

func flag(v string) bool { return v == "" }

func oneOf(vals ...string) func(string) bool {
	return func(v string) bool {
		for _, x := range vals {
			if v == x {
				return true
			}
		}
		return false
	}
}

func uintIn(lo, hi uint64) func(string) bool {
	return func(v string) bool {
		n, err := strconv.ParseUint(v, 10, 64)
		return err == nil && n >= lo && n <= hi
	}
}

// size is a byte count with an optional k, m or g suffix.
func size(v string) bool {
	v = strings.TrimRight(strings.ToLower(v), "kmg")
	_, err := strconv.ParseUint(v, 10, 64)
	return err == nil && v != ""
}

func compress(v string) bool {
	alg, level, _ := strings.Cut(v, ":")
	if level != "" && !uintIn(1, 22)(level) {
		return false
	}
	return oneOf("", "zlib", "lzo", "zstd", "no", "none")(alg)
}

// ParseOptions splits mount flags (each one option, as CSI's mount_flags
// are) into per-mount attributes and the filesystem options for fstype.
// fstype "" means a bind mount, which takes per-mount attributes only. An
// option on no list is refused with errdefs.ErrInvalidArgument naming it.
func ParseOptions(fstype string, flags []string) (Attrs, []string, error) {
	var a Attrs
	var fsOpts []string
	allowed := fsOptions[fstype]
	for _, f := range flags {
		if a.vfsOption(f) {
			continue
		}
		name, val, hasVal := strings.Cut(f, "=")
		check, ok := allowed[name]
		if !ok {
			if fstype == "" {
				return a, nil, fmt.Errorf("mount flag %q is not a per-mount option (ro, nosuid, nodev, noexec, noatime, relatime, …) and a directory volume has no filesystem of its own to pass it to: %w", truncate(f), errdefs.ErrInvalidArgument)
			}
			return a, nil, fmt.Errorf("mount flag %q is not allowed for %s: %w", truncate(f), fstype, errdefs.ErrInvalidArgument)
		}
		if (hasVal && val == "") || !check(val) {
			return a, nil, fmt.Errorf("mount flag %q has a value %s does not accept here: %w", truncate(f), fstype, errdefs.ErrInvalidArgument)
		}
		fsOpts = append(fsOpts, f)
	}
	return a, fsOpts, nil
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
