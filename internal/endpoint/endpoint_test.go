package endpoint

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/errdefs"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		want    Endpoint
		wantErr bool
	}{
		{in: "unix:///run/cairn/csi.sock", want: Endpoint{"unix", "/run/cairn/csi.sock"}},
		{in: "unix:/run/cairn/csi.sock", want: Endpoint{"unix", "/run/cairn/csi.sock"}},
		{in: "unix:///run//cairn/./csi.sock", want: Endpoint{"unix", "/run/cairn/csi.sock"}},
		{in: "unix:///csi.sock", want: Endpoint{"unix", "/csi.sock"}},
		{in: "tcp://127.0.0.1:10000", want: Endpoint{"tcp", "127.0.0.1:10000"}},
		{in: "tcp://[::1]:10000", want: Endpoint{"tcp", "[::1]:10000"}},
		{in: "tcp://localhost:10000", want: Endpoint{"tcp", "localhost:10000"}},
		{in: "tcp://:10000", want: Endpoint{"tcp", ":10000"}},
		{in: "", wantErr: true},
		{in: "/run/cairn/csi.sock", wantErr: true},                              // no scheme
		{in: "unix://run/cairn/csi.sock", wantErr: true},                        // "run" is a host
		{in: "unix://host/run/csi.sock", wantErr: true},                         // a host on a unix socket
		{in: "unix:relative.sock", wantErr: true},                               // relative
		{in: "unix:", wantErr: true},                                            // no path
		{in: "unix://", wantErr: true},                                          // no path
		{in: "tcp://", wantErr: true},                                           // no host
		{in: "tcp:127.0.0.1:10000", wantErr: true},                              // opaque, no host
		{in: "http://127.0.0.1:10000", wantErr: true},                           // wrong scheme
		{in: "UNIX:///run/csi.sock", want: Endpoint{"unix", "/run/csi.sock"}},   // schemes are case-insensitive
		{in: "unix:///run/csi\x00.sock", wantErr: true},                         // control character
		{in: "tcp://127.0.0.1:10000 ", wantErr: true},                           // space in host
		{in: "%zz", wantErr: true},                                              // bad escape
		{in: "unix:/%00", wantErr: true},                                        // an escaped NUL
		{in: "unix:///run/csi%00.sock", wantErr: true},                          // would bind /run/csi
		{in: "unix:///run/a%0Ab.sock", wantErr: true},                           // an escaped newline
		{in: "unix:///run/a%20b.sock", want: Endpoint{"unix", "/run/a b.sock"}}, // a space is fine
	}
	for _, tt := range tests {
		t.Run(strconv.Quote(tt.in), func(t *testing.T) {
			got, err := Parse(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("Parse(%q) = %+v, want an error", tt.in, got)
				}
				if !errors.Is(err, errdefs.ErrInvalidArgument) {
					t.Errorf("Parse(%q) err = %v, want class ErrInvalidArgument", tt.in, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("Parse(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
			// String round-trips.
			again, err := Parse(got.String())
			if err != nil || again != got {
				t.Errorf("Parse(%q.String() = %q) = %+v, %v; want %+v", tt.in, got.String(), again, err, got)
			}
		})
	}
}

// shortDir returns a directory short enough for socket paths (108 bytes).
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ep")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func accepts(path string) bool {
	c, err := net.Dial("unix", path)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func TestListenCreatesParentAndMode0600(t *testing.T) {
	path := filepath.Join(shortDir(t), "sub", "csi.sock")
	l, err := Listen(Endpoint{"unix", path}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("%s is %v, not a socket", path, fi.Mode())
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("socket mode %o, want 0600", perm)
	}
	if !accepts(path) {
		t.Error("the socket does not accept connections")
	}
}

// TestListenUmaskRestored: Listen narrows the umask only around bind.
func TestListenUmaskRestored(t *testing.T) {
	old := unix.Umask(0o022)
	defer unix.Umask(old)
	l, err := Listen(Endpoint{"unix", filepath.Join(shortDir(t), "csi.sock")}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if now := unix.Umask(0o022); now != 0o022 {
		t.Errorf("umask after Listen = %o, want it restored to 022", now)
	}
}

func TestListenGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown of the socket to another group needs root")
	}
	for _, group := range []string{"4242", "nogroup", "daemon"} {
		t.Run(group, func(t *testing.T) {
			wantGID, err := lookupGroup(group)
			if err != nil {
				t.Skipf("group %s does not exist on this machine: %v", group, err)
			}
			path := filepath.Join(shortDir(t), "csi.sock")
			l, err := Listen(Endpoint{"unix", path}, Options{Group: group})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			var st unix.Stat_t
			if err := unix.Lstat(path, &st); err != nil {
				t.Fatal(err)
			}
			if perm := st.Mode & 0o777; perm != 0o660 {
				t.Errorf("socket mode %o, want 0660", perm)
			}
			if int(st.Gid) != wantGID {
				t.Errorf("socket group %d, want %d", st.Gid, wantGID)
			}
		})
	}
}

func TestListenUnknownGroup(t *testing.T) {
	path := filepath.Join(shortDir(t), "csi.sock")
	_, err := Listen(Endpoint{"unix", path}, Options{Group: "no-such-group-cairn"})
	if err == nil {
		t.Fatal("Listen with an unknown group succeeded")
	}
	// No listener is left behind: the socket does not accept.
	if accepts(path) {
		t.Error("a socket accepts connections after Listen failed")
	}
}

func TestListenReplacesStaleSocket(t *testing.T) {
	path := filepath.Join(shortDir(t), "csi.sock")
	// A socket file with nobody accepting: what a killed driver leaves.
	old, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	old.SetUnlinkOnClose(false)
	old.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("the stale socket is not there: %v", err)
	}
	l, err := Listen(Endpoint{"unix", path}, Options{})
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	defer l.Close()
	if !accepts(path) {
		t.Error("the new socket does not accept")
	}
}

func TestListenRefusesLiveSocket(t *testing.T) {
	path := filepath.Join(shortDir(t), "csi.sock")
	live, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	_, err = Listen(Endpoint{"unix", path}, Options{})
	if !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("Listen over a live socket: err = %v, want ErrFailedPrecondition", err)
	}
	if !accepts(path) {
		t.Error("the live socket was disturbed")
	}
}

func TestListenRefusesOtherFiles(t *testing.T) {
	tests := []struct {
		name string
		make func(path string) error
	}{
		{"regular file", func(p string) error { return os.WriteFile(p, []byte("precious"), 0o600) }},
		{"directory", func(p string) error { return os.Mkdir(p, 0o700) }},
		{"symlink", func(p string) error { return os.Symlink("/etc/hostname", p) }},
		{"dangling symlink", func(p string) error { return os.Symlink("/nonexistent/cairn", p) }},
		{"fifo", func(p string) error { return unix.Mkfifo(p, 0o600) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(shortDir(t), "csi.sock")
			if err := tt.make(path); err != nil {
				t.Fatal(err)
			}
			before, _ := os.Lstat(path)
			_, err := Listen(Endpoint{"unix", path}, Options{})
			if !errors.Is(err, errdefs.ErrFailedPrecondition) {
				t.Fatalf("err = %v, want ErrFailedPrecondition", err)
			}
			after, err := os.Lstat(path)
			if err != nil || after.Mode() != before.Mode() || !os.SameFile(before, after) {
				t.Errorf("the %s at the socket path was replaced or removed", tt.name)
			}
		})
	}
}

func TestListenRefusesTCP(t *testing.T) {
	_, err := Listen(Endpoint{"tcp", "127.0.0.1:0"}, Options{})
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("Listen(tcp) err = %v, want ErrInvalidArgument", err)
	}
}

func TestServerCredentialsRequiresAllFiles(t *testing.T) {
	tests := []TLSFiles{
		{},
		{Cert: "/c"},
		{Cert: "/c", Key: "/k"},
		{Key: "/k", ClientCA: "/ca"},
		{Cert: "/c", ClientCA: "/ca"},
	}
	for _, f := range tests {
		if _, err := ServerCredentials(f); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("ServerCredentials(%+v) err = %v, want ErrInvalidArgument", f, err)
		}
	}
}

func TestServerCredentialsBadFiles(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.pem")
	os.WriteFile(junk, []byte("not pem"), 0o600)
	if _, err := ServerCredentials(TLSFiles{Cert: junk, Key: junk, ClientCA: junk}); err == nil {
		t.Error("ServerCredentials accepted a certificate that is not PEM")
	}
	if _, err := ServerCredentials(TLSFiles{Cert: filepath.Join(dir, "missing"), Key: junk, ClientCA: junk}); err == nil {
		t.Error("ServerCredentials accepted a missing certificate file")
	}
}
