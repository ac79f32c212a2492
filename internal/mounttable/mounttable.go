// Package mounttable reads the mount table once and indexes it by what a
// mount is, not by its path: the device and inode its mount point shows
// (a directory bind mount), the device number of the filesystem mounted
// there (a loop device's filesystem), and the device node mounted or
// bind-mounted there. A listing of N volumes asks the index N times
// instead of reading and stat'ing the whole table N times, which made
// ListVolumes quadratic.
//
// A Table is a snapshot: it is right for the moment it was read, which is
// all a listing or a health report can promise anyway.
package mounttable

import (
	"strings"
	"sync"

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"
)

// DevIno names a file by device and inode.
type DevIno struct{ Dev, Ino uint64 }

// Table is one reading of /proc/self/mountinfo, indexed.
//
// Reading parses the table and indexes it by each mount's root name (the
// last element of the directory the mount shows), which costs no system
// call per mount. The device and inode indexes stat every mount point, so
// they are built on the first Dir or Devices call only: a listing of
// directory volumes asks RootNamed for each volume and stats only the
// few mounts whose root carries a volume's name.
type Table struct {
	mounts []entry
	byName map[string][]int // last element of the mount's root -> mounts

	once     sync.Once
	byDevIno map[DevIno][]string // (st_dev, st_ino) of the mount point
	byDev    map[uint64][]string // st_dev of a mount point that is not a device node
	byRdev   map[uint64][]string // a block device node at the mount point, or the mount's /dev/ source
}

type entry struct {
	mountPoint, source string
	stated             bool
	st                 unix.Stat_t
	statErr            error
}

// Read reads /proc/self/mountinfo. It stats nothing yet.
func Read() (*Table, error) { return ReadFile("/proc/self/mountinfo") }

// ReadFile is Read from a mountinfo file of another process or a test.
func ReadFile(path string) (*Table, error) {
	infos, err := mount.ParseMountInfo(path)
	if err != nil {
		return nil, err
	}
	return FromInfos(infos), nil
}

// FromInfos indexes a mount table already parsed by mount-utils (escaped
// as the kernel writes it), such as an injected one; infos is not changed.
func FromInfos(infos []mount.MountInfo) *Table {
	t := &Table{byName: map[string][]int{}}
	seen := map[string]bool{}
	for _, mi := range infos {
		mp := Unescape(mi.MountPoint)
		if seen[mp] {
			// Stacked mounts: stat sees only the top one, as before.
			continue
		}
		seen[mp] = true
		t.mounts = append(t.mounts, entry{mountPoint: mp, source: Unescape(mi.Source)})
		if name := rootName(Unescape(mi.Root)); name != "" {
			t.byName[name] = append(t.byName[name], len(t.mounts)-1)
		}
	}
	return t
}

// rootName is the last element of a mount's root ("/a/vol-1" -> "vol-1").
// A root whose directory was deleted ("/a/vol-1//deleted") names nothing:
// it shows no live directory.
func rootName(root string) string {
	if strings.HasSuffix(root, "//deleted") {
		return ""
	}
	root = strings.TrimRight(root, "/")
	if i := strings.LastIndexByte(root, '/'); i >= 0 {
		root = root[i+1:]
	}
	return root
}

func (t *Table) stat(i int) (*unix.Stat_t, error) {
	e := &t.mounts[i]
	if !e.stated {
		e.stated, e.statErr = true, unix.Stat(e.mountPoint, &e.st)
	}
	return &e.st, e.statErr
}

// index builds the device and inode indexes, stat'ing every mount point
// once.
func (t *Table) index() {
	t.once.Do(func() {
		t.byDevIno, t.byDev, t.byRdev = map[DevIno][]string{}, map[uint64][]string{}, map[uint64][]string{}
		for i := range t.mounts {
			mp, src := t.mounts[i].mountPoint, t.mounts[i].source
			if st, err := t.stat(i); err == nil {
				t.byDevIno[DevIno{st.Dev, st.Ino}] = append(t.byDevIno[DevIno{st.Dev, st.Ino}], mp)
				if st.Mode&unix.S_IFMT == unix.S_IFBLK {
					t.byRdev[st.Rdev] = appendNew(t.byRdev[st.Rdev], mp)
				} else {
					t.byDev[st.Dev] = append(t.byDev[st.Dev], mp)
				}
			}
			// A btrfs filesystem on a loop device reports an anonymous
			// st_dev, so the device node mount(2) was given counts too.
			if strings.HasPrefix(src, "/dev/") {
				var sst unix.Stat_t
				if unix.Stat(src, &sst) == nil && sst.Mode&unix.S_IFMT == unix.S_IFBLK {
					t.byRdev[sst.Rdev] = appendNew(t.byRdev[sst.Rdev], mp)
				}
			}
		}
	})
}

// RootNamed reports whether any mount shows a directory named name: the
// only mounts that can be bind mounts of a directory of that name. It is
// a filter, not an answer; DirNamed decides by device and inode.
func (t *Table) RootNamed(name string) bool { return len(t.byName[name]) > 0 }

// DirNamed is Dir among the mounts whose root is named name, stat'ing
// only those: the bind mounts of the directory (dev, ino) called name.
func (t *Table) DirNamed(name string, dev, ino uint64) []string {
	var out []string
	for _, i := range t.byName[name] {
		if st, err := t.stat(i); err == nil && st.Dev == dev && st.Ino == ino {
			out = append(out, t.mounts[i].mountPoint)
		}
	}
	return out
}

// parse reads a mountinfo file with mount-utils' parser, with the mount
// points and sources unescaped.
func parse(path string) ([]mount.MountInfo, error) {
	infos, err := mount.ParseMountInfo(path)
	if err != nil {
		return nil, err
	}
	for i := range infos {
		infos[i].MountPoint, infos[i].Source = Unescape(infos[i].MountPoint), Unescape(infos[i].Source)
	}
	return infos, nil
}

// MountPoints returns the mount points of the mountinfo file at path
// (/proc/self/mountinfo for this process), unescaped, in the file's order,
// without stat'ing any of them.
func MountPoints(path string) ([]string, error) {
	infos, err := parse(path)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(infos))
	for _, mi := range infos {
		out = append(out, mi.MountPoint)
	}
	return out, nil
}

func appendNew(s []string, v string) []string {
	for _, x := range s {
		if x == v {
			return s
		}
	}
	return append(s, v)
}

// Dir returns the mount points showing the directory (dev, ino): its bind
// mounts.
func (t *Table) Dir(dev, ino uint64) []string {
	t.index()
	return t.byDevIno[DevIno{dev, ino}]
}

// Devices returns the mount points of any of the block devices rdevs: a
// filesystem on one of them, or the device node itself bind-mounted.
func (t *Table) Devices(rdevs []uint64) []string {
	t.index()
	var out []string
	for _, r := range rdevs {
		for _, mp := range t.byRdev[r] {
			out = appendNew(out, mp)
		}
		for _, mp := range t.byDev[r] {
			out = appendNew(out, mp)
		}
	}
	return out
}

// Unescape undoes mountinfo's octal escapes (\040 for a space), which
// mount-utils leaves in place.
func Unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			v, ok := byte(0), true
			for _, c := range s[i+1 : i+4] {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + byte(c-'0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
