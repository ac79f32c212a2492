// Package procinfo owns the /proc lookups cairnctl bench needs about the
// driver it measures: which process listens on a Unix socket, and that
// process's resident memory. It reads /proc only; it never signals or
// otherwise touches the processes it finds.
package procinfo

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// soAcceptCon is __SO_ACCEPTCON in /proc/net/unix's Flags column: the
// socket is listening. Accepted connections carry the listener's path too,
// so the flag is what tells the listener apart.
const soAcceptCon = 0x10000

// ErrNotFound means no process was found listening on the socket.
var ErrNotFound = errors.New("no process found")

// SocketOwners returns the IDs of the processes that hold the listening
// Unix socket bound at path, lowest first. It sees only sockets in this
// network namespace and processes whose file descriptors it may read
// (all of them as root).
func SocketOwners(procRoot, path string) ([]int, error) {
	path = filepath.Clean(path)
	inodes, err := listeningInodes(filepath.Join(procRoot, "net", "unix"), path)
	if err != nil {
		return nil, err
	}
	if len(inodes) == 0 {
		return nil, fmt.Errorf("no listening socket at %s in %s/net/unix: %w", path, procRoot, ErrNotFound)
	}
	procs, err := os.ReadDir(procRoot)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		if holdsAny(filepath.Join(procRoot, p.Name(), "fd"), inodes) {
			pids = append(pids, pid)
		}
	}
	if len(pids) == 0 {
		return nil, fmt.Errorf("no readable process holds the socket at %s (not root?): %w", path, ErrNotFound)
	}
	sort.Ints(pids)
	return pids, nil
}

// listeningInodes parses /proc/net/unix:
//
//	Num       RefCount Protocol Flags    Type St Inode Path
//	0000...:  00000002 00000000 00010000 0001 01 23456 /run/cairn/csi.sock
func listeningInodes(netUnix, path string) (map[string]bool, error) {
	f, err := os.Open(netUnix)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]bool{}
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 8 {
			continue // unbound sockets have no path
		}
		flags, err := strconv.ParseUint(fields[3], 16, 32)
		if err != nil || flags&soAcceptCon == 0 {
			continue
		}
		// A path may contain spaces: it is everything after the inode.
		if strings.Join(fields[7:], " ") == path {
			out[fields[6]] = true
		}
	}
	return out, sc.Err()
}

func holdsAny(fdDir string, inodes map[string]bool) bool {
	fds, err := os.ReadDir(fdDir)
	if err != nil {
		return false // gone, or not ours to read
	}
	for _, fd := range fds {
		link, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
		if err != nil {
			continue
		}
		if ino, ok := strings.CutPrefix(link, "socket:["); ok && inodes[strings.TrimSuffix(ino, "]")] {
			return true
		}
	}
	return false
}

// RSS returns a process's resident set size in bytes (VmRSS).
func RSS(procRoot string, pid int) (int64, error) {
	f, err := os.Open(filepath.Join(procRoot, strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:")
		if !ok {
			continue
		}
		fields := strings.Fields(rest) // "12345 kB"
		if len(fields) != 2 || fields[1] != "kB" {
			return 0, fmt.Errorf("pid %d: unexpected VmRSS line %q", pid, sc.Text())
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("pid %d: VmRSS: %w", pid, err)
		}
		return kb << 10, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("pid %d has no VmRSS (a kernel thread or a zombie)", pid)
}
