package driver

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/cairn-csi/cairn/internal/errdefs"
)

// want is a validator's expected outcome: nil, or the error class.
type want = error

var ok want = nil

func checkClass(t *testing.T, what string, err, wantClass error) {
	t.Helper()
	switch {
	case wantClass == nil && err != nil:
		t.Errorf("%s: unexpected error %v", what, err)
	case wantClass != nil && err == nil:
		t.Errorf("%s: accepted, want class %v", what, wantClass)
	case wantClass != nil && !errors.Is(err, wantClass):
		t.Errorf("%s: err = %v, want class %v", what, err, wantClass)
	}
}

// utf8Bytes is a valid UTF-8 string of exactly n bytes made of 2-byte runes
// (plus one ASCII byte when n is odd).
func utf8Bytes(n int) string {
	s := strings.Repeat("é", n/2)
	if n%2 == 1 {
		s += "x"
	}
	return s
}

func TestRequireString(t *testing.T) {
	inv := errdefs.ErrInvalidArgument
	tests := []struct {
		in   string
		want want
	}{
		{"a", ok},
		{"pvc-4f1c2e6a-1d0b-4e8f-9a3b-0c1d2e3f4a5b", ok},
		{strings.Repeat("a", 128), ok},
		{utf8Bytes(128), ok},
		{"", inv},
		{strings.Repeat("a", 129), inv},
		{utf8Bytes(129), inv},
		{"a\x00b", inv},
		{"\x00", inv},
		{"a\xffb", inv},              // invalid UTF-8
		{"\xc3", inv},                // truncated rune
		{"with space/and/slash", ok}, // names are not file names
	}
	for _, tt := range tests {
		checkClass(t, fmt.Sprintf("requireString(%q)", tt.in), requireString("name", tt.in), tt.want)
	}
}

func TestRequireID(t *testing.T) {
	inv := errdefs.ErrInvalidArgument
	tests := []struct {
		in   string
		want want
	}{
		{"vol-0123456789abcdef", ok},
		{"snap-0123456789abcdef", ok},
		{"a", ok},
		{".hidden", ok},
		{"a.b", ok},
		{strings.Repeat("v", 128), ok},
		{"", inv},
		{".", inv},
		{"..", inv},
		{"a..b", inv},
		{"..a", inv},
		{"a/b", inv},
		{"/abs", inv},
		{"a\\b", inv},
		{"../etc", inv},
		{"a\x00", inv},
		{"\xff", inv},
		{strings.Repeat("v", 129), inv},
	}
	for _, tt := range tests {
		checkClass(t, fmt.Sprintf("requireID(%q)", tt.in), requireID("volume_id", tt.in), tt.want)
	}
}

func TestCheckMap(t *testing.T) {
	inv := errdefs.ErrInvalidArgument
	big := func(n int) map[string]string { return map[string]string{"k": strings.Repeat("v", n-1)} }
	split := map[string]string{}
	for i := range 64 { // 64 entries of 64 bytes: exactly 4096
		k := fmt.Sprintf("key-%02d", i)
		split[k] = strings.Repeat("v", 64-len(k))
	}
	tests := []struct {
		name string
		in   map[string]string
		want want
	}{
		{"nil", nil, ok},
		{"empty", map[string]string{}, ok},
		{"small", map[string]string{"pool": "fast"}, ok},
		{"exactly 4 KiB", big(4096), ok},
		{"4 KiB over many entries", split, ok},
		{"one byte over", big(4097), inv},
		{"empty key and value", map[string]string{"": ""}, ok},
		{"NUL in key", map[string]string{"a\x00": "v"}, inv},
		{"NUL in value", map[string]string{"a": "v\x00"}, inv},
		{"invalid UTF-8 key", map[string]string{"\xff": "v"}, inv},
		{"invalid UTF-8 value", map[string]string{"k": "\xfe"}, inv},
		// The 4 KiB rule is on the whole map; single values may pass 128.
		{"long single value", map[string]string{"k": strings.Repeat("v", 1000)}, ok},
	}
	for _, tt := range tests {
		checkClass(t, "checkMap "+tt.name, checkMap("parameters", tt.in), tt.want)
	}
}

func TestRequirePath(t *testing.T) {
	inv := errdefs.ErrInvalidArgument
	long := "/" + strings.Repeat("a", 4095)
	tests := []struct {
		in   string
		want want
	}{
		{"/var/lib/kubelet/pods/x/volumes/kubernetes.io~csi/pv/mount", ok},
		{"/", ok},
		{"/a/./b", ok},   // not clean, but cannot escape
		{"/a//b/", ok},   // idem
		{"/a/..b/c", ok}, // "..b" is a name, not a parent reference
		{"/a/b..", ok},
		{long, ok},
		{long + "a", inv},
		{"", inv},
		{"relative/path", inv},
		{"./x", inv},
		{"/a/../b", inv},
		{"/..", inv},
		{"/a/..", inv},
		{"/a\x00b", inv},
		{"/a\xffb", inv},
	}
	for _, tt := range tests {
		checkClass(t, fmt.Sprintf("requirePath(%.40q)", tt.in), requirePath("target_path", tt.in), tt.want)
	}
}

func TestRequireVolumePath(t *testing.T) {
	inv, nf := errdefs.ErrInvalidArgument, errdefs.ErrNotFound
	tests := []struct {
		in   string
		want want
	}{
		{"/var/lib/kubelet/pods/x/mount", ok},
		{"/", ok},
		{"", inv},
		{"/a\x00", inv},
		{"\xff", inv},
		{"/" + strings.Repeat("a", 4096), inv},
		// The spec's answer for a path where the volume cannot be: NOT_FOUND.
		{"relative", nf},
		{"/a/../b", nf},
		{"/a//b", nf},
		{"/a/", nf},
		{"/a/.", nf},
	}
	for _, tt := range tests {
		checkClass(t, fmt.Sprintf("requireVolumePath(%.40q)", tt.in), requireVolumePath("volume_path", tt.in), tt.want)
	}
}

func TestCheckMountFlags(t *testing.T) {
	inv := errdefs.ErrInvalidArgument
	tests := []struct {
		in   []string
		want want
	}{
		{nil, ok},
		{[]string{"ro"}, ok},
		{[]string{"noatime", "nodiratime", "nosuid", "nodev", "noexec"}, ok},
		{[]string{"context=system_u:object_r:container_file_t:s0"}, ok},
		{[]string{strings.Repeat("o", 128)}, ok},
		{[]string{strings.Repeat("o", 129)}, inv},
		{[]string{""}, inv},
		{[]string{"ro,bind"}, inv}, // smuggling a second option
		{[]string{"ro bind"}, inv},
		{[]string{"ro\tbind"}, inv},
		{[]string{"ro\nbind"}, inv},
		{[]string{"noatime", "bind"}, inv},
		{[]string{"rbind"}, inv},
		{[]string{"remount"}, inv},
		{[]string{"move"}, inv},
		{[]string{"loop"}, inv},
		{[]string{"loop=/dev/loop0"}, inv},
		{[]string{"x-mount.mkdir"}, inv},
		{[]string{"x-mount.mkdir=0700"}, inv},
		{[]string{"a\x00"}, inv},
		{[]string{"\xff"}, inv},
	}
	for _, tt := range tests {
		checkClass(t, fmt.Sprintf("checkMountFlags(%q)", tt.in), checkMountFlags(tt.in), tt.want)
	}
}

func mountCap(mode csi.VolumeCapability_AccessMode_Mode, fsType string, flags ...string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fsType, MountFlags: flags}},
	}
}

func blockCap(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
	}
}

func TestCheckCapability(t *testing.T) {
	inv := errdefs.ErrInvalidArgument
	const (
		snw  = csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
		snro = csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
		snsw = csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER
		snmw = csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER
		mnro = csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY
		mnsw = csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER
		mnmw = csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER
	)
	withGroup := mountCap(snw, "ext4")
	withGroup.GetMount().VolumeMountGroup = "1000"
	longGroup := mountCap(snw, "ext4")
	longGroup.GetMount().VolumeMountGroup = strings.Repeat("1", 129)
	tests := []struct {
		name string
		in   *csi.VolumeCapability
		want want
	}{
		{"mount single writer", mountCap(snw, ""), ok},
		{"mount reader only", mountCap(snro, "ext4"), ok},
		{"mount single single-writer", mountCap(snsw, "xfs"), ok},
		{"mount single multi-writer", mountCap(snmw, "btrfs", "noatime"), ok},
		{"block", blockCap(snw), ok},
		{"volume mount group", withGroup, ok},
		{"long volume mount group", longGroup, inv},
		{"nil", nil, inv},
		{"no access mode", &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}}, inv},
		{"unknown access mode", mountCap(csi.VolumeCapability_AccessMode_UNKNOWN, ""), inv},
		{"out-of-enum access mode", mountCap(csi.VolumeCapability_AccessMode_Mode(99), ""), inv},
		{"multi node reader", mountCap(mnro, ""), inv},
		{"multi node single writer", mountCap(mnsw, ""), inv},
		{"multi node multi writer", blockCap(mnmw), inv},
		{"no access type", &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: snw}}, inv},
		{"mount with nil body", &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: snw}, AccessType: &csi.VolumeCapability_Mount{}}, ok},
		{"fs type too long", mountCap(snw, strings.Repeat("x", 129)), inv},
		{"fs type with NUL", mountCap(snw, "ext4\x00"), inv},
		{"forbidden flag", mountCap(snw, "", "bind"), inv},
		{"flag with comma", mountCap(snw, "", "ro,remount"), inv},
	}
	for _, tt := range tests {
		checkClass(t, "checkCapability "+tt.name, checkCapability("volume_capability", tt.in), tt.want)
	}
}

func TestCheckCapabilities(t *testing.T) {
	inv := errdefs.ErrInvalidArgument
	good := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, "")
	bad := mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER, "")
	checkClass(t, "none", checkCapabilities("volume_capabilities", nil), inv)
	checkClass(t, "one good", checkCapabilities("volume_capabilities", []*csi.VolumeCapability{good}), ok)
	checkClass(t, "good and bad", checkCapabilities("volume_capabilities", []*csi.VolumeCapability{good, bad}), inv)
	checkClass(t, "good and nil", checkCapabilities("volume_capabilities", []*csi.VolumeCapability{good, nil}), inv)
	err := checkCapabilities("volume_capabilities", []*csi.VolumeCapability{good, bad})
	if !strings.Contains(err.Error(), "volume_capabilities[1]") {
		t.Errorf("error %q does not name the offending capability", err)
	}
}

func TestParseCreateParams(t *testing.T) {
	inv := errdefs.ErrInvalidArgument
	tests := []struct {
		name string
		in   map[string]string
		want createParams
		err  want
	}{
		{"none", nil, createParams{}, ok},
		{"pool", map[string]string{"pool": "fast"}, createParams{pool: "fast"}, ok},
		{"all", map[string]string{"pool": "p", "csi.storage.k8s.io/fstype": "xfs", "mkfsOptions": "-m 0"},
			createParams{pool: "p", fsType: "xfs", mkfsOptions: "-m 0"}, ok},
		{"kubernetes metadata is ignored", map[string]string{
			"csi.storage.k8s.io/pvc/name": "a", "csi.storage.k8s.io/pvc/namespace": "b", "csi.storage.k8s.io/pv/name": "c"},
			createParams{}, ok},
		{"every supported fs type", map[string]string{"csi.storage.k8s.io/fstype": "btrfs"}, createParams{fsType: "btrfs"}, ok},
		{"unknown key", map[string]string{"replicas": "3"}, createParams{}, inv},
		{"key differs in case", map[string]string{"Pool": "x"}, createParams{}, inv},
		{"unsupported fs type", map[string]string{"csi.storage.k8s.io/fstype": "ntfs"}, createParams{}, inv},
		{"over 4 KiB", map[string]string{"mkfsOptions": strings.Repeat("x", 4096)}, createParams{}, inv},
		{"NUL", map[string]string{"pool": "a\x00"}, createParams{}, inv},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseCreateParams(tt.in)
			checkClass(t, "parseCreateParams", err, tt.err)
			if err == nil && got != tt.want {
				t.Errorf("parseCreateParams = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestTruncate(t *testing.T) {
	if got := truncate("short"); got != "short" {
		t.Errorf("truncate(short) = %q", got)
	}
	long := strings.Repeat("a", 200)
	if got := truncate(long); len(got) > 64+len("…") || !strings.HasPrefix(long, strings.TrimSuffix(got, "…")) {
		t.Errorf("truncate(200 bytes) = %q", got)
	}
}
