// Package fscrypt owns native filesystem encryption (fscrypt, policy v2) as
// Cairn uses it for directory volumes: deriving a volume's master key from
// a secret, adding it to and removing it from a filesystem's keyring, and
// setting and reading a directory's encryption policy. It talks to the
// kernel through its ioctls only; no fscrypt tool is run and nothing is
// stored outside the kernel. Key material is held in memory only as long as
// a call needs it.
package fscrypt

import (
	"crypto/hkdf"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/errdefs"
)

// KeySize is the size of a master key: AES-256-XTS needs 64 bytes.
const KeySize = 64

// KeyID identifies a master key: the kernel derives it from the key, so
// it names the key without revealing it, and is safe to store and log.
type KeyID [unix.FSCRYPT_KEY_IDENTIFIER_SIZE]byte

func (id KeyID) String() string { return hex.EncodeToString(id[:]) }

// ParseKeyID parses KeyID.String's form.
func ParseKeyID(s string) (KeyID, error) {
	var id KeyID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(id) {
		return id, fmt.Errorf("key identifier %q is not %d hex bytes: %w", s, len(id), errdefs.ErrInvalidArgument)
	}
	copy(id[:], b)
	return id, nil
}

// ErrNotSupported is returned when a filesystem cannot encrypt: it lacks
// the feature (ext4 without -O encrypt) or the kernel lacks fscrypt.
var ErrNotSupported = fmt.Errorf("the filesystem does not support fscrypt (ext4 needs the encrypt feature: tune2fs -O encrypt): %w", errdefs.ErrFailedPrecondition)

// ErrNoKey is returned when an encrypted directory is used while its key
// is not in the filesystem's keyring.
var ErrNoKey = fmt.Errorf("the volume's encryption key is not loaded on this node: %w", errdefs.ErrFailedPrecondition)

// DeriveKey derives a volume's master key from a secret and a salt (the
// volume's ID), so that one secret used for many volumes still gives each
// its own key: removing one volume's key at unstage never locks another.
func DeriveKey(secret []byte, salt string) ([]byte, error) {
	return hkdf.Key(sha512.New, secret, []byte(salt), "cairn fscrypt v2 master key", KeySize)
}

// Identifier computes the identifier the kernel gives key (HKDF-SHA512 of
// the key with the info "fscrypt\x00" and context 1, as fs/crypto does),
// so a key can be checked against a volume without loading it.
func Identifier(key []byte) (KeyID, error) {
	var id KeyID
	b, err := hkdf.Key(sha512.New, key, nil, "fscrypt\x00\x01", len(id))
	if err != nil {
		return id, err
	}
	copy(id[:], b)
	return id, nil
}

func ioctl(fd int, req uint, arg unsafe.Pointer) error {
	for {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(arg))
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return e
		}
		return nil
	}
}

func openDir(path string) (int, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return -1, fmt.Errorf("fscrypt: open %s: %w", path, err)
	}
	return fd, nil
}

func notSupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTTY)
}

// Policy returns the key identifier of dir's encryption policy, and false
// when dir is not encrypted.
func Policy(dir string) (KeyID, bool, error) {
	var id KeyID
	fd, err := openDir(dir)
	if err != nil {
		return id, false, err
	}
	defer unix.Close(fd)
	arg := unix.FscryptGetPolicyExArg{Size: uint64(len(unix.FscryptGetPolicyExArg{}.Policy))}
	err = ioctl(fd, unix.FS_IOC_GET_ENCRYPTION_POLICY_EX, unsafe.Pointer(&arg))
	switch {
	case errors.Is(err, unix.ENODATA):
		return id, false, nil
	case notSupported(err):
		return id, false, ErrNotSupported
	case err != nil:
		return id, false, fmt.Errorf("fscrypt: policy of %s: %w", dir, err)
	}
	if arg.Policy[0] != unix.FSCRYPT_POLICY_V2 {
		return id, true, fmt.Errorf("fscrypt: %s has a v%d policy, not v2: %w", dir, arg.Policy[0], errdefs.ErrFailedPrecondition)
	}
	p := (*unix.FscryptPolicyV2)(unsafe.Pointer(&arg.Policy[0]))
	return KeyID(p.Master_key_identifier), true, nil
}

// Supported reports whether the filesystem holding dir can encrypt.
func Supported(dir string) error {
	_, _, err := Policy(dir)
	return err
}

// SetPolicy encrypts the empty directory dir with the key id (AES-256-XTS
// contents, AES-256-CTS names, 32-byte name padding). The key must be in
// the filesystem's keyring.
func SetPolicy(dir string, id KeyID) error {
	fd, err := openDir(dir)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	p := unix.FscryptPolicyV2{
		Version:                   unix.FSCRYPT_POLICY_V2,
		Contents_encryption_mode:  unix.FSCRYPT_MODE_AES_256_XTS,
		Filenames_encryption_mode: unix.FSCRYPT_MODE_AES_256_CTS,
		Flags:                     unix.FSCRYPT_POLICY_FLAGS_PAD_32,
		Master_key_identifier:     id,
	}
	err = ioctl(fd, unix.FS_IOC_SET_ENCRYPTION_POLICY, unsafe.Pointer(&p))
	switch {
	case notSupported(err):
		return ErrNotSupported
	case errors.Is(err, unix.ENOKEY):
		return fmt.Errorf("fscrypt: set policy on %s: %w", dir, ErrNoKey)
	case err != nil:
		return fmt.Errorf("fscrypt: set policy on %s: %w", dir, err)
	}
	return nil
}

// AddKey adds a master key to the keyring of the filesystem holding dir
// and returns its identifier. Adding a key that is present already is not
// an error.
func AddKey(dir string, key []byte) (KeyID, error) {
	var id KeyID
	if len(key) != KeySize {
		return id, fmt.Errorf("fscrypt: a master key is %d bytes, not %d: %w", KeySize, len(key), errdefs.ErrInvalidArgument)
	}
	fd, err := openDir(dir)
	if err != nil {
		return id, err
	}
	defer unix.Close(fd)
	// The argument is a header followed by the raw key.
	hdr := int(unsafe.Sizeof(unix.FscryptAddKeyArg{}))
	buf := make([]byte, hdr+len(key))
	defer clear(buf)
	arg := (*unix.FscryptAddKeyArg)(unsafe.Pointer(&buf[0]))
	arg.Key_spec.Type = unix.FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER
	arg.Raw_size = uint32(len(key))
	copy(buf[hdr:], key)
	err = ioctl(fd, unix.FS_IOC_ADD_ENCRYPTION_KEY, unsafe.Pointer(&buf[0]))
	switch {
	case notSupported(err):
		return id, ErrNotSupported
	case err != nil:
		return id, fmt.Errorf("fscrypt: add key: %w", err)
	}
	copy(id[:], arg.Key_spec.U[:len(id)])
	return id, nil
}

// RemoveKey removes key id from the keyring of the filesystem holding dir.
// busy reports that files were still open: their contents stay readable
// until they are closed, and the key is gone for everything else. A key
// that is absent is not an error.
func RemoveKey(dir string, id KeyID) (busy bool, err error) {
	fd, err := openDir(dir)
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	var arg unix.FscryptRemoveKeyArg
	arg.Key_spec.Type = unix.FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER
	copy(arg.Key_spec.U[:], id[:])
	err = ioctl(fd, unix.FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS, unsafe.Pointer(&arg))
	switch {
	case errors.Is(err, unix.ENOKEY):
		return false, nil
	case notSupported(err):
		return false, ErrNotSupported
	case err != nil:
		return false, fmt.Errorf("fscrypt: remove key %s: %w", id, err)
	}
	return arg.Removal_status_flags&unix.FSCRYPT_KEY_REMOVAL_STATUS_FLAG_FILES_BUSY != 0, nil
}

// KeyPresent reports whether key id is in the keyring of the filesystem
// holding dir (an incompletely removed key, with files still open, counts
// as absent: nothing new can be opened with it).
func KeyPresent(dir string, id KeyID) (bool, error) {
	fd, err := openDir(dir)
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	var arg unix.FscryptGetKeyStatusArg
	arg.Key_spec.Type = unix.FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER
	copy(arg.Key_spec.U[:], id[:])
	if err := ioctl(fd, unix.FS_IOC_GET_ENCRYPTION_KEY_STATUS, unsafe.Pointer(&arg)); err != nil {
		if notSupported(err) {
			return false, ErrNotSupported
		}
		return false, fmt.Errorf("fscrypt: key status %s: %w", id, err)
	}
	return arg.Status == unix.FSCRYPT_KEY_STATUS_PRESENT, nil
}
