//go:build linux

package image

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-csi/cairn/internal/loopdev"
)

// Filesystem magic numbers (statfs f_type).
const (
	ext4Magic  = 0xEF53
	xfsMagic   = 0x58465342
	btrfsMagic = 0x9123683E
)

// defaultLeakCycles is what TestStageUnstageLeaks runs without
// CAIRN_LEAK_CYCLES: the full 500, since that fits CI's budget (see the
// test's comment).
const defaultLeakCycles = 500

// TestStageUnstageLeaks runs stage, publish, unpublish and unstage of a
// mount volume and a block volume many times through the real binary, and
// checks that the mounts under the test's directory and the loop devices on
// the pool are exactly as before: no stacked mount, no forgotten loop
// device, no mount left by a failed step.
//
// Measured on the 2-core development machine, with the race detector as
// hack/test.sh runs it: 500 cycles (1000 stage/publish/unpublish/unstage
// rounds) took 41 s on a quiet machine (82 ms a cycle) and up to 83 s
// while other test binaries loaded it; without -race it takes about as
// long, since the time goes to the kernel and to the tools a mount stage
// runs (blkid, fsck, resize2fs), not to Go. CAIRN_LEAK_CYCLES=N changes
// the count, for a quick local run or a longer soak.
func TestStageUnstageLeaks(t *testing.T) {
	cycles := defaultLeakCycles
	if s := os.Getenv("CAIRN_LEAK_CYCLES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("CAIRN_LEAK_CYCLES=%q: want a positive count", s)
		}
		cycles = n
	}
	e := newEnv(t, "ext4", 1<<30)
	vols := []*volume{
		e.create("leak-mount", 64*mib, mountCap(""), nil, nil),
		e.create("leak-block", 64*mib, blockCap(), nil, nil),
	}
	// One cycle first, so that anything made once and kept on purpose (the
	// target's parent directories) is in the baseline.
	for _, v := range vols {
		e.stagePublish(v)
		e.unpublishUnstage(v)
	}
	mountsBefore, loopsBefore := e.mountinfo(), e.loops()
	start := time.Now()
	for i := range cycles {
		for _, v := range vols {
			e.stagePublish(v)
			if i == 0 {
				if n := e.countMounts(v.target); n != 1 {
					t.Fatalf("%s: %d mounts at the target after publish, want 1", v.GetVolumeId(), n)
				}
			}
			e.unpublishUnstage(v)
		}
	}
	t.Logf("%d cycles of a mount and a block volume took %v (%v per cycle)", cycles, time.Since(start).Round(time.Millisecond), (time.Since(start) / time.Duration(cycles)).Round(time.Millisecond))
	if after := e.mountinfo(); !slices.Equal(after, mountsBefore) {
		t.Errorf("mountinfo under the test changed:\nbefore %q\nafter  %q", mountsBefore, after)
	}
	if after := e.loops(); !slices.Equal(after, loopsBefore) {
		t.Errorf("loop devices on the pool changed:\nbefore %q\nafter  %q", loopsBefore, after)
	}
	for _, v := range vols {
		if _, err := os.Lstat(v.target); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("target %s left behind: %v", v.target, err)
		}
	}
}

// TestRebootSimulation stages and publishes a volume, writes data, then
// does what a node reboot does behind the driver's back (the mounts and the
// loop device vanish) and kills the driver. After a restart, staging and
// publishing again must bring back the data.
func TestRebootSimulation(t *testing.T) {
	for _, block := range []bool{false, true} {
		name := map[bool]string{false: "mount", true: "block"}[block]
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, "ext4", 1<<30)
			c := mountCap("ext4")
			if block {
				c = blockCap()
			}
			v := e.create("reboot-"+name, 128*mib, c, nil, nil)
			e.stagePublish(v)
			var sum [32]byte
			if block {
				sum = writeDevice(t, v.target, 1, 16*mib)
			} else {
				sum = writeFile(t, filepath.Join(v.target, "data"), 1, 16*mib)
			}
			dev := e.loopOf(v)

			// The reboot: mounts gone, loop device gone, driver gone.
			for _, mp := range []string{v.target, v.staging} {
				if e.countMounts(mp) > 0 {
					if err := unix.Unmount(mp, 0); err != nil {
						t.Fatalf("unmount %s: %v", mp, err)
					}
				}
			}
			if err := loopdev.Detach(context.Background(), dev); err != nil {
				t.Fatal(err)
			}
			e.proc.Kill()
			e.proc.Restart(true)

			e.stagePublish(v)
			var got [32]byte
			if block {
				got = hashPrefix(t, v.target, 16*mib)
			} else {
				got = hashPrefix(t, filepath.Join(v.target, "data"), 16*mib)
			}
			if got != sum {
				t.Fatal("data differs after the simulated reboot")
			}
			e.unpublishUnstage(v)
			if l := e.loops(); len(l) != 0 {
				t.Errorf("loop devices left after unstage: %v", l)
			}
		})
	}
}

// TestOnlineExpansion grows published volumes: the controller lengthens
// the image and says the node must act; NodeExpandVolume makes the loop
// device see the new size and grows the filesystem, online, keeping data.
func TestOnlineExpansion(t *testing.T) {
	const before, after = 320 * mib, 512 * mib // xfs needs 300 MiB to start with
	for _, tc := range []struct {
		name  string
		cap   *csi.VolumeCapability
		magic int64
	}{
		{"ext4", mountCap("ext4"), ext4Magic},
		{"xfs", mountCap("xfs"), xfsMagic},
		{"btrfs", mountCap("btrfs"), btrfsMagic},
		{"block", blockCap(), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "ext4" {
				requireCap(t, unix.CAP_SYS_RESOURCE, "CAP_SYS_RESOURCE", "to grow a mounted ext4 (EXT4_IOC_RESIZE_FS)")
			}
			e := newEnv(t, "ext4", 2<<30)
			v := e.create("grow-"+tc.name, before, tc.cap, nil, nil)
			e.stagePublish(v)
			var sum [32]byte
			var oldTotal int64
			if v.block() {
				sum = writeDevice(t, v.target, 2, 8*mib)
			} else {
				var st unix.Statfs_t
				if err := unix.Statfs(v.target, &st); err != nil {
					t.Fatal(err)
				}
				if st.Type != tc.magic {
					t.Fatalf("filesystem type %#x, want %#x", st.Type, tc.magic)
				}
				sum = writeFile(t, filepath.Join(v.target, "data"), 2, 8*mib)
				oldTotal = statfsTotal(t, v.target)
			}

			resp, err := e.ctl.ControllerExpandVolume(e.ctx(), &csi.ControllerExpandVolumeRequest{
				VolumeId: v.GetVolumeId(), CapacityRange: &csi.CapacityRange{RequiredBytes: after}, VolumeCapability: v.cap,
			})
			if err != nil {
				t.Fatal(err)
			}
			if resp.GetCapacityBytes() < after || !resp.GetNodeExpansionRequired() {
				t.Fatalf("ControllerExpandVolume = %v; want >= %d bytes and node expansion required (the loop device caches the old size)", resp, after)
			}
			nresp, err := e.node.NodeExpandVolume(e.ctx(), &csi.NodeExpandVolumeRequest{
				VolumeId: v.GetVolumeId(), VolumePath: v.target, StagingTargetPath: v.staging,
				CapacityRange: &csi.CapacityRange{RequiredBytes: after}, VolumeCapability: v.cap,
			})
			if err != nil {
				t.Fatalf("NodeExpandVolume: %v\nlog tail:\n%s", err, tail(e.proc.Log(), 20))
			}
			if nresp.GetCapacityBytes() < after {
				t.Errorf("NodeExpandVolume capacity %d, want >= %d", nresp.GetCapacityBytes(), after)
			}

			if size, err := loopdev.Size(context.Background(), e.loopOf(v)); err != nil || size < after {
				t.Errorf("loop device size %d, %v; want %d", size, err, after)
			}
			if v.block() {
				if got := hashPrefix(t, v.target, 8*mib); got != sum {
					t.Error("data differs after expansion")
				}
			} else {
				// The filesystem grew by about what the image did (less the
				// metadata of the new part).
				if grown := statfsTotal(t, v.target) - oldTotal; grown < (after-before)*8/10 {
					t.Errorf("filesystem grew by %d bytes, want about %d", grown, after-before)
				}
				if got := hashPrefix(t, filepath.Join(v.target, "data"), 8*mib); got != sum {
					t.Error("data differs after expansion")
				}
			}
			stats, err := e.node.NodeGetVolumeStats(e.ctx(), &csi.NodeGetVolumeStatsRequest{VolumeId: v.GetVolumeId(), VolumePath: v.target})
			if err != nil {
				t.Fatal(err)
			}
			total := stats.GetUsage()[0].GetTotal()
			if v.block() && total != after || !v.block() && total != statfsTotal(t, v.target) {
				t.Errorf("NodeGetVolumeStats total %d; want the %s", total, map[bool]string{true: "device size", false: "mounted filesystem's statfs"}[v.block()])
			}
			e.unpublishUnstage(v)
		})
	}
}

// TestRepeatedPublishDoesNotStack calls stage and publish again on the
// same paths, as a CO retrying does: each path keeps exactly one mount.
func TestRepeatedPublishDoesNotStack(t *testing.T) {
	e := newEnv(t, "ext4", 1<<30)
	for _, v := range []*volume{
		e.create("again-mount", 64*mib, mountCap(""), nil, nil),
		e.create("again-block", 64*mib, blockCap(), nil, nil),
	} {
		for range 3 {
			e.stagePublish(v)
		}
		if n := e.countMounts(v.target); n != 1 {
			t.Errorf("%s: %d mounts at the target, want 1", v.GetVolumeId(), n)
		}
		if n, want := e.countMounts(v.staging), map[bool]int{true: 0, false: 1}[v.block()]; n != want {
			t.Errorf("%s: %d mounts at the staging path, want %d", v.GetVolumeId(), n, want)
		}
		if l := e.loops(); len(l) != 1 {
			t.Errorf("%s: loop devices %v, want one", v.GetVolumeId(), l)
		}
		for range 2 {
			e.unpublishUnstage(v)
		}
		if l := e.loops(); len(l) != 0 {
			t.Errorf("%s: loop devices %v after unstage, want none", v.GetVolumeId(), l)
		}
	}
}

// TestFsTypes checks that the filesystem type (from the capability or the
// StorageClass) and mkfsOptions reach mkfs, in one process and in split
// mode, where the node learns them from the volume context.
func TestFsTypes(t *testing.T) {
	for _, split := range []bool{false, true} {
		t.Run(map[bool]string{false: "all", true: "split"}[split], func(t *testing.T) {
			if split {
				testFsTypes(t, newSplitEnv(t, "ext4", 2<<30))
			} else {
				testFsTypes(t, newEnv(t, "ext4", 2<<30))
			}
		})
	}
}

func testFsTypes(t *testing.T, e *env) {
	for _, tc := range []struct {
		name   string
		cap    *csi.VolumeCapability
		params map[string]string
		magic  int64
	}{
		{"default ext4", mountCap(""), map[string]string{"mkfsOptions": "-L cairn-ext4"}, ext4Magic},
		{"xfs from the capability", mountCap("xfs"), map[string]string{"mkfsOptions": "-L cairn-xfs"}, xfsMagic},
		{"btrfs from the StorageClass", mountCap(""), map[string]string{"csi.storage.k8s.io/fstype": "btrfs", "mkfsOptions": "-L cairn-btrfs"}, btrfsMagic},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := e.create("fs-"+strings.ReplaceAll(tc.name, " ", "-"), 320*mib, tc.cap, tc.params, nil)
			e.stagePublish(v)
			var st unix.Statfs_t
			if err := unix.Statfs(v.target, &st); err != nil {
				t.Fatal(err)
			}
			if st.Type != tc.magic {
				t.Errorf("filesystem type %#x, want %#x", st.Type, tc.magic)
			}
			out, err := exec.Command("blkid", "-o", "value", "-s", "LABEL", e.loopOf(v)).Output()
			if want := strings.TrimPrefix(tc.params["mkfsOptions"], "-L "); err != nil || strings.TrimSpace(string(out)) != want {
				t.Errorf("label %q, %v; want %q from mkfsOptions", out, err, want)
			}
			// Staging again finds the filesystem and does not format it.
			writeFile(t, filepath.Join(v.target, "keep"), 3, 4096)
			e.unpublishUnstage(v)
			e.stagePublish(v)
			if _, err := os.Stat(filepath.Join(v.target, "keep")); err != nil {
				t.Errorf("restaging lost the data: %v", err)
			}
			e.unpublishUnstage(v)
		})
	}
}

// TestFsMinimumSize checks the rounding for filesystems that mkfs cannot
// make small: the volume grows to the minimum when limit_bytes allows,
// and is refused with OUT_OF_RANGE naming the filesystem when it does not.
func TestFsMinimumSize(t *testing.T) {
	e := newEnv(t, "ext4", 1<<30)
	for _, tc := range []struct {
		name     string
		cap      *csi.VolumeCapability
		params   map[string]string
		limit    int64
		want     int64
		wantCode codes.Code
	}{
		{"xfs rounds up", mountCap("xfs"), nil, 0, 300 * mib, codes.OK},
		{"xfs from the StorageClass rounds up", mountCap(""), map[string]string{"csi.storage.k8s.io/fstype": "xfs"}, 0, 300 * mib, codes.OK},
		{"xfs within the limit", mountCap("xfs"), nil, 400 * mib, 300 * mib, codes.OK},
		{"xfs above the limit", mountCap("xfs"), nil, 200 * mib, 0, codes.OutOfRange},
		{"btrfs rounds up", mountCap("btrfs"), nil, 0, 109 * mib, codes.OK},
		{"ext4 needs no rounding", mountCap("ext4"), nil, 0, 64 * mib, codes.OK},
		{"block needs no rounding", blockCap(), nil, 0, 64 * mib, codes.OK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := e.ctl.CreateVolume(e.ctx(), &csi.CreateVolumeRequest{
				Name:               "min-" + strings.ReplaceAll(tc.name, " ", "-"),
				CapacityRange:      &csi.CapacityRange{RequiredBytes: 64 * mib, LimitBytes: tc.limit},
				VolumeCapabilities: []*csi.VolumeCapability{tc.cap},
				Parameters:         tc.params,
			})
			if status.Code(err) != tc.wantCode {
				t.Fatalf("CreateVolume = %v, want code %v", err, tc.wantCode)
			}
			if err != nil {
				if !strings.Contains(err.Error(), "xfs") || !strings.Contains(err.Error(), "limit_bytes") {
					t.Errorf("error %q does not name the filesystem and the field", err)
				}
				return
			}
			if got := resp.GetVolume().GetCapacityBytes(); got != tc.want {
				t.Errorf("capacity %d MiB, want %d MiB", got/mib, tc.want/mib)
			}
			if tc.cap.GetBlock() != nil {
				return
			}
			v := &volume{Volume: resp.GetVolume(), cap: tc.cap, staging: filepath.Join(e.dir, resp.GetVolume().GetVolumeId(), "staging"), target: filepath.Join(e.dir, resp.GetVolume().GetVolumeId(), "target")}
			if err := os.MkdirAll(v.staging, 0o750); err != nil {
				t.Fatal(err)
			}
			e.stagePublish(v) // mkfs accepts the rounded size
			e.unpublishUnstage(v)
		})
	}
}

// TestSnapshotWhileWriting snapshots and clones a staged filesystem while
// a writer is busy in it. The driver freezes the filesystem around each
// copy, so the copies must be consistent:
//
//   - ext4: e2fsck -fn finds nothing, and the journal needs no recovery
//     (a copy of a mounted ext4 taken without FIFREEZE always has
//     needs_recovery set, so this is what shows the freeze happened).
//   - xfs: a frozen xfs still has a non-empty log, which xfs_repair -n
//     cannot judge, so the copy is mounted (the driver stages it, which
//     replays the log) and unmounted, and then xfs_repair -n finds nothing.
//
// Both copies are staged next to their mounted source, which for xfs needs
// nouuid (the copy has the source's UUID).
func TestSnapshotWhileWriting(t *testing.T) {
	for _, tc := range []struct {
		fs, poolFS                string // the volume's filesystem, the pool's
		beforeMount, afterUnmount func(t *testing.T, image string)
	}{
		{"ext4", "ext4", checkExt4Quiesced, nil}, // copies are sparse copies, made while frozen
		{"xfs", "btrfs", nil, checkXFS},          // copies are reflinks
	} {
		t.Run(tc.fs, func(t *testing.T) {
			e := newEnv(t, tc.poolFS, 2<<30)
			v := e.create("busy-"+tc.fs, 320*mib, mountCap(tc.fs), nil, nil)
			e.stagePublish(v)

			stop := make(chan struct{})
			var wg sync.WaitGroup
			var files atomic.Int64
			wg.Go(func() { files.Add(writer(t, v.target, stop)) })
			// Let it get going, so the copies are taken under load.
			for writtenFiles(v.target) < 20 {
				time.Sleep(10 * time.Millisecond)
			}
			snap, err := e.ctl.CreateSnapshot(e.ctx(), &csi.CreateSnapshotRequest{Name: "snap-" + tc.fs, SourceVolumeId: v.GetVolumeId()})
			if err != nil {
				t.Fatal(err)
			}
			clone := e.create("clone-"+tc.fs, 320*mib, mountCap(tc.fs), nil, &csi.VolumeContentSource{
				Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: v.GetVolumeId()}}})
			close(stop)
			wg.Wait()
			restored := e.create("restored-"+tc.fs, 320*mib, mountCap(tc.fs), nil, &csi.VolumeContentSource{
				Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshot().GetSnapshotId()}}})
			t.Logf("writer made %d files", files.Load())

			for _, c := range []*volume{restored, clone} {
				if tc.beforeMount != nil {
					tc.beforeMount(t, e.image(c))
				}
				// It mounts and holds the writer's files.
				e.stagePublish(c)
				if n := writtenFiles(c.target); n == 0 {
					t.Errorf("%s holds none of the writer's files", c.GetVolumeId())
				}
				e.unpublishUnstage(c)
				if tc.afterUnmount != nil {
					tc.afterUnmount(t, e.image(c))
				}
			}
			e.unpublishUnstage(v)
		})
	}
}

func checkExt4Quiesced(t *testing.T, image string) {
	t.Helper()
	if out, err := exec.Command("e2fsck", "-fn", image).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn %s: %v\n%s", filepath.Base(image), err, out)
	}
	out, err := exec.Command("dumpe2fs", "-h", image).Output()
	if err != nil {
		t.Fatalf("dumpe2fs -h %s: %v", image, err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "Filesystem features:") && strings.Contains(l, "needs_recovery") {
			t.Errorf("%s: the journal needs recovery; the copy was not taken frozen\n%s", filepath.Base(image), l)
		}
	}
}

func checkXFS(t *testing.T, image string) {
	t.Helper()
	if out, err := exec.Command("xfs_repair", "-n", "-f", image).CombinedOutput(); err != nil {
		t.Errorf("xfs_repair -n %s: %v\n%s", filepath.Base(image), err, out)
	}
}

// writer creates, writes, fsyncs and deletes files in dir until stop is
// closed, and returns how many it made. It keeps the filesystem's journal
// busy with metadata and data changes.
func writer(t testing.TB, dir string, stop <-chan struct{}) int64 {
	buf := make([]byte, 256<<10)
	var n int64
	for {
		select {
		case <-stop:
			return n
		default:
		}
		name := filepath.Join(dir, fmt.Sprintf("f-%06d", n))
		f, err := os.Create(name)
		if err != nil {
			t.Errorf("writer: %v", err)
			return n
		}
		f.Write(buf)
		if n%4 == 0 {
			f.Sync()
		}
		f.Close()
		if n >= 64 { // keep about 64 files: the volume never fills
			os.Remove(filepath.Join(dir, fmt.Sprintf("f-%06d", n-64)))
		}
		n++
	}
}

func writtenFiles(dir string) int {
	entries, _ := os.ReadDir(dir)
	n := 0
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "f-") {
			n++
		}
	}
	return n
}

// TestDeletedImageLoops checks that no loop device is left on an image
// that is gone: DeleteVolume of a staged, unpublished block volume detaches
// it before the image is removed (issue 10, hole 7: the space stayed held
// until an unstage or a restart), unstage afterwards still converges, and
// the start-up reconcile detaches a device whose image vanished while the
// driver was down.
func TestDeletedImageLoops(t *testing.T) {
	e := newEnv(t, "ext4", 1<<30)

	// Deleted while staged (a CO that skipped unstage), then unstaged.
	v := e.create("gone-unstaged", 64*mib, blockCap(), nil, nil)
	e.stage(v)
	if _, err := e.ctl.DeleteVolume(e.ctx(), &csi.DeleteVolumeRequest{VolumeId: v.GetVolumeId()}); err != nil {
		t.Fatalf("DeleteVolume of a staged, unpublished block volume: %v", err)
	}
	if l := e.loops(); len(l) != 0 {
		t.Errorf("DeleteVolume returned with loop devices still on the pool: %v", l)
	}
	e.unstage(v)
	if l := e.loops(); len(l) != 0 {
		t.Errorf("NodeUnstageVolume of a deleted volume left loop devices: %v", l)
	}

	// The image removed behind the driver's back while it was down: the
	// start-up reconcile detaches the device.
	w := e.create("gone-restarted", 64*mib, blockCap(), nil, nil)
	e.stage(w)
	// And a live staged volume, which the reconcile must leave alone.
	live := e.create("live", 64*mib, blockCap(), nil, nil)
	e.stagePublish(live)
	liveDev := e.loopOf(live)
	e.proc.Kill()
	if err := os.Remove(e.image(w)); err != nil {
		t.Fatal(err)
	}
	if l := e.loops(); len(l) != 2 {
		t.Fatalf("loop devices %v; want the removed image's and the live one's", l)
	}
	e.proc.Restart(true)
	if l := e.loops(); len(l) != 1 || !strings.HasPrefix(l[0], liveDev+" ") {
		t.Errorf("after restart: loop devices %v; want only the live volume's %s", l, liveDev)
	}
	e.unpublishUnstage(live)
}

// TestGrowAtStage checks that staging grows a filesystem whose image is
// larger than it: a snapshot restored into a larger volume, and a volume
// expanded by the controller while it was not staged. No CO calls
// NodeExpandVolume for a restore, so stage is where it must happen.
func TestGrowAtStage(t *testing.T) {
	const small, large = 320 * mib, 512 * mib
	for _, fs := range []string{"ext4", "xfs", "btrfs"} {
		t.Run(fs, func(t *testing.T) {
			// ext4 grows offline, before the mount: no CAP_SYS_RESOURCE needed.
			e := newEnv(t, "btrfs", 2<<30)
			v := e.create("src-"+fs, small, mountCap(fs), nil, nil)
			e.stagePublish(v)
			sum := writeFile(t, filepath.Join(v.target, "data"), 4, 4*mib)
			smallTotal := statfsTotal(t, v.target)
			e.unpublishUnstage(v)

			snap, err := e.ctl.CreateSnapshot(e.ctx(), &csi.CreateSnapshotRequest{Name: "snap-" + fs, SourceVolumeId: v.GetVolumeId()})
			if err != nil {
				t.Fatal(err)
			}
			restored := e.create("restored-"+fs, large, mountCap(fs), nil, &csi.VolumeContentSource{
				Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshot().GetSnapshotId()}}})
			if _, err := e.ctl.ControllerExpandVolume(e.ctx(), &csi.ControllerExpandVolumeRequest{
				VolumeId: v.GetVolumeId(), CapacityRange: &csi.CapacityRange{RequiredBytes: large}}); err != nil {
				t.Fatal(err)
			}
			for _, c := range []*volume{restored, v} {
				e.stagePublish(c)
				if grown := statfsTotal(t, c.target) - smallTotal; grown < (large-small)*8/10 {
					t.Errorf("%s: filesystem is %d bytes larger than the %d MiB original, want about %d", c.GetVolumeId(), grown, small/mib, large-small)
				}
				if got := hashPrefix(t, filepath.Join(c.target, "data"), 4*mib); got != sum {
					t.Errorf("%s: data differs", c.GetVolumeId())
				}
				e.unpublishUnstage(c)
			}
		})
	}
}

// TestFailedStageLeavesNothing makes mkfs fail (an allowed option it
// cannot honour: a 1 GiB journal on a 64 MiB volume) and checks that the failed stage detached
// the loop device it attached and mounted nothing.
func TestFailedStageLeavesNothing(t *testing.T) {
	e := newEnv(t, "ext4", 1<<30)
	v := e.create("bad-mkfs", 64*mib, mountCap("ext4"), map[string]string{"mkfsOptions": "-J size=1024"}, nil)
	_, err := e.node.NodeStageVolume(e.ctx(), &csi.NodeStageVolumeRequest{
		VolumeId: v.GetVolumeId(), StagingTargetPath: v.staging, VolumeCapability: v.cap, VolumeContext: v.GetVolumeContext(),
	})
	if err == nil {
		t.Fatal("NodeStageVolume with a bad mkfs option succeeded")
	}
	if l := e.loops(); len(l) != 0 {
		t.Errorf("a failed stage left loop devices: %v", l)
	}
	if n := e.countMounts(v.staging); n != 0 {
		t.Errorf("a failed stage left %d mounts at the staging path", n)
	}
}

// TestBlockExpansionLeavesWorkloadFilesystem grows a block volume whose
// workload made its own filesystem on the raw device. NodeExpandVolume
// must make the device larger and leave that filesystem alone, whichever
// path the CO passes (Kubernetes passes a directory for block volumes).
func TestBlockExpansionLeavesWorkloadFilesystem(t *testing.T) {
	t.Run("all", func(t *testing.T) { testBlockExpansion(t, newEnv(t, "ext4", 1<<30)) })
	// The node has no store, so it cannot tell block from mount by record.
	t.Run("split", func(t *testing.T) { testBlockExpansion(t, newSplitEnv(t, "ext4", 1<<30)) })
}

func testBlockExpansion(t *testing.T, e *env) {
	v := e.create("raw", 64*mib, blockCap(), nil, nil)
	e.stagePublish(v)
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", v.target).CombinedOutput(); err != nil {
		t.Fatalf("the workload's mkfs: %v\n%s", err, out)
	}
	blocks := func() string {
		out, err := exec.Command("dumpe2fs", "-h", v.target).Output()
		if err != nil {
			t.Fatalf("dumpe2fs: %v", err)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "Block count:") {
				return l
			}
		}
		t.Fatal("dumpe2fs: no block count")
		return ""
	}
	before := blocks()
	size := int64(64 * mib)
	for _, path := range []string{v.staging, v.target} {
		size += 64 * mib
		if _, err := e.ctl.ControllerExpandVolume(e.ctx(), &csi.ControllerExpandVolumeRequest{
			VolumeId: v.GetVolumeId(), CapacityRange: &csi.CapacityRange{RequiredBytes: size}}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.node.NodeExpandVolume(e.ctx(), &csi.NodeExpandVolumeRequest{
			VolumeId: v.GetVolumeId(), VolumePath: path, StagingTargetPath: v.staging,
			CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeCapability: v.cap,
		}); err != nil {
			t.Fatalf("NodeExpandVolume(%s): %v", path, err)
		}
		if got, err := loopdev.Size(context.Background(), e.loopOf(v)); err != nil || got != size {
			t.Errorf("device size %d, %v after NodeExpandVolume(%s); want %d", got, err, path, size)
		}
		if after := blocks(); after != before {
			t.Errorf("NodeExpandVolume(%s) resized the workload's own filesystem: %q, was %q", path, after, before)
		}
	}
	e.unpublishUnstage(v)
}
