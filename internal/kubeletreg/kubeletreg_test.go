package kubeletreg

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// syncBuffer is a bytes.Buffer safe for the logger (written from gRPC
// handler goroutines) and the test (reading) at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// shortTempDir returns a temporary directory with a short path: t.TempDir
// embeds the test name, and unix socket paths are limited to 107 bytes.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "kreg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// started is a Serve call running in the background.
type started struct {
	cfg    Config
	logs   *syncBuffer
	cancel context.CancelFunc
	done   chan error
}

func start(t *testing.T, cfg Config) *started {
	t.Helper()
	logs := &syncBuffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	s := &started{cfg: cfg, logs: logs, cancel: cancel, done: make(chan error, 1)}
	go func() { s.done <- Serve(ctx, cfg) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-s.done:
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after cancel")
		}
	})
	// Wait for a socket that accepts connections: a stale one left at the
	// path (see TestServeStartup) exists before Serve has replaced it.
	waitFor(t, "socket to accept connections", func() bool { return accepts(cfg.SocketPath()) })
	return s
}

func accepts(path string) bool {
	c, err := net.Dial("unix", path)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// stop cancels Serve and returns its result.
func (s *started) stop(t *testing.T) error {
	t.Helper()
	s.cancel()
	select {
	case err := <-s.done:
		s.done <- err // for the cleanup in start
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after cancel")
		return nil
	}
}

func isSocket(path string) bool {
	fi, err := os.Lstat(path)
	return err == nil && fi.Mode()&fs.ModeSocket != 0
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// dial connects to the registration socket the way kubelet does.
func dial(t *testing.T, path string) registerapi.RegistrationClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	t.Cleanup(func() { conn.Close() })
	return registerapi.NewRegistrationClient(conn)
}

func callCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestServeGetInfo(t *testing.T) {
	tests := []struct {
		name         string
		versions     []string
		wantVersions []string
	}{
		{name: "default versions", wantVersions: []string{"1.0.0"}},
		{name: "explicit versions", versions: []string{"1.0.0", "1.1.0"}, wantVersions: []string{"1.0.0", "1.1.0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := shortTempDir(t)
			cfg := Config{
				DriverName:        "cairn.csi.dev",
				Endpoint:          "/var/lib/kubelet/plugins/cairn.csi.dev/csi.sock",
				RegistrationDir:   dir,
				SupportedVersions: tt.versions,
			}
			start(t, cfg)
			if got, want := cfg.SocketPath(), filepath.Join(dir, "cairn.csi.dev-reg.sock"); got != want {
				t.Fatalf("SocketPath() = %q, want %q", got, want)
			}

			info, err := dial(t, cfg.SocketPath()).GetInfo(callCtx(t), &registerapi.InfoRequest{})
			if err != nil {
				t.Fatalf("GetInfo: %v", err)
			}
			if info.GetType() != registerapi.CSIPlugin {
				t.Errorf("Type = %q, want %q", info.GetType(), registerapi.CSIPlugin)
			}
			if info.GetName() != cfg.DriverName {
				t.Errorf("Name = %q, want %q", info.GetName(), cfg.DriverName)
			}
			if info.GetEndpoint() != cfg.Endpoint {
				t.Errorf("Endpoint = %q, want %q", info.GetEndpoint(), cfg.Endpoint)
			}
			if !slices.Equal(info.GetSupportedVersions(), tt.wantVersions) {
				t.Errorf("SupportedVersions = %q, want %q", info.GetSupportedVersions(), tt.wantVersions)
			}
		})
	}
}

func TestServeNotifyRegistrationStatus(t *testing.T) {
	tests := []struct {
		name     string
		status   *registerapi.RegistrationStatus
		wantLogs []string
	}{
		{
			name:     "registered",
			status:   &registerapi.RegistrationStatus{PluginRegistered: true},
			wantLogs: []string{"level=INFO", "registered with kubelet"},
		},
		{
			name:     "rejected",
			status:   &registerapi.RegistrationStatus{PluginRegistered: false, Error: "version 9.9.9 not supported"},
			wantLogs: []string{"level=ERROR", "kubelet failed to register plugin", "version 9.9.9 not supported"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := start(t, Config{
				DriverName:      "cairn.csi.dev",
				Endpoint:        "/var/lib/kubelet/plugins/cairn.csi.dev/csi.sock",
				RegistrationDir: shortTempDir(t),
			})
			if _, err := dial(t, s.cfg.SocketPath()).NotifyRegistrationStatus(callCtx(t), tt.status); err != nil {
				t.Fatalf("NotifyRegistrationStatus: %v", err)
			}
			logs := s.logs.String()
			for _, want := range tt.wantLogs {
				if !strings.Contains(logs, want) {
					t.Errorf("logs lack %q:\n%s", want, logs)
				}
			}
		})
	}
}

func TestServeCancelRemovesSocket(t *testing.T) {
	s := start(t, Config{
		DriverName:      "cairn.csi.dev",
		Endpoint:        "/var/lib/kubelet/plugins/cairn.csi.dev/csi.sock",
		RegistrationDir: shortTempDir(t),
	})
	// A live connection must not keep Serve from returning.
	if _, err := dial(t, s.cfg.SocketPath()).GetInfo(callCtx(t), &registerapi.InfoRequest{}); err != nil {
		t.Fatalf("GetInfo: %v", err)
	}
	if err := s.stop(t); err != nil {
		t.Fatalf("Serve returned %v after cancel, want nil", err)
	}
	if _, err := os.Lstat(s.cfg.SocketPath()); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("socket still present after cancel (Lstat err = %v)", err)
	}
}

func TestServeRecreatesRemovedSocket(t *testing.T) {
	tests := []struct {
		name   string
		remove func(t *testing.T, cfg Config)
	}{
		{
			name: "socket removed",
			remove: func(t *testing.T, cfg Config) {
				if err := os.Remove(cfg.SocketPath()); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "directory wiped",
			remove: func(t *testing.T, cfg Config) {
				if err := os.RemoveAll(cfg.RegistrationDir); err != nil {
					t.Fatal(err)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := start(t, Config{
				DriverName:      "cairn.csi.dev",
				Endpoint:        "/var/lib/kubelet/plugins/cairn.csi.dev/csi.sock",
				RegistrationDir: filepath.Join(shortTempDir(t), "reg"),
				CheckInterval:   20 * time.Millisecond,
			})
			tt.remove(t, s.cfg)
			waitFor(t, "socket to be re-created", func() bool { return isSocket(s.cfg.SocketPath()) })

			// The new socket must answer, as kubelet re-registers through it.
			info, err := dial(t, s.cfg.SocketPath()).GetInfo(callCtx(t), &registerapi.InfoRequest{})
			if err != nil {
				t.Fatalf("GetInfo on re-created socket: %v", err)
			}
			if info.GetName() != "cairn.csi.dev" {
				t.Errorf("Name = %q", info.GetName())
			}
			if err := s.stop(t); err != nil {
				t.Fatalf("Serve: %v", err)
			}
			if isSocket(s.cfg.SocketPath()) {
				t.Fatal("re-created socket left behind after cancel")
			}
		})
	}
}

func TestServeLeavesReplacedSocketAlone(t *testing.T) {
	s := start(t, Config{
		DriverName:      "cairn.csi.dev",
		Endpoint:        "/var/lib/kubelet/plugins/cairn.csi.dev/csi.sock",
		RegistrationDir: shortTempDir(t),
		CheckInterval:   20 * time.Millisecond,
	})
	// Another registrar takes the path over.
	if err := os.Remove(s.cfg.SocketPath()); err != nil {
		t.Fatal(err)
	}
	other, err := net.ListenUnix("unix", &net.UnixAddr{Name: s.cfg.SocketPath(), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()

	waitFor(t, "replacement warning", func() bool { return strings.Contains(s.logs.String(), "replaced by another file") })
	if err := s.stop(t); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if !isSocket(s.cfg.SocketPath()) {
		t.Fatal("Serve removed a socket it did not own")
	}
}

func TestServeStartup(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, path string) // what is at the socket path before Serve
		wantErr string                          // "" means Serve starts
	}{
		{name: "nothing there", prepare: func(*testing.T, string) {}},
		{
			name: "stale socket",
			prepare: func(t *testing.T, path string) {
				l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
				if err != nil {
					t.Fatal(err)
				}
				l.SetUnlinkOnClose(false) // leave the file behind, as a crash would
				l.Close()
			},
		},
		{
			name: "regular file",
			prepare: func(t *testing.T, path string) {
				if err := os.WriteFile(path, []byte("not a socket"), 0o600); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: "is not a socket",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{
				DriverName:      "cairn.csi.dev",
				Endpoint:        "/var/lib/kubelet/plugins/cairn.csi.dev/csi.sock",
				RegistrationDir: shortTempDir(t),
			}
			tt.prepare(t, cfg.SocketPath())
			if tt.wantErr == "" {
				s := start(t, cfg)
				if _, err := dial(t, cfg.SocketPath()).GetInfo(callCtx(t), &registerapi.InfoRequest{}); err != nil {
					t.Fatalf("GetInfo: %v", err)
				}
				if err := s.stop(t); err != nil {
					t.Fatalf("Serve: %v", err)
				}
				return
			}
			err := Serve(context.Background(), cfg)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Serve() = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestServeInvalidConfig(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{name: "no driver name", cfg: Config{Endpoint: "/x/csi.sock"}, wantErr: "driver name is required"},
		{name: "slash in driver name", cfg: Config{DriverName: "a/b", Endpoint: "/x/csi.sock"}, wantErr: "must not contain"},
		{name: "no endpoint", cfg: Config{DriverName: "cairn.csi.dev"}, wantErr: "registration path (endpoint) is required"},
		{name: "relative endpoint", cfg: Config{DriverName: "cairn.csi.dev", Endpoint: "csi.sock"}, wantErr: "must be absolute"},
		{
			name:    "socket path too long",
			cfg:     Config{DriverName: strings.Repeat("d", 120), Endpoint: "/x/csi.sock", RegistrationDir: "/tmp"},
			wantErr: "longer than",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Serve(context.Background(), tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Serve() = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}
