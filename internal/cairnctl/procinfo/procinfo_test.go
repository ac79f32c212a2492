package procinfo

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestSocketOwnersFindsThisProcess(t *testing.T) {
	path := filepath.Join(t.TempDir(), "with space.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// A connected client: its accepted twin carries the same path but is
	// not the listener, and the client is this process too, so the test
	// checks that only the listener's owner is reported, once.
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	pids, err := SocketOwners("/proc", path)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(pids, []int{os.Getpid()}) {
		t.Errorf("SocketOwners = %v, want [%d]", pids, os.Getpid())
	}
}

func TestSocketOwnersNotFound(t *testing.T) {
	tests := []struct {
		name string
		make func(t *testing.T) string
	}{
		{"no such path", func(t *testing.T) string { return filepath.Join(t.TempDir(), "none.sock") }},
		{"closed listener", func(t *testing.T) string {
			path := filepath.Join(t.TempDir(), "closed.sock")
			l, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			l.(*net.UnixListener).SetUnlinkOnClose(false)
			l.Close()
			return path
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := SocketOwners("/proc", tc.make(t))
			if !errors.Is(err, ErrNotFound) {
				t.Errorf("err = %v, want ErrNotFound", err)
			}
		})
	}
}

func TestListeningInodesParsing(t *testing.T) {
	netUnix := filepath.Join(t.TempDir(), "unix")
	data := `Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 1001 /run/a.sock
0000000000000000: 00000003 00000000 00000000 0001 03 1002 /run/a.sock
0000000000000000: 00000002 00000000 00010000 0001 01 1003 /run/b c.sock
0000000000000000: 00000002 00000000 00000000 0002 01 1004
0000000000000000: 00000002 00000000 00010000 0001 01 1005 @abstract
`
	if err := os.WriteFile(netUnix, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path string
		want []string
	}{
		{"/run/a.sock", []string{"1001"}}, // not 1002: an accepted connection
		{"/run/b c.sock", []string{"1003"}},
		{"/run/none.sock", nil},
	}
	for _, tc := range tests {
		got, err := listeningInodes(netUnix, tc.path)
		if err != nil {
			t.Fatal(err)
		}
		var keys []string
		for k := range got {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		if !slices.Equal(keys, tc.want) {
			t.Errorf("listeningInodes(%q) = %v, want %v", tc.path, keys, tc.want)
		}
	}
}

func TestRSS(t *testing.T) {
	n, err := RSS("/proc", os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if n <= 0 || n%1024 != 0 {
		t.Errorf("RSS = %d, want a positive multiple of 1024", n)
	}
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "7"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "7", "status"), []byte("Name:\tkthreadd\nState:\tS\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := RSS(dir, 7); err == nil {
		t.Error("RSS of a process without VmRSS succeeded")
	}
	if _, err := RSS(dir, 8); err == nil {
		t.Error("RSS of a missing process succeeded")
	}
}
