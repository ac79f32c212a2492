package node

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"
	testingexec "k8s.io/utils/exec/testing"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/mountfd"
)

// fakeHost records what the node asked of the machine, in order, in a log
// a test shares with MarkFormatted; the tools it names fail.
type fakeHost struct {
	log      *[]string
	fail     map[string]bool // tool name or "mount" -> fails
	unmounts []string
}

func (h *fakeHost) RunTool(_ context.Context, name string, args ...string) ([]byte, error) {
	*h.log = append(*h.log, strings.Join(append([]string{name}, args...), " "))
	if h.fail[name] {
		return []byte(name + ": boom"), errors.New("exit status 1")
	}
	return nil, nil
}

func (h *fakeHost) MountFS(dev string, dir *mountfd.Handle, fsType string, attrs mountfd.Attrs, _ []string) error {
	ro := ""
	if attrs.ReadOnly {
		ro = ",ro"
	}
	*h.log = append(*h.log, "mount "+fsType+ro+" "+filepath.Base(dev)+" at "+filepath.Base(dir.Path()))
	if h.fail["mount"] {
		return errors.New("mount: boom")
	}
	return nil
}

func (h *fakeHost) Unmount(path string) error {
	*h.log = append(*h.log, "unmount "+filepath.Base(path))
	h.unmounts = append(h.unmounts, path)
	return nil
}

// fsImage makes a file of size bytes, formatted by mkfs (the real tool,
// which needs no root for a file) unless mkfs is empty, then grown to
// grow bytes if that is larger: a device larger than its filesystem.
func fsImage(t *testing.T, size, grow int64, mkfs ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "dev")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	if len(mkfs) > 0 {
		if _, err := exec.LookPath(mkfs[0]); err != nil {
			t.Skipf("%s is not installed, so no filesystem to stage can be made", mkfs[0])
		}
		if out, err := exec.Command(mkfs[0], append(mkfs[1:], path)...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", mkfs, err, out)
		}
	}
	if grow > size {
		if err := os.Truncate(path, grow); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

// blkidSays is a mount-utils exec whose blkid finds fsType ("" for
// nothing, blkid's exit status 2); log records each command.
func blkidSays(fsType string, log *[]string) *testingexec.FakeExec {
	return &testingexec.FakeExec{CommandScript: []testingexec.FakeCommandAction{
		func(cmd string, args ...string) utilexec.Cmd {
			*log = append(*log, cmd)
			fc := &testingexec.FakeCmd{CombinedOutputScript: []testingexec.FakeAction{func() ([]byte, []byte, error) {
				if fsType == "" {
					return nil, nil, testingexec.FakeExitError{Status: 2}
				}
				return []byte("TYPE=" + fsType + "\n"), nil, nil
			}}}
			return testingexec.InitFakeCmd(fc, cmd, args...)
		},
	}}
}

// TestMountImageDecisions unit-tests MountImage without root: which
// volume is formatted (only one recorded as never formatted, or one with
// no record that is blank to blkid too), which is grown and how (ext
// offline before the mount, xfs online after it, undone by an unmount if
// it fails), what is recorded, and that a read-only stage changes nothing.
// The devices are files with real filesystems; tools and mounts are faked.
func TestMountImageDecisions(t *testing.T) {
	const mib = 1 << 20
	ext4 := []string{"mkfs.ext4", "-q", "-F", "-b", "4096"}
	xfs := []string{"mkfs.xfs", "-q", "-f"}
	for _, tc := range []struct {
		name      string
		dev       func(t *testing.T) string
		fsType    string
		state     backend.FormatState
		readOnly  bool
		blkid     string // what blkid finds, for a volume with no record
		fail      []string
		want      []string // host calls and "mark", in order
		wantErr   error    // errors.Is; nil: any error if failing is set
		failing   bool
		unmounted bool
	}{
		{name: "formatted, unchanged: mount only", fsType: "ext4", state: backend.FormatDone,
			dev:  func(t *testing.T) string { return fsImage(t, 64*mib, 0, ext4...) },
			want: []string{"mount ext4 dev at staging"}},
		{name: "pending, blank: format, record, mount", fsType: "ext4", state: backend.FormatPending,
			dev:  func(t *testing.T) string { return fsImage(t, 64*mib, 0) },
			want: []string{"mkfs.ext4 -F dev", "mark", "mount ext4 dev at staging"}},
		{name: "pending, half-formatted: formatted again", fsType: "ext4", state: backend.FormatPending,
			dev:  func(t *testing.T) string { return fsImage(t, 64*mib, 0, ext4...) },
			want: []string{"mkfs.ext4 -F dev", "mark", "mount ext4 dev at staging"}},
		{name: "recorded formatted, blank to the probe: never formatted again", fsType: "ext4", state: backend.FormatDone,
			dev:  func(t *testing.T) string { return fsImage(t, 64*mib, 0) },
			want: []string{"mount ext4 dev at staging"}},
		{name: "no record, blank to blkid: format, record, mount", fsType: "ext4", state: backend.FormatUnknown,
			dev:  func(t *testing.T) string { return fsImage(t, 64*mib, 0) },
			want: []string{"blkid", "mkfs.ext4 -F dev", "mark", "mount ext4 dev at staging"}},
		{name: "no record, something blkid knows: left alone, not recorded when the mount fails", fsType: "ext4", state: backend.FormatUnknown,
			blkid: "crypto_LUKS", fail: []string{"mount"}, failing: true,
			dev:  func(t *testing.T) string { return fsImage(t, 64*mib, 0) },
			want: []string{"blkid", "mount ext4 dev at staging"}},
		{name: "no record, a filesystem: mounted and recorded", fsType: "ext4", state: backend.FormatUnknown,
			dev:  func(t *testing.T) string { return fsImage(t, 64*mib, 0, ext4...) },
			want: []string{"mount ext4 dev at staging", "mark"}},
		{name: "ext4 on a larger device: grown offline before the mount", fsType: "ext4", state: backend.FormatDone,
			dev:  func(t *testing.T) string { return fsImage(t, 64*mib, 96*mib, ext4...) },
			want: []string{"e2fsck -f -p dev", "resize2fs dev", "mount ext4 dev at staging"}},
		{name: "ext4 grown by less than the slack: no tool", fsType: "ext4", state: backend.FormatDone,
			dev:  func(t *testing.T) string { return fsImage(t, 64*mib, 64*mib+4096, ext4...) },
			want: []string{"mount ext4 dev at staging"}},
		{name: "resize2fs fails: no mount", fsType: "ext4", state: backend.FormatDone, fail: []string{"resize2fs"}, failing: true,
			dev:  func(t *testing.T) string { return fsImage(t, 64*mib, 96*mib, ext4...) },
			want: []string{"e2fsck -f -p dev", "resize2fs dev"}},
		{name: "xfs on a larger device: grown online after the mount", fsType: "xfs", state: backend.FormatDone,
			dev:  func(t *testing.T) string { return fsImage(t, 300*mib, 400*mib, xfs...) },
			want: []string{"mount xfs dev at staging", "xfs_growfs -d staging"}},
		{name: "xfs_growfs fails: unmounted again", fsType: "xfs", state: backend.FormatDone, fail: []string{"xfs_growfs"}, failing: true, unmounted: true,
			dev:  func(t *testing.T) string { return fsImage(t, 300*mib, 400*mib, xfs...) },
			want: []string{"mount xfs dev at staging", "xfs_growfs -d staging", "unmount staging"}},
		{name: "read-only, pending: refused, nothing done", fsType: "ext4", state: backend.FormatPending, readOnly: true,
			wantErr: errdefs.ErrFailedPrecondition, failing: true,
			dev: func(t *testing.T) string { return fsImage(t, 64*mib, 0) }},
		{name: "read-only on a larger device: not grown", fsType: "ext4", state: backend.FormatDone, readOnly: true,
			dev:  func(t *testing.T) string { return fsImage(t, 64*mib, 96*mib, ext4...) },
			want: []string{"mount ext4,ro dev at staging"}},
		{name: "mkfs fails: not recorded, not mounted", fsType: "ext4", state: backend.FormatPending, fail: []string{"mkfs.ext4"}, failing: true,
			dev:  func(t *testing.T) string { return fsImage(t, 64*mib, 0) },
			want: []string{"mkfs.ext4 -F dev"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev := tc.dev(t)
			staging := filepath.Join(t.TempDir(), "staging")
			if err := os.Mkdir(staging, 0o700); err != nil {
				t.Fatal(err)
			}
			var log []string
			host := &fakeHost{log: &log, fail: map[string]bool{}}
			for _, f := range tc.fail {
				host.fail[f] = true
			}
			mounter := &mount.SafeFormatAndMount{Interface: mount.NewFakeMounter(nil), Exec: blkidSays(tc.blkid, &log)}
			n := New(Config{Host: host, Mounter: mounter, Table: &fakeTable{err: errors.New("must not be read")}})
			m := ImageMount{
				VolID: "vol-1", Dev: dev, FsType: tc.fsType, State: tc.state,
				Attrs: mountfd.Attrs{ReadOnly: tc.readOnly}, MkfsArgs: []string{"-F", dev},
				MarkFormatted: func(context.Context) error { log = append(log, "mark"); return nil },
			}
			err := n.MountImage(context.Background(), m, staging)
			if tc.failing != (err != nil) || (tc.wantErr != nil && !errors.Is(err, tc.wantErr)) {
				t.Fatalf("MountImage = %v; want failing %v (%v)", err, tc.failing, tc.wantErr)
			}
			got := make([]string, len(log))
			for i, l := range log {
				got[i] = strings.ReplaceAll(strings.ReplaceAll(l, staging, "staging"), dev, "dev")
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("calls:\n  %q\nwant\n  %q", got, tc.want)
			}
			if tc.unmounted != (len(host.unmounts) == 1 && host.unmounts[0] == staging) {
				t.Errorf("unmounts %q, want the staging path unmounted: %v", host.unmounts, tc.unmounted)
			}
		})
	}
}

// TestFormatAndMountBlock unit-tests the block-device (LVM) stage path,
// mount-utils' format-and-mount behind the first-mount gate, with a fake
// exec and mounter: a blank device is formatted with the driver's mkfs
// arguments first, a formatted one is checked and mounted as it is, and
// a blank one is never formatted for a read-only mount.
func TestFormatAndMountBlock(t *testing.T) {
	const dev, target = "/dev/vg/vol-1", "/stage/vol-1"
	for _, tc := range []struct {
		name     string
		blkid    string
		opts     []string
		mkfsFail bool
		cmds     []string // commands run, in order
		mounted  bool
	}{
		{name: "blank: formatted, then mounted", cmds: []string{"blkid", "mkfs.ext4 -E nodiscard -F -m0 " + dev}, mounted: true},
		{name: "formatted: checked, mounted, not formatted", blkid: "ext4", cmds: []string{"blkid", "fsck -a " + dev}, mounted: true},
		{name: "blank, read-only: refused", opts: []string{"ro"}, cmds: []string{"blkid"}},
		{name: "mkfs fails: not mounted", mkfsFail: true, cmds: []string{"blkid", "mkfs.ext4 -E nodiscard -F -m0 " + dev}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cmds []string
			script := []testingexec.FakeCommandAction{blkidSays(tc.blkid, &cmds).CommandScript[0]}
			// The second command, mkfs or fsck, is recorded with its
			// arguments.
			script = append(script, func(cmd string, args ...string) utilexec.Cmd {
				cmds = append(cmds, strings.Join(append([]string{cmd}, args...), " "))
				fc := &testingexec.FakeCmd{CombinedOutputScript: []testingexec.FakeAction{func() ([]byte, []byte, error) {
					if tc.mkfsFail {
						return []byte("mkfs: boom"), nil, testingexec.FakeExitError{Status: 1}
					}
					return nil, nil, nil
				}}}
				return testingexec.InitFakeCmd(fc, cmd, args...)
			})
			fm := mount.NewFakeMounter(nil)
			mounter := &mount.SafeFormatAndMount{Interface: &FirstMountGate{Interface: fm}, Exec: &testingexec.FakeExec{CommandScript: script}}
			n := New(Config{Mounter: mounter, Host: &fakeHost{log: new([]string)}})
			err := n.FormatAndMount(dev, target, "ext4", tc.opts, []string{"-E", "nodiscard"})
			if (err == nil) != tc.mounted {
				t.Fatalf("FormatAndMount = %v; want mounted %v", err, tc.mounted)
			}
			if !slices.Equal(cmds, tc.cmds) {
				t.Errorf("commands %q, want %q", cmds, tc.cmds)
			}
			var mounts []string
			for _, a := range fm.GetLog() {
				mounts = append(mounts, a.Action+" "+a.Source+" "+a.Target+" "+a.FSType)
			}
			var want []string
			if tc.mounted {
				want = []string{"mount " + dev + " " + target + " ext4"}
			}
			if !slices.Equal(mounts, want) {
				t.Errorf("mounts %q, want %q", mounts, want)
			}
		})
	}
}
