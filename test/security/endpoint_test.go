package security

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	mount "k8s.io/mount-utils"

	"github.com/cairn-csi/cairn/internal/testdriver"
)

// unmountUnder removes every mount below dir, deepest first.
func unmountUnder(dir string) {
	infos, _ := mount.ParseMountInfo("/proc/self/mountinfo")
	var mps []string
	for _, mi := range infos {
		if strings.HasPrefix(mi.MountPoint, dir+"/") {
			mps = append(mps, mi.MountPoint)
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(mps)))
	for _, mp := range mps {
		unix.Unmount(mp, unix.MNT_DETACH)
	}
}

func TestSocketMode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the socket's group is set with chown")
	}
	tests := []struct {
		name     string
		extra    []string
		wantPerm os.FileMode
		wantGID  int
	}{
		{"default is owner only", nil, 0o600, 0},
		{"socket group gives the group access", []string{"--socket-group", "4242"}, 0o660, 4242},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := shortTemp(t, "sock-")
			p := testdriver.Start(t, testdriver.Options{
				DataDir: filepath.Join(dir, "data"),
				Pools:   []string{"default=dir:" + filepath.Join(dir, "pool")},
				Extra:   tt.extra,
			})
			var st unix.Stat_t
			if err := unix.Lstat(p.Socket, &st); err != nil {
				t.Fatal(err)
			}
			if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
				t.Fatalf("%s is not a socket (mode %o)", p.Socket, st.Mode)
			}
			if perm := os.FileMode(st.Mode & 0o777); perm != tt.wantPerm {
				t.Errorf("socket mode %o, want %o", perm, tt.wantPerm)
			}
			if st.Uid != 0 || int(st.Gid) != tt.wantGID {
				t.Errorf("socket owned by %d:%d, want 0:%d", st.Uid, st.Gid, tt.wantGID)
			}
		})
	}
}

// pki is a CA and the certificates it issued, as PEM files.
type pki struct {
	dir    string
	ca     *x509.Certificate
	key    *ecdsa.PrivateKey
	serial int64
}

func newPKI(t *testing.T, dir, name string) *pki {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	p := &pki{dir: dir, ca: ca, key: key, serial: 1}
	writePEM(t, filepath.Join(dir, name+"-ca.pem"), "CERTIFICATE", der)
	return p
}

func (p *pki) caFile(t *testing.T) string {
	return filepath.Join(p.dir, p.ca.Subject.CommonName+"-ca.pem")
}

// issue makes a leaf certificate and key files for name.
func (p *pki) issue(t *testing.T, name string, usage x509.ExtKeyUsage) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p.serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(p.serial),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(p.dir, name+".pem"), filepath.Join(p.dir, name+"-key.pem")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "EC PRIVATE KEY", keyDER)
	return certFile, keyFile
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// probe calls Probe over TLS with the given client certificate (none when
// certFile is ""), trusting serverCA.
func probe(t *testing.T, addr, serverCA, certFile, keyFile string) error {
	t.Helper()
	pool := x509.NewCertPool()
	caPEM, err := os.ReadFile(serverCA)
	if err != nil {
		t.Fatal(err)
	}
	pool.AppendCertsFromPEM(caPEM)
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := csi.NewIdentityClient(conn).Probe(ctx, &csi.ProbeRequest{})
	if err == nil && !resp.GetReady().GetValue() {
		return fmt.Errorf("probe: not ready")
	}
	return err
}

func TestMutualTLS(t *testing.T) {
	dir := shortTemp(t, "tls-")
	ca := newPKI(t, dir, "cairn")
	serverCert, serverKey := ca.issue(t, "server", x509.ExtKeyUsageServerAuth)
	clientCert, clientKey := ca.issue(t, "client", x509.ExtKeyUsageClientAuth)
	other := newPKI(t, dir, "other")
	strangerCert, strangerKey := other.issue(t, "stranger", x509.ExtKeyUsageClientAuth)

	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	p := testdriver.Start(t, testdriver.Options{
		DataDir: filepath.Join(dir, "data"),
		Pools:   []string{"default=dir:" + filepath.Join(dir, "pool")},
		Extra: []string{"--endpoint", "tcp://" + addr, "--tls-cert-file", serverCert, "--tls-key-file", serverKey,
			"--tls-client-ca-file", ca.caFile(t)},
		NoWait: true, // it serves on TCP, not on the Unix socket Start waits for
	})

	// A client with a certificate from the CA is served.
	var err error
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if p.Exited() {
			t.Fatalf("cairn exited:\n%s", p.Log())
		}
		if err = probe(t, addr, ca.caFile(t), clientCert, clientKey); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("a client with a valid certificate cannot Probe: %v\nlog:\n%s", err, p.Log())
	}

	refused := []struct {
		name      string
		cert, key string
	}{
		{"no client certificate", "", ""},
		{"a certificate from another CA", strangerCert, strangerKey},
		{"the server's own certificate (not for client auth)", serverCert, serverKey},
	}
	for _, r := range refused {
		t.Run(r.name, func(t *testing.T) {
			err := probe(t, addr, ca.caFile(t), r.cert, r.key)
			if err == nil {
				t.Fatal("Probe succeeded; want the handshake refused")
			}
			if c := status.Code(err); c != codes.Unavailable {
				t.Errorf("Probe: %v; want UNAVAILABLE from a refused handshake", err)
			}
		})
	}
	// The valid client still works after the refusals.
	if err := probe(t, addr, ca.caFile(t), clientCert, clientKey); err != nil {
		t.Errorf("valid client after refusals: %v", err)
	}
}

// TestTCPWithoutTLSRefusesToStart: a tcp:// endpoint without the TLS
// files is a configuration error, never a plaintext listener.
func TestTCPWithoutTLSRefusesToStart(t *testing.T) {
	dir := shortTemp(t, "tcp-")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	tests := []struct {
		name  string
		extra []string
	}{
		{"no TLS flags", nil},
		{"no client CA", []string{"--tls-cert-file", "/nonexistent/cert.pem", "--tls-key-file", "/nonexistent/key.pem"}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			args := append([]string{"--endpoint", "tcp://" + addr, "--data-dir", filepath.Join(dir, fmt.Sprint("data", i)),
				"--pool", "default=dir:" + filepath.Join(dir, fmt.Sprint("pool", i)), "--node-id", "n"}, tt.extra...)
			out, err := exec.CommandContext(ctx, testdriver.Binary(t), args...).CombinedOutput()
			if err == nil {
				t.Fatalf("cairn exited 0 with a tcp endpoint and no mutual TLS:\n%s", out)
			}
			if ctx.Err() != nil {
				t.Fatalf("cairn kept running with a tcp endpoint and no mutual TLS:\n%s", out)
			}
			if !strings.Contains(string(out), "--tls-client-ca-file") || !strings.Contains(string(out), "mutual TLS") {
				t.Errorf("the error does not say what is missing:\n%s", out)
			}
			if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
				c.Close()
				t.Errorf("something listens on %s", addr)
			}
		})
	}
}
