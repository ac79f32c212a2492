//go:build linux

package loopdev

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

const (
	sysBlock = "/sys/block"
	// deletedSuffix is what d_path appends to an unlinked file's path. A
	// file whose real name ends so is reported as Deleted: the kernel gives
	// no way to tell the two apart from sysfs alone.
	deletedSuffix = " (deleted)"
)

// List returns every attached loop device (one with a backing file), in
// device number order.
func List(ctx context.Context) ([]Device, error) {
	entries, err := os.ReadDir(sysBlock)
	if err != nil {
		return nil, fmt.Errorf("loopdev: list: %w", err)
	}
	var devs []Device
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("loopdev: list: %w", err)
		}
		n, ok := loopNumber(e.Name())
		if !ok {
			continue
		}
		d, ok, err := readDevice(n)
		if err != nil {
			return nil, fmt.Errorf("loopdev: list: loop%d: %w", n, err)
		}
		if ok {
			devs = append(devs, d)
		}
	}
	slices.SortFunc(devs, func(a, b Device) int { return cmp.Compare(a.Number, b.Number) })
	return devs, nil
}

// FindByBackingFile returns the attached loop devices whose backing file is
// path, so that a retried attach can reuse a device instead of adding one.
//
// While path exists, a device matches when the file the kernel reports for
// it (sysfs backing_file, which follows renames) is the same inode as path,
// which sees through symlinks and bind mounts; a device whose backing file
// was unlinked never matches a file that exists. The kernel prints that
// path from the root of the attaching process: a device attached in another
// mount namespace (a container, perhaps gone since) reports a path relative
// to the mount it was opened through, which does not lead to the file here.
// Only for such a device, whose reported path names nothing, is the device
// itself asked for its backing file's device and inode (LOOP_GET_STATUS64).
// Once path is gone, devices match by the path string, which is how devices
// left on a deleted image are found (Deleted is set).
func FindByBackingFile(ctx context.Context, path string) ([]Device, error) {
	want, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("loopdev: find %s: %w", path, err)
	}
	// The kernel reports paths with symlinks resolved; resolve what still
	// exists of ours the same way, for the string comparison.
	wantResolved := want
	if dir, err := filepath.EvalSymlinks(filepath.Dir(want)); err == nil {
		wantResolved = filepath.Join(dir, filepath.Base(want))
	}
	var st unix.Stat_t
	haveID := unix.Stat(want, &st) == nil

	devs, err := List(ctx)
	if err != nil {
		return nil, fmt.Errorf("loopdev: find %s: %w", want, err)
	}
	// Matching never opens a loop device: an open, however brief, can make
	// another process's detach of that device fail with EBUSY.
	var found []Device
	for _, d := range devs {
		if haveID {
			// Our file exists, so a device whose backing file was
			// unlinked is not bound to it; a live one must be the same
			// inode, whatever path the kernel printed.
			if d.Deleted {
				continue
			}
			var bst unix.Stat_t
			err := unix.Stat(d.BackingFile, &bst)
			if err == nil && bst.Dev == st.Dev && bst.Ino == st.Ino {
				found = append(found, d)
			}
			if !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENOTDIR) {
				continue
			}
			// Attached through a mount this namespace does not have.
			if dev, ino, ok := BackingID(d.Path); ok && dev == uint64(st.Dev) && ino == uint64(st.Ino) {
				found = append(found, d)
			}
			continue
		}
		if d.BackingFile == want || d.BackingFile == wantResolved {
			found = append(found, d)
		}
	}
	return found, nil
}

// BackingID asks loop device devPath for the device and inode of its
// backing file, for a device whose reported path names nothing here (see
// FindByBackingFile). ok is false when it cannot say (detached meanwhile,
// or not a loop device). It opens the device, so callers use it only for
// devices they cannot match otherwise.
func BackingID(devPath string) (dev, ino uint64, ok bool) {
	fd, _, err := openLoop(devPath)
	if err != nil {
		return 0, 0, false
	}
	defer unix.Close(fd)
	info, err := unix.IoctlLoopGetStatus64(fd)
	if err != nil {
		return 0, 0, false
	}
	return info.Device, info.Inode, true
}

// readDevice reads loopN's state from sysfs; ok is false when it has no
// backing file.
func readDevice(n int) (d Device, ok bool, err error) {
	dir := sysBlockDir(n)
	path, deleted, bound, err := readBackingFile(dir)
	if err != nil || !bound {
		return Device{}, false, err
	}
	d = Device{Path: devPath(n), Number: n, BackingFile: path, Deleted: deleted}
	for _, f := range []struct {
		file string
		dst  *bool
	}{
		{"loop/dio", &d.DirectIO},
		{"loop/autoclear", &d.AutoClear},
		{"ro", &d.ReadOnly},
	} {
		v, err := readFlag(filepath.Join(dir, f.file))
		// Detached while we read: the files go (ENOENT), or a device
		// being torn down answers ENODEV or ENXIO.
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENXIO) {
			return Device{}, false, nil
		}
		if err != nil {
			return Device{}, false, err
		}
		*f.dst = v
	}
	// Missing or unreadable: the device is going away; the size is then
	// of no use to anyone, so 0 is reported rather than an error.
	if b, err := os.ReadFile(filepath.Join(dir, "queue", "logical_block_size")); err == nil {
		if bs, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32); err == nil {
			d.BlockSize = uint32(bs)
		}
	}
	return d, true, nil
}

// readBackingFile reads the backing file of the loop device whose sysfs
// directory is dir. bound is false when the device has none.
func readBackingFile(dir string) (path string, deleted, bound bool, err error) {
	b, err := os.ReadFile(filepath.Join(dir, "loop", "backing_file"))
	// The loop/ directory exists only while a file is bound; ENXIO and
	// ENODEV come from a device being torn down.
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENXIO) || errors.Is(err, unix.ENODEV) {
		return "", false, false, nil
	}
	if err != nil {
		return "", false, false, err
	}
	s := strings.TrimSuffix(string(b), "\n")
	if s == "" {
		return "", false, false, nil
	}
	if p, ok := strings.CutSuffix(s, deletedSuffix); ok {
		return p, true, true, nil
	}
	return s, false, true, nil
}

func readFlag(path string) (bool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return false, err
	}
	return strings.TrimSpace(string(b)) == "1", nil
}

// loopNumber returns N for a /sys/block entry named loopN.
func loopNumber(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, "loop")
	if !ok || rest == "" || len(rest) > 9 {
		return 0, false
	}
	n := 0
	for _, c := range rest {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

func sysBlockDir(n int) string { return fmt.Sprintf("%s/loop%d", sysBlock, n) }

// sysDevDir is the sysfs directory of the block device numbered rdev; it
// works whatever name the device node has.
func sysDevDir(rdev uint64) string {
	return fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(rdev), unix.Minor(rdev))
}
