package cairnctl

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cairn-csi/cairn/internal/testdriver"
)

// pki writes a CA and a certificate and key it signed, as PEM files.
type pki struct {
	dir    string
	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	serial int64
}

func newPKI(t *testing.T, dir string) *pki {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	writePEM(t, filepath.Join(dir, "ca.pem"), "CERTIFICATE", der)
	return &pki{dir: dir, ca: ca, caKey: key, serial: 1}
}

// issue writes <name>.pem and <name>-key.pem for a server (with an IP SAN
// for 127.0.0.1) or a client.
func (p *pki) issue(t *testing.T, name string, server bool) (cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p.serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(p.serial), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &k.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	cert, key = filepath.Join(p.dir, name+".pem"), filepath.Join(p.dir, name+"-key.pem")
	writePEM(t, cert, "CERTIFICATE", der)
	writePEM(t, key, "EC PRIVATE KEY", kder)
	return cert, key
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestMutualTLS runs cairn on tcp:// with mutual TLS, which is the only
// way cairn serves TCP, and connects with and without the right
// credentials.
func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := newPKI(t, dir)
	srvCert, srvKey := ca.issue(t, "server", true)
	cliCert, cliKey := ca.issue(t, "client", false)
	other := newPKI(t, t.TempDir())
	strangerCert, strangerKey := other.issue(t, "stranger", false)
	caFile := filepath.Join(dir, "ca.pem")

	addr := freePort(t)
	ep := "tcp://" + addr
	startCairn(t, testdriver.Options{
		NoWait: true, // testdriver's readiness check dials the Unix socket
		Extra:  []string{"--endpoint", ep, "--tls-cert-file", srvCert, "--tls-key-file", srvKey, "--tls-client-ca-file", caFile},
	})
	good := []string{"--tls-cert", cliCert, "--tls-key", cliKey, "--tls-ca", caFile}
	deadline := time.Now().Add(time.Minute)
	for {
		r := ctl(t, ep, append(good, "probe")...)
		if r.code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cairn on %s never answered: %v", ep, r)
		}
		time.Sleep(50 * time.Millisecond)
	}

	tests := []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"client certificate", good, 0, ""},
		{"no client certificate", []string{"--tls-ca", caFile}, 3, "cairnctl: cannot connect to " + ep},
		{"client certificate of another CA", []string{"--tls-cert", strangerCert, "--tls-key", strangerKey, "--tls-ca", caFile}, 3, "cairnctl: cannot connect to " + ep},
		{"server not trusted", []string{"--tls-cert", cliCert, "--tls-key", cliKey}, 3, "certificate signed by unknown authority"},
		{"plaintext", []string{"--insecure"}, 3, "closed the connection"},
		{"plaintext and TLS", append([]string{"--insecure"}, good...), 2, "contradict"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := ctl(t, ep, append(tc.args, "probe")...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.stderr) {
				t.Errorf("want exit %d and %q: %v", tc.code, tc.stderr, r)
			}
		})
	}
}
