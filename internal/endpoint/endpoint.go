// Package endpoint owns the driver's listening socket: parsing a CSI
// endpoint (unix:///path or tcp://host:port), replacing a stale Unix socket
// safely, setting its mode and group, and requiring mutual TLS on TCP.
package endpoint

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"

	"github.com/cairn-csi/cairn/internal/errdefs"
)

// Endpoint is a parsed endpoint.
type Endpoint struct {
	Network string // "unix" or "tcp"
	Address string // socket path or host:port
}

// Parse parses unix:///abs/path, unix:/abs/path or tcp://host:port.
func Parse(s string) (Endpoint, error) {
	u, err := url.Parse(s)
	if err != nil {
		return Endpoint{}, fmt.Errorf("endpoint %q: %v: %w", s, err, errdefs.ErrInvalidArgument)
	}
	switch u.Scheme {
	case "unix":
		p := u.Path
		if p == "" {
			p = u.Opaque
		}
		if u.Host != "" || !filepath.IsAbs(p) {
			return Endpoint{}, fmt.Errorf("endpoint %q: want unix:///absolute/path: %w", s, errdefs.ErrInvalidArgument)
		}
		// Escapes are decoded: a %00 would cut the path the kernel binds.
		if strings.ContainsFunc(p, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return Endpoint{}, fmt.Errorf("endpoint %q: the socket path has a control character: %w", s, errdefs.ErrInvalidArgument)
		}
		return Endpoint{Network: "unix", Address: filepath.Clean(p)}, nil
	case "tcp":
		if u.Host == "" {
			return Endpoint{}, fmt.Errorf("endpoint %q: want tcp://host:port: %w", s, errdefs.ErrInvalidArgument)
		}
		return Endpoint{Network: "tcp", Address: u.Host}, nil
	}
	return Endpoint{}, fmt.Errorf("endpoint %q: scheme must be unix or tcp: %w", s, errdefs.ErrInvalidArgument)
}

// String is the endpoint in URL form.
func (e Endpoint) String() string {
	if e.Network == "unix" {
		return "unix://" + e.Address
	}
	return "tcp://" + e.Address
}

// Options control how a Unix socket is created.
type Options struct {
	// Group, if set, owns the socket, which is then mode 0660 instead of 0600.
	Group string
}

// Listen listens on a Unix endpoint. A stale socket (nothing accepting on
// it) is replaced; a live one is an error, so two drivers never share a
// socket; any other file at the path is left alone and is an error.
func Listen(e Endpoint, opts Options) (net.Listener, error) {
	if e.Network != "unix" {
		return nil, fmt.Errorf("Listen is for unix endpoints; use ListenTLS for %s: %w", e, errdefs.ErrInvalidArgument)
	}
	if err := os.MkdirAll(filepath.Dir(e.Address), 0o750); err != nil {
		return nil, err
	}
	if err := removeStale(e.Address); err != nil {
		return nil, err
	}
	// Create the socket with no permissions for others from the start:
	// chmod after bind would leave a window.
	old := unix.Umask(0o177)
	l, err := net.Listen("unix", e.Address)
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", e, err)
	}
	if opts.Group != "" {
		gid, err := lookupGroup(opts.Group)
		if err == nil {
			err = os.Chown(e.Address, -1, gid)
		}
		if err == nil {
			err = os.Chmod(e.Address, 0o660)
		}
		if err != nil {
			l.Close()
			return nil, fmt.Errorf("socket group %q: %w", opts.Group, err)
		}
	}
	return l, nil
}

func lookupGroup(g string) (int, error) {
	if gid, err := strconv.Atoi(g); err == nil {
		return gid, nil
	}
	grp, err := user.LookupGroup(g)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(grp.Gid)
}

func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket; refusing to replace it: %w", path, errdefs.ErrFailedPrecondition)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("%s is in use by a running process: %w", path, errdefs.ErrFailedPrecondition)
	}
	return os.Remove(path)
}

// TLSFiles are the PEM files for mutual TLS.
type TLSFiles struct {
	Cert, Key, ClientCA string
}

// ServerCredentials builds server credentials that require and verify a
// client certificate signed by ClientCA.
func ServerCredentials(f TLSFiles) (credentials.TransportCredentials, error) {
	if f.Cert == "" || f.Key == "" || f.ClientCA == "" {
		return nil, fmt.Errorf("a tcp:// endpoint requires --tls-cert-file, --tls-key-file and --tls-client-ca-file (mutual TLS): %w", errdefs.ErrInvalidArgument)
	}
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("server certificate: %w", err)
	}
	pem, err := os.ReadFile(f.ClientCA)
	if err != nil {
		return nil, fmt.Errorf("client CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("client CA %s has no PEM certificates: %w", f.ClientCA, errdefs.ErrInvalidArgument)
	}
	return credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	}), nil
}

// ClientCredentials builds client credentials for a mutual-TLS endpoint.
func ClientCredentials(certFile, keyFile, caFile string) (credentials.TransportCredentials, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS13}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA %s has no PEM certificates", caFile)
		}
		cfg.RootCAs = pool
	}
	return credentials.NewTLS(cfg), nil
}
