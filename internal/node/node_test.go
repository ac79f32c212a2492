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

	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/loopdev"
	"github.com/cairn-csi/cairn/internal/mountfd"
)

// fakeTable is a mount table a test writes.
type fakeTable struct {
	mounts []mount.MountInfo
	err    error
	reads  int
}

func (t *fakeTable) Mounts() ([]mount.MountInfo, error) { t.reads++; return t.mounts, t.err }

func (t *fakeTable) add(mps ...string) {
	for _, mp := range mps {
		t.mounts = append(t.mounts, mount.MountInfo{ID: len(t.mounts) + 1, MountPoint: mp, Source: "none", FsType: "none"})
	}
}

// noLoops is LoopDevices with nothing attached.
type noLoops struct{}

func (noLoops) Attach(context.Context, string, bool, uint32) (string, error) {
	return "", errors.New("noLoops: attach")
}
func (noLoops) Find(context.Context, string) ([]string, error) { return nil, nil }
func (noLoops) Detach(context.Context, string) error           { return nil }
func (noLoops) Refresh(context.Context, string) error          { return nil }
func (noLoops) List(context.Context) ([]loopdev.Device, error) { return nil, nil }

// bindLike makes a path that stats as dir does, as a bind mount of dir
// does: a symlink (the node's lookups follow it, as stat(2) does).
func bindLike(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.Symlink(dir, p); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestMountsOfFakeTable: "where is this volume mounted?" is answered from
// the injected table, by device and inode, never by path: entries that
// are other directories do not count, and a mount listed twice (a shared
// subtree's propagation) is reported once.
func TestMountsOfFakeTable(t *testing.T) {
	ctx := context.Background()
	vol, other := t.TempDir(), t.TempDir()
	staging, target := bindLike(t, vol, "staging"), bindLike(t, vol, "target")
	elsewhere := bindLike(t, vol, "elsewhere")
	unrelated := bindLike(t, other, "unrelated")
	src := backend.Source{Kind: backend.SourceDirectory, Path: vol}

	tests := []struct {
		name      string
		mounts    []string
		want      []string
		elsewhere string // MountedElsewhere(staging, target)
	}{
		{"not mounted", nil, nil, ""},
		{"someone else's mounts only", []string{unrelated, "/proc"}, nil, ""},
		{"staged", []string{staging}, []string{staging}, ""},
		{"staged and published", []string{staging, unrelated, target}, []string{staging, target}, ""},
		{"listed twice", []string{staging, staging}, []string{staging}, ""},
		{"published elsewhere too", []string{staging, target, elsewhere}, []string{staging, target, elsewhere}, elsewhere},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			table := &fakeTable{}
			table.add(tc.mounts...)
			n := New(Config{Table: table})
			got, err := n.MountsOf(ctx, src)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("MountsOf = %v, want %v", got, tc.want)
			}
			mp, err := n.MountedElsewhere(ctx, src, staging, target)
			if err != nil || mp != tc.elsewhere {
				t.Errorf("MountedElsewhere = %q, %v; want %q", mp, err, tc.elsewhere)
			}
		})
	}
}

// TestMountsOfErrors: a table that cannot be read is an error, not "not
// mounted"; an image attached nowhere is mounted nowhere, without reading
// the table; an image pool without loop devices is FAILED_PRECONDITION.
func TestMountsOfErrors(t *testing.T) {
	ctx := context.Background()
	broken := &fakeTable{err: errors.New("mountinfo: boom")}
	dir := backend.Source{Kind: backend.SourceDirectory, Path: t.TempDir()}
	if _, err := New(Config{Table: broken}).MountsOf(ctx, dir); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Errorf("MountsOf over an unreadable table = %v, want its error", err)
	}

	img := backend.Source{Kind: backend.SourceImageFile, Path: filepath.Join(t.TempDir(), "img")}
	table := &fakeTable{err: errors.New("must not be read")}
	got, err := New(Config{Table: table, Loop: noLoops{}}).MountsOf(ctx, img)
	if err != nil || got != nil || table.reads != 0 {
		t.Errorf("MountsOf(unattached image) = %v, %v after %d table reads; want nothing, no reads", got, err, table.reads)
	}

	_, err = New(Config{Table: table}).MountsOf(ctx, img)
	if !errdefs.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("MountsOf(image) without loop devices = %v, want FAILED_PRECONDITION", err)
	}
}

// TestInspectUnmounted: Inspect of a plain directory and of a missing
// path, unprivileged: nothing is mounted there, and nothing is ours.
func TestInspectUnmounted(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	n := New(Config{Table: &fakeTable{}})
	id, err := n.IdentityOf(ctx, backend.Source{Kind: backend.SourceDirectory, Path: dir})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path string
		want State
	}{
		{t.TempDir(), State{Exists: true}},
		{filepath.Join(dir, "missing"), State{}},
	}
	for _, tc := range tests {
		st, err := n.Inspect(tc.path, id)
		if err != nil {
			t.Fatal(err)
		}
		if st.Exists != tc.want.Exists || st.Mounted || st.Ours {
			t.Errorf("Inspect(%s) = %+v, want exists=%t and not mounted", tc.path, st, tc.want.Exists)
		}
	}
	// Nothing mounted: UnmountOurs has nothing to peel, and Unpublish
	// removes the (empty) target.
	target := t.TempDir()
	cnt, foreign, err := n.Unpublish(ctx, target, id)
	if err != nil || cnt != 0 || foreign {
		t.Fatalf("Unpublish of an unmounted target = %d, %t, %v", cnt, foreign, err)
	}
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Errorf("target still there after Unpublish: %v", err)
	}
}

// mustState fails t unless path's mount state is as wanted.
func mustState(t *testing.T, n *Node, path string, id Identity, mounted, ours bool) State {
	t.Helper()
	st, err := n.Inspect(path, id)
	if err != nil || st.Mounted != mounted || st.Ours != ours {
		t.Fatalf("Inspect(%s) = %+v, %v; want mounted=%t ours=%t", path, st, err, mounted, ours)
	}
	return st
}

// mustUnpublish fails t unless Unpublish of target peels want layers and
// stops at a foreign mount exactly when foreign is set.
func mustUnpublish(t *testing.T, n *Node, target string, id Identity, want int, foreign bool) {
	t.Helper()
	cnt, f, err := n.Unpublish(context.Background(), target, id)
	if err != nil || cnt != want || f != foreign {
		t.Fatalf("Unpublish(%s) = %d, %t, %v; want %d, %t", target, cnt, f, err, want, foreign)
	}
}

// TestStagePublish runs a directory volume through stage, publish and
// unpublish with real bind mounts (root only), reading the real table for
// MountsOf, and checks that a foreign mount at the target is left alone.
func TestStagePublish(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("bind mounts need root")
	}
	ctx := context.Background()
	vol, staging, other := t.TempDir(), t.TempDir(), t.TempDir()
	target := filepath.Join(t.TempDir(), "target")
	t.Cleanup(func() {
		for _, p := range []string{target, staging} {
			for unix.Unmount(p, unix.MNT_DETACH) == nil {
			}
		}
	})
	n := New(Config{})
	src := backend.Source{Kind: backend.SourceDirectory, Path: vol}
	id, err := n.IdentityOf(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.StageDir(vol, staging); err != nil {
		t.Fatal(err)
	}
	mustState(t, n, staging, id, true, true)
	if err := n.Publish(PublishSpec{Staging: staging, Target: target, Attrs: mountfd.Attrs{ReadOnly: true}}); err != nil {
		t.Fatal(err)
	}
	if st := mustState(t, n, target, id, true, true); !st.ReadOnly {
		t.Errorf("target published read-write: %+v", st)
	}
	mps, err := n.MountsOf(ctx, src)
	if err != nil || !slices.Contains(mps, staging) || !slices.Contains(mps, target) {
		t.Fatalf("MountsOf = %v, %v; want staging and target", mps, err)
	}
	if mp, err := n.MountedElsewhere(ctx, src, staging, target); err != nil || mp != "" {
		t.Errorf("MountedElsewhere = %q, %v", mp, err)
	}
	mustUnpublish(t, n, target, id, 1, false)
	if _, err := os.Stat(target); !os.IsNotExist(err) {
		t.Errorf("target still there: %v", err)
	}

	// Someone else's mount at the target stays, and so does the target.
	if err := os.Mkdir(target, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(other, target, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	mustUnpublish(t, n, target, id, 0, true)
	mustState(t, n, target, id, true, false)
	if cnt, _, err := n.UnmountOurs(ctx, staging, id); err != nil || cnt != 1 {
		t.Errorf("UnmountOurs(staging) = %d, %v", cnt, err)
	}
}

// TestNoGRPC: the node layer knows nothing of gRPC; only internal/driver
// turns its classed errors into codes.
func TestNoGRPC(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("needs the go command")
	}
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.HasPrefix(dep, "google.golang.org/grpc") || strings.HasPrefix(dep, "github.com/container-storage-interface/") {
			t.Errorf("internal/node depends on %s", dep)
		}
	}
}
