package node

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/loopdev"
)

// recLoops is LoopDevices that finds and lists what a test says and
// records detaches; detaching a device named in fail returns its error.
type recLoops struct {
	found    []string
	listed   []loopdev.Device
	fail     map[string]error
	detached *[]string
}

func (l recLoops) Attach(context.Context, string, bool, uint32) (string, error) {
	return "", errors.New("recLoops: attach")
}
func (l recLoops) Find(context.Context, string) ([]string, error) { return l.found, nil }
func (l recLoops) Refresh(context.Context, string) error          { return nil }
func (l recLoops) List(context.Context) ([]loopdev.Device, error) { return l.listed, nil }
func (l recLoops) Detach(_ context.Context, dev string) error {
	if err := l.fail[dev]; err != nil {
		return err
	}
	*l.detached = append(*l.detached, filepath.Base(dev))
	return nil
}

// devFiles makes files standing in for loop device nodes (stat'able).
func devFiles(t *testing.T, names ...string) []string {
	t.Helper()
	dir := t.TempDir()
	var out []string
	for _, n := range names {
		p := filepath.Join(dir, n)
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

// TestReleaseImage: unstage's release of an image volume detaches every
// loop device of its image once the mount table shows nothing of it; a
// device still open elsewhere (EBUSY) is left to the kernel, any other
// failure stops the unstage, and an unreadable table detaches nothing.
func TestReleaseImage(t *testing.T) {
	src := backend.Source{Kind: backend.SourceImageFile, Path: "/pool/images/vol-1.img"}
	for _, tc := range []struct {
		name     string
		fail     map[string]error
		tableErr error
		want     []string
		wantErr  bool
	}{
		{name: "nothing mounted: all detached", want: []string{"loop3", "loop4"}},
		{name: "one still open elsewhere: left to the kernel", fail: map[string]error{"loop3": unix.EBUSY}, want: []string{"loop4"}},
		{name: "a detach fails: stop", fail: map[string]error{"loop3": unix.EIO}, wantErr: true},
		{name: "unreadable table: nothing detached", tableErr: errors.New("mountinfo: boom"), wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			devs := devFiles(t, "loop3", "loop4")
			fail := map[string]error{}
			for name, err := range tc.fail {
				fail[filepath.Join(filepath.Dir(devs[0]), name)] = err
			}
			var detached []string
			n := New(Config{Loop: recLoops{found: devs, fail: fail, detached: &detached}, Table: &fakeTable{err: tc.tableErr}})
			err := n.ReleaseImage(context.Background(), "vol-unit-test", src)
			if (err != nil) != tc.wantErr {
				t.Fatalf("ReleaseImage = %v; want error %v", err, tc.wantErr)
			}
			if !slices.Equal(detached, tc.want) {
				t.Errorf("detached %q, want %q", detached, tc.want)
			}
		})
	}
}

// TestReleaseDeletedImage: only the loop devices whose backing file the
// pools name as the deleted volume's image are detached; devices gone
// since the listing are skipped.
func TestReleaseDeletedImage(t *testing.T) {
	devs := devFiles(t, "loop1", "loop2")
	var detached []string
	loops := recLoops{detached: &detached, listed: []loopdev.Device{
		{Path: devs[0], BackingFile: "/pool/rm-vol-1 (deleted)", Deleted: true},
		{Path: devs[1], BackingFile: "/pool/vol-2.img"},
		{Path: filepath.Join(filepath.Dir(devs[0]), "loop9"), BackingFile: "/pool/rm-vol-1 (deleted)", Deleted: true},
	}}
	n := New(Config{Loop: loops, Table: &fakeTable{}})
	isImage := func(file string) bool { return file == "/pool/rm-vol-1 (deleted)" }
	if err := n.ReleaseDeletedImage(context.Background(), "vol-unit-test", isImage); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(detached, []string{"loop1"}) {
		t.Errorf("detached %q, want [loop1]", detached)
	}
}

// TestLockDirNothingToLock: a volume that is not a directory, or a
// directory without an fscrypt policy, has no key to drop, and the mount
// table is not even read.
func TestLockDirNothingToLock(t *testing.T) {
	n := New(Config{Table: &fakeTable{err: errors.New("must not be read")}})
	for _, src := range []backend.Source{
		{Kind: backend.SourceImageFile, Path: "/pool/vol-1.img"},
		{Kind: backend.SourceDirectory, Path: t.TempDir()},
	} {
		if err := n.LockDir(context.Background(), "vol-1", src); err != nil {
			t.Errorf("LockDir(%v) = %v", src, err)
		}
	}
}
