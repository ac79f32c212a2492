package fscrypt_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/fscrypt"
	"github.com/cairn-csi/cairn/internal/testdriver"
	"github.com/cairn-csi/cairn/internal/testfs"
)

func TestMain(m *testing.M) { testdriver.MainInPrivateMounts(m, "internal/fscrypt") }

func TestDeriveKey(t *testing.T) {
	a, _ := fscrypt.DeriveKey([]byte("secret"), "vol-a")
	a2, _ := fscrypt.DeriveKey([]byte("secret"), "vol-a")
	b, _ := fscrypt.DeriveKey([]byte("secret"), "vol-b")
	c, _ := fscrypt.DeriveKey([]byte("other"), "vol-a")
	if len(a) != fscrypt.KeySize || !bytes.Equal(a, a2) || bytes.Equal(a, b) || bytes.Equal(a, c) {
		t.Fatalf("derivation is not a per-volume function of the secret")
	}
}

// TestLifecycle: add a key, encrypt a directory, write, remove the key:
// the names and contents are locked; add it again: they read back.
func TestLifecycle(t *testing.T) {
	mnt := testfs.New(t, "ext4", 0, "-O", "encrypt")
	dir := filepath.Join(mnt, "vol")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := fscrypt.Policy(dir); err != nil || ok {
		t.Fatalf("Policy of a new directory: %v %v", ok, err)
	}
	key, _ := fscrypt.DeriveKey([]byte("s3cret"), "vol")
	id, err := fscrypt.AddKey(mnt, key)
	if err != nil {
		t.Fatal(err)
	}
	if want, err := fscrypt.Identifier(key); err != nil || want != id {
		t.Fatalf("Identifier = %v %v, the kernel says %v", want, err, id)
	}
	if err := fscrypt.SetPolicy(dir, id); err != nil {
		t.Fatal(err)
	}
	if got, ok, err := fscrypt.Policy(dir); err != nil || !ok || got != id {
		t.Fatalf("Policy = %v %v %v, want %v", got, ok, err, id)
	}
	if err := os.WriteFile(filepath.Join(dir, "plain-name"), []byte("plain"), 0o600); err != nil {
		t.Fatal(err)
	}
	if busy, err := fscrypt.RemoveKey(mnt, id); err != nil || busy {
		t.Fatalf("RemoveKey = %v %v", busy, err)
	}
	if ok, _ := fscrypt.KeyPresent(mnt, id); ok {
		t.Fatal("key still present")
	}
	if _, err := os.Stat(filepath.Join(dir, "plain-name")); err == nil {
		t.Fatal("the name is visible without the key")
	}
	if err := os.WriteFile(filepath.Join(dir, "new"), nil, 0o600); !errors.Is(err, unix.ENOKEY) {
		t.Fatalf("create without the key: %v", err)
	}
	// A wrong key has another identifier and does not unlock it.
	wrong, _ := fscrypt.DeriveKey([]byte("wrong"), "vol")
	wid, err := fscrypt.AddKey(mnt, wrong)
	if err != nil || wid == id {
		t.Fatalf("wrong key: %v %v", wid, err)
	}
	fscrypt.RemoveKey(mnt, wid)
	if _, err := fscrypt.AddKey(mnt, key); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "plain-name")); err != nil || string(b) != "plain" {
		t.Fatalf("read back: %q %v", b, err)
	}
	fscrypt.RemoveKey(mnt, id)
}

func TestNotSupported(t *testing.T) {
	mnt := testfs.New(t, "ext4", 0) // no encrypt feature
	if err := fscrypt.Supported(mnt); !errors.Is(err, fscrypt.ErrNotSupported) {
		// ext4 without the feature answers EOPNOTSUPP.
		t.Fatalf("Supported on ext4 without -O encrypt: %v", err)
	}
}
