// Package luks owns LUKS2 (dm-crypt) for image and lvm volumes: formatting
// the header of an image file or LV, opening it as a device-mapper mapping
// and closing it, moving a copy to another key, and the rule for which
// copies can be made, so that every pool encrypts the same way. It runs cryptsetup (exec.CommandContext,
// LC_ALL=C); keys go to it through pipes, never on a command line, in the
// environment or in a file.
package luks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/cairn-csi/cairn/internal/errdefs"
)

// magic starts every LUKS header (LUKS1 and LUKS2).
var magic = []byte{'L', 'U', 'K', 'S', 0xba, 0xbe}

// ErrNotSupported is returned where the node cannot run dm-crypt.
var ErrNotSupported = fmt.Errorf("LUKS needs device-mapper (/dev/mapper/control) and cryptsetup: %w", errdefs.ErrFailedPrecondition)

// ErrWrongKey is returned when a key opens no key slot.
var ErrWrongKey = fmt.Errorf("the key opens no LUKS key slot: %w", errdefs.ErrPermissionDenied)

// Supported reports whether this node can format and open LUKS volumes.
func Supported() error {
	if _, err := os.Stat("/dev/mapper/control"); err != nil {
		return fmt.Errorf("%w (the kernel has no device-mapper here)", ErrNotSupported)
	}
	if _, err := exec.LookPath("cryptsetup"); err != nil {
		return fmt.Errorf("%w (cryptsetup is not installed: apt-get install cryptsetup-bin)", ErrNotSupported)
	}
	return nil
}

// IsLUKS reports whether the file or device at path starts with a LUKS
// header.
func IsLUKS(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	buf := make([]byte, len(magic))
	if _, err := io.ReadFull(f, buf); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return false, nil
		}
		return false, err
	}
	return bytes.Equal(buf, magic), nil
}

// Options tune Format.
type Options struct {
	// FastKDF uses PBKDF2 with few iterations instead of Argon2id. The
	// keys Cairn passes are derived, full-entropy 64-byte keys, but
	// production keeps cryptsetup's memory-hard default all the same;
	// tests, under emulation, cannot afford it.
	FastKDF bool
}

// DefaultOptions are the options this process formats with:
// CAIRN_LUKS_FAST_KDF=1 (tests only, like CAIRN_CRASHPOINT) selects FastKDF.
func DefaultOptions() Options {
	return Options{FastKDF: os.Getenv("CAIRN_LUKS_FAST_KDF") == "1"}
}

// HeaderBytes is the room a LUKS2 header and its key slots take at the
// start of an image (cryptsetup's default): an encrypted image is that
// much larger than the capacity it offers.
const HeaderBytes = 16 << 20

// Resize makes an open mapping fill its grown device. Open keeps the
// volume key in the dm table, so no passphrase is needed.
func Resize(ctx context.Context, name string) error {
	return run(ctx, nil, "resize", name)
}

func (o Options) kdfArgs() []string {
	if o.FastKDF {
		return []string{"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"}
	}
	return nil
}

// run runs cryptsetup with args, feeding each of keys through a pipe that
// it reads as /dev/fd/3, /dev/fd/4, ….
func run(ctx context.Context, keys [][]byte, args ...string) error {
	cmd := exec.CommandContext(ctx, "cryptsetup", args...)
	cmd.Env = []string{"LC_ALL=C", "PATH=" + os.Getenv("PATH")}
	var writers []*os.File
	for _, k := range keys {
		r, w, err := os.Pipe()
		if err != nil {
			return err
		}
		cmd.ExtraFiles = append(cmd.ExtraFiles, r)
		writers = append(writers, w)
		defer r.Close()
		go func(w *os.File, k []byte) {
			w.Write(k)
			w.Close()
		}(w, k)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	for _, w := range writers {
		w.Close()
	}
	if err == nil {
		return nil
	}
	msg := strings.TrimSpace(out.String())
	var ee *exec.ExitError
	// cryptsetup exits 2 for "no key available with this passphrase".
	if errors.As(err, &ee) && ee.ExitCode() == 2 {
		return fmt.Errorf("cryptsetup %s: %s: %w", args[0], msg, ErrWrongKey)
	}
	return fmt.Errorf("cryptsetup %s: %v: %s", args[0], err, msg)
}

// keyFile is the key file argument for key i of run's keys.
func keyFile(i int) string { return fmt.Sprintf("/dev/fd/%d", 3+i) }

// Format writes a LUKS2 header to path (an image file or a block device)
// with key in slot 0, with 4096-byte encryption sectors, which fit every
// loop block size and every LV.
func Format(ctx context.Context, path string, key []byte, o Options) error {
	args := []string{"luksFormat", "--batch-mode", "--type", "luks2", "--cipher", "aes-xts-plain64", "--key-size", "512",
		"--sector-size", "4096", "--key-file", keyFile(0)}
	args = append(args, o.kdfArgs()...)
	return run(ctx, [][]byte{key}, append(args, path)...)
}

// MappingName is the device-mapper name of volume id's opened volume.
func MappingName(id string) string { return "cairn-" + id }

// MappingPath is the device node of a mapping.
func MappingPath(name string) string { return filepath.Join("/dev/mapper", name) }

// Open opens the LUKS volume on dev as mapping name with key and returns
// the mapping's device path. An open mapping is reused.
func Open(ctx context.Context, dev, name string, key []byte) (string, error) {
	p := MappingPath(name)
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	// --disable-keyring: the volume key goes into the dm table rather than
	// the kernel keyring, from which userspace cannot read it back, so that
	// an online resize (NodeExpandVolume, which often has no secret) needs
	// no passphrase. Root can read a dm table either way.
	if err := run(ctx, [][]byte{key}, "open", "--type", "luks2", "--disable-keyring", "--key-file", keyFile(0), dev, name); err != nil {
		return "", err
	}
	return p, nil
}

// Close closes mapping name; a mapping that is not open is not an error.
func Close(ctx context.Context, name string) error {
	if _, err := os.Stat(MappingPath(name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return run(ctx, nil, "close", name)
}

// Rekey moves the LUKS image at path from oldKey to newKey: it adds a slot
// for newKey and removes oldKey's, so a copy (a clone, a restore) opens with
// its own key only.
func Rekey(ctx context.Context, path string, oldKey, newKey []byte, o Options) error {
	args := append([]string{"luksAddKey", "--batch-mode", "--key-file", keyFile(0)}, o.kdfArgs()...)
	if err := run(ctx, [][]byte{oldKey, newKey}, append(args, path, keyFile(1))...); err != nil {
		return err
	}
	return run(ctx, [][]byte{oldKey}, "luksRemoveKey", "--batch-mode", path, keyFile(0))
}

// Check reports whether key opens a slot of the LUKS image at path.
func Check(ctx context.Context, path string, key []byte) error {
	return run(ctx, [][]byte{key}, "open", "--test-passphrase", "--key-file", keyFile(0), path)
}

// CheckCopy decides whether a copy of a volume (a clone, a restore) can be
// made as asked, before any of it is made: an encrypted source's copy must
// be encrypted too and be given the source's key, so that Rekey can move
// it to its own; plain content cannot be encrypted in place. Every pool
// that encrypts with LUKS applies the same rule.
func CheckCopy(sourceEncrypted, encrypt, haveSourceKey bool) error {
	switch {
	case sourceEncrypted && !encrypt:
		return fmt.Errorf("the content source is encrypted; a volume made from it must be too: %w", errdefs.ErrInvalidArgument)
	case !sourceEncrypted && encrypt:
		return fmt.Errorf("a copy of plain content cannot be encrypted in place; create an encrypted volume and copy the data into it: %w", errdefs.ErrInvalidArgument)
	case encrypt && !haveSourceKey:
		return fmt.Errorf("the content source is encrypted and no key for it was given: %w", errdefs.ErrInvalidArgument)
	}
	return nil
}

// FormatVolume writes the header of a new, empty volume (an image file or
// a block device) with key, formatted as this process formats
// (DefaultOptions). Every pool that encrypts with LUKS creates volumes
// with it.
func FormatVolume(ctx context.Context, path string, key []byte) error {
	if err := Format(ctx, path, key, DefaultOptions()); err != nil {
		return fmt.Errorf("encrypt %s: %w", path, err)
	}
	return nil
}

// MoveCopy moves a copy of an encrypted volume (a clone, a restore) from
// its source's key slot to its own key, so that the source's key opens
// nothing of it. CheckCopy has decided the copy may be made.
func MoveCopy(ctx context.Context, path string, sourceKey, key []byte) error {
	if err := Rekey(ctx, path, sourceKey, key, DefaultOptions()); err != nil {
		return fmt.Errorf("move the copy to its own key: %w", err)
	}
	return nil
}
