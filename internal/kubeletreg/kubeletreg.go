// Package kubeletreg owns Cairn's side of the kubelet plugin registration
// handshake: the "<driver>-reg.sock" socket in kubelet's plugin registration
// directory, the Registration gRPC service behind it (GetInfo and
// NotifyRegistrationStatus), and keeping that socket present for as long as
// the driver runs.
//
// It is what node-driver-registrar does, built in, so that a node pod needs
// no extra sidecar: kubelet's plugin watcher notices the socket, calls
// GetInfo to learn the driver's name and its CSI endpoint (as kubelet sees
// it), then reports the outcome with NotifyRegistrationStatus. Removing the
// socket deregisters the driver.
package kubeletreg

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// Defaults for the optional Config fields.
const (
	DefaultRegistrationDir = "/var/lib/kubelet/plugins_registry"
	DefaultCheckInterval   = 5 * time.Second
)

// DefaultSupportedVersions are the CSI versions kubelet may speak to the
// driver. kubelet's CSI plugin accepts any 1.x; node-driver-registrar has
// always announced exactly this one.
var DefaultSupportedVersions = []string{"1.0.0"}

// maxSocketPath is the longest path a unix socket can be bound to on Linux
// (sizeof(sockaddr_un.sun_path) minus the terminating NUL). bind(2) fails
// with a confusing EINVAL past it, so Serve checks up front.
const maxSocketPath = 107

// Config says what to announce to kubelet and where.
type Config struct {
	// DriverName is the CSI driver name (e.g. "cairn.csi.dev"). It names the
	// socket and is what kubelet registers the driver under. Required.
	DriverName string
	// Endpoint is the CSI socket path as kubelet sees it on the host (e.g.
	// /var/lib/kubelet/plugins/cairn.csi.dev/csi.sock), which is not
	// necessarily the path the driver listens on inside its container.
	// Required, absolute.
	Endpoint string
	// RegistrationDir is kubelet's plugin registration directory as the
	// driver sees it. Default DefaultRegistrationDir.
	RegistrationDir string
	// SupportedVersions defaults to DefaultSupportedVersions.
	SupportedVersions []string
	// CheckInterval is how often Serve checks that its socket still exists.
	// Default DefaultCheckInterval.
	CheckInterval time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// SocketPath is where Serve listens: <RegistrationDir>/<DriverName>-reg.sock,
// the name node-driver-registrar uses, so switching between the built-in
// registration and the sidecar leaves no second registration behind.
func (c Config) SocketPath() string {
	dir := c.RegistrationDir
	if dir == "" {
		dir = DefaultRegistrationDir
	}
	return filepath.Join(dir, c.DriverName+"-reg.sock")
}

func (c Config) withDefaults() Config {
	if c.RegistrationDir == "" {
		c.RegistrationDir = DefaultRegistrationDir
	}
	if len(c.SupportedVersions) == 0 {
		c.SupportedVersions = DefaultSupportedVersions
	}
	if c.CheckInterval <= 0 {
		c.CheckInterval = DefaultCheckInterval
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.DriverName == "":
		return errors.New("kubeletreg: driver name is required")
	case strings.ContainsAny(c.DriverName, "/\x00"):
		return fmt.Errorf("kubeletreg: driver name %q must not contain '/' or NUL", c.DriverName)
	case c.Endpoint == "":
		return errors.New("kubeletreg: kubelet registration path (endpoint) is required")
	case !filepath.IsAbs(c.Endpoint):
		// kubelet dials exactly this string; a relative path would resolve
		// against kubelet's working directory, not the driver's.
		return fmt.Errorf("kubeletreg: kubelet registration path %q must be absolute", c.Endpoint)
	case len(c.SocketPath()) > maxSocketPath:
		return fmt.Errorf("kubeletreg: socket path %q is longer than %d bytes", c.SocketPath(), maxSocketPath)
	}
	return nil
}

// Serve announces the driver to kubelet until ctx is done. It removes a stale
// socket left by an earlier run, listens on cfg.SocketPath(), and re-creates
// the socket whenever it disappears (kubelet, or an administrator cleaning the
// registration directory, may remove it; without a socket kubelet forgets the
// driver). When ctx is done it stops the server, removes the socket and
// returns nil; it returns an error if it cannot start, or if serving fails.
func Serve(ctx context.Context, cfg Config) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	cfg = cfg.withDefaults()
	log := cfg.Logger.With("component", "kubeletreg", "socket", cfg.SocketPath())

	srv := grpc.NewServer()
	registerapi.RegisterRegistrationServer(srv, &registrationServer{cfg: cfg, log: log})

	s := &socket{path: cfg.SocketPath(), srv: srv, log: log}
	if err := s.removeStale(); err != nil {
		return err
	}
	if err := s.listen(); err != nil {
		return err
	}
	log.Info("serving kubelet plugin registration", "driver", cfg.DriverName, "endpoint", cfg.Endpoint)

	ticker := time.NewTicker(cfg.CheckInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			s.shutdown()
			log.Info("stopped kubelet plugin registration")
			return nil
		case err := <-s.errc:
			s.shutdown()
			return fmt.Errorf("kubeletreg: serving %s: %w", s.path, err)
		case <-ticker.C:
			if err := s.ensure(); err != nil {
				// A failed re-create is retried on the next tick: the
				// directory may be in the middle of being re-created.
				log.Error("re-creating registration socket", "err", err)
			}
		}
	}
}

// socket is one registration socket path and the listener currently bound to
// it. A grpc.Server can serve several listeners, so re-creating the socket
// only swaps the listener; connections kubelet already holds are unaffected.
type socket struct {
	path string
	srv  *grpc.Server
	log  *slog.Logger

	mu   sync.Mutex
	lis  *net.UnixListener
	info fs.FileInfo // the socket file as created, to tell it from a replacement
	gen  int
	errc chan error
	// warned keeps the "replaced" warning to one line per replacement
	// rather than one per check.
	warned bool
}

// removeStale removes a socket left at the path by an earlier run. It refuses
// to remove anything that is not a socket: a regular file or directory there
// is someone's mistake, and deleting it would hide it.
func (s *socket) removeStale() error {
	fi, err := os.Lstat(s.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("kubeletreg: checking %s: %w", s.path, err)
	case fi.Mode()&fs.ModeSocket == 0:
		return fmt.Errorf("kubeletreg: %s exists and is not a socket (%s)", s.path, fi.Mode().Type())
	}
	if err := os.Remove(s.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("kubeletreg: removing stale socket %s: %w", s.path, err)
	}
	s.log.Info("removed stale registration socket")
	return nil
}

// listen binds a fresh socket at the path and starts serving on it.
func (s *socket) listen() error {
	// kubelet creates the directory, but if it was wiped (see ensure) the
	// socket cannot come back until it exists again.
	if err := os.MkdirAll(filepath.Dir(s.path), 0o750); err != nil {
		return fmt.Errorf("kubeletreg: creating %s: %w", filepath.Dir(s.path), err)
	}
	lis, err := net.ListenUnix("unix", &net.UnixAddr{Name: s.path, Net: "unix"})
	if err != nil {
		return fmt.Errorf("kubeletreg: listening on %s: %w", s.path, err)
	}
	// Closing a listener normally unlinks its path. After a re-create the
	// path belongs to the new listener, so the old one must not remove it;
	// Serve removes the socket itself, once, at shutdown.
	lis.SetUnlinkOnClose(false)
	fi, err := os.Lstat(s.path)
	if err != nil {
		lis.Close()
		return fmt.Errorf("kubeletreg: checking new socket %s: %w", s.path, err)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.errc == nil {
		s.errc = make(chan error, 1)
	}
	old := s.lis
	s.lis, s.info, s.warned = lis, fi, false
	s.gen++
	gen := s.gen
	go func() {
		err := s.srv.Serve(lis)
		s.mu.Lock()
		current := gen == s.gen && s.lis != nil
		s.mu.Unlock()
		// Serve returns when its listener is closed: expected for a replaced
		// listener and at shutdown, a failure only for the current one.
		if current && err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			select {
			case s.errc <- err:
			default:
			}
		}
	}()
	if old != nil {
		old.Close()
	}
	return nil
}

// ensure re-creates the socket if it is gone. If a different file has taken
// its place, ensure leaves it alone and warns: another registrar (for example
// the node-driver-registrar sidecar enabled at the same time) owns it now, and
// taking it back would make the two fight over kubelet's registration.
func (s *socket) ensure() error {
	fi, err := os.Lstat(s.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		s.log.Warn("registration socket disappeared; re-creating it")
		return s.listen()
	case err != nil:
		return fmt.Errorf("kubeletreg: checking %s: %w", s.path, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !os.SameFile(fi, s.info) && !s.warned {
		s.warned = true
		s.log.Warn("registration socket was replaced by another file; leaving it alone")
	}
	return nil
}

// shutdown stops the server and removes the socket, but only if the file at
// the path is still the one this process created.
func (s *socket) shutdown() {
	s.mu.Lock()
	info := s.info
	s.lis = nil // marks every Serve goroutine as not current
	s.mu.Unlock()

	// Stop, not GracefulStop: registration calls are instant, and a kubelet
	// that keeps its connection open would make a graceful stop wait forever.
	s.srv.Stop()
	if fi, err := os.Lstat(s.path); err == nil && info != nil && os.SameFile(fi, info) {
		if err := os.Remove(s.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.log.Error("removing registration socket", "err", err)
		}
	}
}

// registrationServer implements kubelet's Registration service.
type registrationServer struct {
	registerapi.UnimplementedRegistrationServer
	cfg Config
	log *slog.Logger
}

// GetInfo tells kubelet what registers here: a CSI plugin, its name, and the
// CSI socket kubelet should dial for it.
func (r *registrationServer) GetInfo(ctx context.Context, _ *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	r.log.DebugContext(ctx, "kubelet asked for plugin info")
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              r.cfg.DriverName,
		Endpoint:          r.cfg.Endpoint,
		SupportedVersions: append([]string(nil), r.cfg.SupportedVersions...),
	}, nil
}

// NotifyRegistrationStatus is kubelet reporting back. A failure is logged and
// not retried here: kubelet retries registration by itself while the socket
// exists, and the usual causes (wrong endpoint, driver not yet serving) are
// fixed by configuration or time, not by this process.
func (r *registrationServer) NotifyRegistrationStatus(ctx context.Context, st *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	if st.GetPluginRegistered() {
		r.log.InfoContext(ctx, "registered with kubelet", "driver", r.cfg.DriverName)
	} else {
		r.log.ErrorContext(ctx, "kubelet failed to register plugin", "driver", r.cfg.DriverName, "err", st.GetError())
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}
