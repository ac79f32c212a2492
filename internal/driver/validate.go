package driver

import (
	"fmt"
	"path/filepath"
	"strings"
	"unicode/utf8"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/cairn-csi/cairn/internal/errdefs"
)

// Size limits from the CSI spec ("Size Limits").
const (
	maxStringBytes = 128
	maxMapBytes    = 4096
	maxNodeIDBytes = 256
	maxPathBytes   = 4096 // PATH_MAX: paths are not bound by the 128-byte rule
)

func invalid(format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, errdefs.ErrInvalidArgument)...)
}

// requireString checks a required string field: present, within the spec's
// size limit, valid UTF-8, no NUL.
func requireString(field, v string) error {
	if v == "" {
		return invalid("%s is required", field)
	}
	return checkString(field, v)
}

func checkString(field, v string) error {
	if len(v) > maxStringBytes {
		return invalid("%s is %d bytes, over the limit of %d", field, len(v), maxStringBytes)
	}
	if !utf8.ValidString(v) || strings.ContainsRune(v, 0) {
		return invalid("%s must be valid UTF-8 without NUL", field)
	}
	return nil
}

// requireID checks an ID that will become a file name: a required string,
// and not a path element that could escape its directory.
func requireID(field, v string) error {
	if err := requireString(field, v); err != nil {
		return err
	}
	if v == "." || v == ".." || strings.ContainsAny(v, "/\\") || strings.Contains(v, "..") {
		return invalid("%s %q must not contain '/', '\\' or '..'", field, v)
	}
	return nil
}

// checkMap checks a string map against the spec's 4 KiB limit on keys plus
// values, and each key and value against the string rules.
func checkMap(field string, m map[string]string) error {
	total := 0
	for k, v := range m {
		total += len(k) + len(v)
		if !utf8.ValidString(k) || !utf8.ValidString(v) || strings.ContainsRune(k, 0) || strings.ContainsRune(v, 0) {
			return invalid("%s entry %q must be valid UTF-8 without NUL", field, truncate(k))
		}
	}
	if total > maxMapBytes {
		return invalid("%s is %d bytes, over the limit of %d", field, total, maxMapBytes)
	}
	return nil
}

// requirePath checks a path the CO gives (target, staging): absolute,
// clean, no NUL, within PATH_MAX. Relative paths and ".." elements are
// refused rather than resolved, so a request cannot point outside the
// directory the CO manages.
func requirePath(field, p string) error {
	if p == "" {
		return invalid("%s is required", field)
	}
	if len(p) > maxPathBytes || strings.ContainsRune(p, 0) || !utf8.ValidString(p) {
		return invalid("%s is not a valid path", field)
	}
	if !filepath.IsAbs(p) {
		return invalid("%s %q must be an absolute path", field, truncate(p))
	}
	for _, el := range strings.Split(p, "/") {
		if el == ".." {
			return invalid("%s %q must not contain '..'", field, truncate(p))
		}
	}
	return nil
}

// requireVolumePath checks a volume_path (stats, expansion): it must be
// given and sane, but a path that is not absolute cannot be where the
// volume is mounted, which the spec reports as NOT_FOUND.
func requireVolumePath(field, p string) error {
	if p == "" {
		return invalid("%s is required", field)
	}
	if len(p) > maxPathBytes || strings.ContainsRune(p, 0) || !utf8.ValidString(p) {
		return invalid("%s is not a valid path", field)
	}
	if !filepath.IsAbs(p) || filepath.Clean(p) != p {
		return fmt.Errorf("%s %q is not an absolute, clean path, so the volume is not there: %w", field, truncate(p), errdefs.ErrNotFound)
	}
	return nil
}

// checkMountFlags refuses flags that could smuggle extra options: each flag
// is one option, so no commas, and none of the options that would change
// what is mounted rather than how.
func checkMountFlags(flags []string) error {
	for _, f := range flags {
		if err := checkString("volume_capability.mount.mount_flags", f); err != nil {
			return err
		}
		if f == "" || strings.ContainsAny(f, ", \t\n") {
			return invalid("mount flag %q must be a single option without commas or spaces", truncate(f))
		}
		switch strings.SplitN(f, "=", 2)[0] {
		case "bind", "rbind", "remount", "move", "loop", "x-mount.mkdir":
			return invalid("mount flag %q is not allowed", f)
		}
	}
	return nil
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// accessMode support. Cairn volumes live on one node, so the MULTI_NODE
// modes cannot be honoured.
func checkAccessMode(field string, am *csi.VolumeCapability_AccessMode) error {
	if am == nil {
		return invalid("%s.access_mode is required", field)
	}
	switch am.GetMode() {
	case csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER:
		return nil
	case csi.VolumeCapability_AccessMode_UNKNOWN:
		return invalid("%s.access_mode is required", field)
	}
	return invalid("%s.access_mode %s is not supported: Cairn volumes are node-local", field, am.GetMode())
}

// checkCapability validates one volume capability.
func checkCapability(field string, c *csi.VolumeCapability) error {
	if c == nil {
		return invalid("%s is required", field)
	}
	if err := checkAccessMode(field, c.GetAccessMode()); err != nil {
		return err
	}
	switch at := c.GetAccessType().(type) {
	case *csi.VolumeCapability_Mount:
		if err := checkString(field+".mount.fs_type", at.Mount.GetFsType()); err != nil {
			return err
		}
		if err := checkMountFlags(at.Mount.GetMountFlags()); err != nil {
			return err
		}
		if g := at.Mount.GetVolumeMountGroup(); g != "" {
			if err := checkString(field+".mount.volume_mount_group", g); err != nil {
				return err
			}
		}
	case *csi.VolumeCapability_Block:
	default:
		return invalid("%s.access_type is required (mount or block)", field)
	}
	return nil
}

func checkCapabilities(field string, caps []*csi.VolumeCapability) error {
	if len(caps) == 0 {
		return invalid("%s is required", field)
	}
	for i, c := range caps {
		if err := checkCapability(fmt.Sprintf("%s[%d]", field, i), c); err != nil {
			return err
		}
	}
	return nil
}
