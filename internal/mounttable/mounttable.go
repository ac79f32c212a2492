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

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"
)

// DevIno names a file by device and inode.
type DevIno struct{ Dev, Ino uint64 }

// Table is one reading of /proc/self/mountinfo, indexed.
type Table struct {
	byDevIno map[DevIno][]string // (st_dev, st_ino) of the mount point
	byDev    map[uint64][]string // st_dev of a mount point that is not a device node
	byRdev   map[uint64][]string // a block device node at the mount point, or the mount's /dev/ source
}

// Read reads /proc/self/mountinfo and stats every mount point once.
func Read() (*Table, error) { return ReadFile("/proc/self/mountinfo") }

// ReadFile is Read from a mountinfo file of another process or a test.
func ReadFile(path string) (*Table, error) {
	infos, err := parse(path)
	if err != nil {
		return nil, err
	}
	t := &Table{byDevIno: map[DevIno][]string{}, byDev: map[uint64][]string{}, byRdev: map[uint64][]string{}}
	seen := map[string]bool{}
	for _, mi := range infos {
		if seen[mi.MountPoint] {
			// Stacked mounts: stat sees only the top one, as before.
			continue
		}
		seen[mi.MountPoint] = true
		var st unix.Stat_t
		if unix.Stat(mi.MountPoint, &st) == nil {
			t.byDevIno[DevIno{st.Dev, st.Ino}] = append(t.byDevIno[DevIno{st.Dev, st.Ino}], mi.MountPoint)
			if st.Mode&unix.S_IFMT == unix.S_IFBLK {
				t.byRdev[st.Rdev] = appendNew(t.byRdev[st.Rdev], mi.MountPoint)
			} else {
				t.byDev[st.Dev] = append(t.byDev[st.Dev], mi.MountPoint)
			}
		}
		// A btrfs filesystem on a loop device reports an anonymous st_dev,
		// so the device node mount(2) was given counts too.
		if strings.HasPrefix(mi.Source, "/dev/") {
			var sst unix.Stat_t
			if unix.Stat(mi.Source, &sst) == nil && sst.Mode&unix.S_IFMT == unix.S_IFBLK {
				t.byRdev[sst.Rdev] = appendNew(t.byRdev[sst.Rdev], mi.MountPoint)
			}
		}
	}
	return t, nil
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
func (t *Table) Dir(dev, ino uint64) []string { return t.byDevIno[DevIno{dev, ino}] }

// Devices returns the mount points of any of the block devices rdevs: a
// filesystem on one of them, or the device node itself bind-mounted.
func (t *Table) Devices(rdevs []uint64) []string {
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
