package reboot

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/projquota"
	"github.com/cairn-csi/cairn/internal/testfs"
)

const mib = 1 << 20

// TestQuotaSurvivesReboot: on a dir pool whose filesystem has project
// quota (ext4 -O quota,project, XFS), a volume's size limit is on disk,
// not in cairn or the kernel's memory. The node goes down (cairn killed,
// every mount gone, the pool filesystem unmounted) and comes back (the
// filesystem mounted again, cairn restarted): the volume stages and
// publishes with its data, keeps its project ID and limit, and a write
// past the limit still fails (EDQUOT on ext4, ENOSPC on XFS). Kernels
// without quota support skip it; the VM lane (hack/vm-lane.sh) runs it.
func TestQuotaSurvivesReboot(t *testing.T) {
	for _, kind := range []string{"ext4-prjquota", "xfs"} {
		t.Run(kind, func(t *testing.T) {
			testfs.RequireRoot(t)
			fs := testfs.NewFS(t, kind, 512<<20)
			pool := filepath.Join(fs.MountPoint, "pool")
			n := startOn(t, pool)
			resp, err := n.ctl.CreateVolume(n.ctx, &csi.CreateVolumeRequest{Name: "q", VolumeCapabilities: []*csi.VolumeCapability{mountCap},
				CapacityRange: &csi.CapacityRange{RequiredBytes: 16 * mib}})
			must(t, "CreateVolume", err)
			if got := resp.GetVolume().GetVolumeContext()["cairn.csi.dev/capacityEnforced"]; got != "true" {
				t.Fatalf("capacityEnforced = %q on %s; want \"true\"", got, kind)
			}
			id := resp.GetVolume().GetVolumeId()
			staging, target := n.staging(id), n.target(id)
			must(t, "stage", n.stage(id, staging))
			must(t, "publish", n.publish(id, staging, target))
			data := randomData(t)
			must(t, "write", os.WriteFile(filepath.Join(target, "data"), data, 0o644))
			proj, err := projquota.GetProject(n.ctx, target)
			if err != nil || proj == 0 {
				t.Fatalf("project of the volume: %d, %v", proj, err)
			}
			limitBefore := limitOf(t, fs.MountPoint, proj)

			// The reboot: cairn gone, mounts gone, the filesystem too.
			n.proc.Kill()
			unmountUnder(n.root)
			fs.Remount(t)
			if mounts(staging) != 0 || mounts(target) != 0 {
				t.Fatal("mounts came back by themselves")
			}
			n.proc.Restart(true)
			n.dial()

			must(t, "stage after reboot", n.stage(id, staging))
			must(t, "publish after reboot", n.publish(id, staging, target))
			if got, err := os.ReadFile(filepath.Join(target, "data")); err != nil || !bytes.Equal(got, data) {
				t.Errorf("data after reboot: %d bytes, %v", len(got), err)
			}
			if got, err := projquota.GetProject(n.ctx, target); err != nil || got != proj {
				t.Errorf("project after reboot: %d, %v; want %d", got, err, proj)
			}
			if got := limitOf(t, fs.MountPoint, proj); got != limitBefore || got < 16*mib {
				t.Errorf("limit after reboot: %d bytes; want %d as before (>= 16 MiB)", got, limitBefore)
			}
			stats, err := n.node.NodeGetVolumeStats(n.ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target})
			must(t, "NodeGetVolumeStats", err)
			if total := stats.GetUsage()[0].GetTotal(); total != 16*mib {
				t.Errorf("NodeGetVolumeStats total after reboot = %d; want the 16 MiB limit", total)
			}
			want := unix.EDQUOT
			if kind == "xfs" {
				want = unix.ENOSPC
			}
			written, err := writeUnprivileged(filepath.Join(target, "big"), 32*mib)
			if !errors.Is(err, want) {
				t.Errorf("writing 32 MiB into the 16 MiB volume after reboot: wrote %d bytes, err %v; want %v", written, err, want)
			}
			must(t, "remove", os.Remove(filepath.Join(target, "big")))

			must(t, "unpublish", n.unpublish(id, target))
			must(t, "unstage", n.unstage(id, staging))
			_, err = n.ctl.DeleteVolume(n.ctx, &csi.DeleteVolumeRequest{VolumeId: id})
			must(t, "delete", err)
		})
	}
}

func limitOf(t *testing.T, mnt string, proj uint32) uint64 {
	t.Helper()
	_, limit, _, err := projquota.Usage(t.Context(), mnt, proj)
	if err != nil {
		t.Fatalf("quota of project %d: %v", proj, err)
	}
	return limit
}

// writeUnprivileged writes n bytes to path, synced, from an OS thread
// without CAP_SYS_RESOURCE, as a pod's process would (ext4 lets holders of
// it past hard limits). It returns how many bytes write(2) accepted.
func writeUnprivileged(path string, n int64) (written int64, err error) {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var caps [2]unix.CapUserData
		if err := unix.Capget(&hdr, &caps[0]); err != nil {
			errc <- fmt.Errorf("capget: %w", err)
			return
		}
		caps[unix.CAP_SYS_RESOURCE/32].Effective &^= 1 << (unix.CAP_SYS_RESOURCE % 32)
		if err := unix.Capset(&hdr, &caps[0]); err != nil {
			errc <- fmt.Errorf("capset: %w", err)
			return
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		buf := bytes.Repeat([]byte{0x5a}, mib)
		for written < n {
			m, err := f.Write(buf[:min(int64(len(buf)), n-written)])
			written += int64(m)
			if err != nil {
				errc <- err
				return
			}
		}
		errc <- f.Sync()
	}()
	err = <-errc
	return written, err
}
