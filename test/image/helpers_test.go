//go:build linux

package image

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/loopdev"
	"github.com/cairn-csi/cairn/internal/testdriver"
	"github.com/cairn-csi/cairn/internal/testfs"
)

const mib = 1 << 20

// env is one cairn process serving one image pool, which lives on a
// loop-file filesystem of its own.
type env struct {
	t    testing.TB
	dir  string // the test's directory: staging and target paths are under it
	mnt  string // the pool filesystem's mount point
	pool string // the pool's path
	proc *testdriver.Process
	ctl  csi.ControllerClient
	node csi.NodeClient
	// secrets go with every CreateVolume and NodeStageVolume (encrypted
	// volumes).
	secrets map[string]string
}

// newEnv starts cairn with an image pool on a fresh poolFS filesystem of
// size bytes (sparse: it costs what the test writes).
func newEnv(t testing.TB, poolFS string, size int64, mkfsArgs ...string) *env {
	t.Helper()
	return startEnv(t, false, poolFS, size, mkfsArgs...)
}

// newSplitEnv is newEnv with the controller and the node in two processes:
// the node has no store and learns about volumes from the volume context.
// proc is the node process.
func newSplitEnv(t testing.TB, poolFS string, size int64, mkfsArgs ...string) *env {
	t.Helper()
	return startEnv(t, true, poolFS, size, mkfsArgs...)
}

func startEnv(t testing.TB, split bool, poolFS string, size int64, mkfsArgs ...string) *env {
	t.Helper()
	testfs.RequireRoot(t)
	e := &env{t: t, dir: t.TempDir(), mnt: testfs.New(t, poolFS, size, mkfsArgs...)}
	e.pool = filepath.Join(e.mnt, "pool")
	// LUKS formats with a fast KDF in tests: Argon2id under emulation
	// takes seconds per key slot.
	opts := testdriver.Options{DataDir: filepath.Join(e.dir, "data"), Pools: []string{"default=image:" + e.pool}, Env: []string{"CAIRN_LUKS_FAST_KDF=1"}}
	if split {
		opts.Mode = "controller"
		ctl := testdriver.Start(t, opts)
		e.ctl = csi.NewControllerClient(ctl.Dial())
		opts.Mode = "node"
		e.proc = testdriver.Start(t, opts)
		e.node = csi.NewNodeClient(e.proc.Dial())
	} else {
		e.proc = testdriver.Start(t, opts)
		conn := e.proc.Dial()
		e.ctl, e.node = csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	}
	// Undo whatever a failing test left staged, before testfs unmounts the
	// pool filesystem under it (cleanups run last-in first-out): the
	// test's mounts first, then the loop devices on the pool's images.
	t.Cleanup(func() {
		for _, mp := range e.mountsUnder() {
			if strings.HasPrefix(mp, e.dir+"/") {
				unix.Unmount(mp, unix.MNT_DETACH)
			}
		}
		for _, d := range e.loopsOnPool() {
			loopdev.Detach(context.Background(), d)
		}
	})
	return e
}

func (e *env) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	e.t.Cleanup(cancel)
	return ctx
}

func mountCap(fsType string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fsType}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

func blockCap() *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

// volume is a created volume and where the test stages and publishes it.
type volume struct {
	*csi.Volume
	cap     *csi.VolumeCapability
	staging string
	target  string
}

func (v *volume) block() bool { return v.cap.GetBlock() != nil }

func (e *env) create(name string, size int64, cap *csi.VolumeCapability, params map[string]string, src *csi.VolumeContentSource) *volume {
	e.t.Helper()
	resp, err := e.ctl.CreateVolume(e.ctx(), &csi.CreateVolumeRequest{
		Name:                name,
		CapacityRange:       &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities:  []*csi.VolumeCapability{cap},
		Parameters:          params,
		VolumeContentSource: src,
		Secrets:             e.secrets,
	})
	if err != nil {
		e.t.Fatalf("CreateVolume(%s): %v", name, err)
	}
	v := &volume{Volume: resp.GetVolume(), cap: cap,
		staging: filepath.Join(e.dir, name, "staging"), target: filepath.Join(e.dir, name, "pod", "target")}
	if err := os.MkdirAll(v.staging, 0o750); err != nil { // the CO makes the staging directory
		e.t.Fatal(err)
	}
	return v
}

func (e *env) image(v *volume) string { return filepath.Join(e.pool, "volumes", v.GetVolumeId()) }

func (e *env) stage(v *volume) {
	e.t.Helper()
	_, err := e.node.NodeStageVolume(e.ctx(), &csi.NodeStageVolumeRequest{
		VolumeId: v.GetVolumeId(), StagingTargetPath: v.staging, VolumeCapability: v.cap, VolumeContext: v.GetVolumeContext(),
		Secrets: e.secrets,
	})
	if err != nil {
		e.t.Fatalf("NodeStageVolume(%s): %v\nlog tail:\n%s", v.GetVolumeId(), err, tail(e.proc.Log(), 20))
	}
}

func (e *env) publish(v *volume) {
	e.t.Helper()
	_, err := e.node.NodePublishVolume(e.ctx(), &csi.NodePublishVolumeRequest{
		VolumeId: v.GetVolumeId(), StagingTargetPath: v.staging, TargetPath: v.target, VolumeCapability: v.cap, VolumeContext: v.GetVolumeContext(),
	})
	if err != nil {
		e.t.Fatalf("NodePublishVolume(%s): %v\nlog tail:\n%s", v.GetVolumeId(), err, tail(e.proc.Log(), 20))
	}
}

func (e *env) unpublish(v *volume) {
	e.t.Helper()
	if _, err := e.node.NodeUnpublishVolume(e.ctx(), &csi.NodeUnpublishVolumeRequest{VolumeId: v.GetVolumeId(), TargetPath: v.target}); err != nil {
		e.t.Fatalf("NodeUnpublishVolume(%s): %v", v.GetVolumeId(), err)
	}
}

func (e *env) unstage(v *volume) {
	e.t.Helper()
	if _, err := e.node.NodeUnstageVolume(e.ctx(), &csi.NodeUnstageVolumeRequest{VolumeId: v.GetVolumeId(), StagingTargetPath: v.staging}); err != nil {
		e.t.Fatalf("NodeUnstageVolume(%s): %v", v.GetVolumeId(), err)
	}
}

func (e *env) stagePublish(v *volume)     { e.t.Helper(); e.stage(v); e.publish(v) }
func (e *env) unpublishUnstage(v *volume) { e.t.Helper(); e.unpublish(v); e.unstage(v) }

// loopOf returns the one loop device the volume's image is attached to.
func (e *env) loopOf(v *volume) string {
	e.t.Helper()
	devs, err := loopdev.FindByBackingFile(context.Background(), e.image(v))
	if err != nil || len(devs) != 1 {
		e.t.Fatalf("loop devices of %s: %v, %v; want exactly one", e.image(v), devs, err)
	}
	return devs[0].Path
}

// mountsUnder returns the mount points in /proc/self/mountinfo under the
// test's directory, bottom first. Other test binaries mount elsewhere.
func (e *env) mountsUnder() []string {
	var out []string
	for _, l := range e.mountinfo() {
		out = append(out, strings.Fields(l)[4])
	}
	slices.Reverse(out)
	return out
}

// mountinfo returns the lines of /proc/self/mountinfo whose mount point is
// under the test's directory or is the pool filesystem, as they are.
func (e *env) mountinfo() []string {
	e.t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 5 {
			continue
		}
		if mp := f[4]; strings.HasPrefix(mp, e.dir+"/") || mp == e.mnt || strings.HasPrefix(mp, e.mnt+"/") {
			out = append(out, sc.Text())
		}
	}
	return out
}

// loops returns the loop devices whose backing file is in the pool, as
// "device backing-file deleted=bool".
func (e *env) loops() []string {
	e.t.Helper()
	devs, err := loopdev.List(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, d := range devs {
		if strings.HasPrefix(d.BackingFile, e.pool+"/") {
			out = append(out, fmt.Sprintf("%s %s deleted=%t", d.Path, d.BackingFile, d.Deleted))
		}
	}
	return out
}

// loopsOnPool returns the device paths of loops().
func (e *env) loopsOnPool() []string {
	var out []string
	for _, l := range e.loops() {
		out = append(out, strings.Fields(l)[0])
	}
	return out
}

// countMounts returns how many mounts are stacked at path.
func (e *env) countMounts(path string) int {
	n := 0
	for _, mp := range e.mountsUnder() {
		if mp == path {
			n++
		}
	}
	return n
}

// writeRandom writes n pseudo-random bytes (seeded) to w and returns their
// SHA-256.
func writeRandom(t testing.TB, w io.Writer, seed uint64, n int64) [sha256.Size]byte {
	t.Helper()
	h := sha256.New()
	var key [32]byte
	key[0] = byte(seed)
	key[1] = byte(seed >> 8)
	if _, err := io.Copy(io.MultiWriter(w, h), io.LimitReader(rand.NewChaCha8(key), n)); err != nil {
		t.Fatal(err)
	}
	return [sha256.Size]byte(h.Sum(nil))
}

// writeFile writes n random bytes to path, synced, and returns their hash.
func writeFile(t testing.TB, path string, seed uint64, n int64) [sha256.Size]byte {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	sum := writeRandom(t, f, seed, n)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return sum
}

// writeDevice writes n random bytes at the start of the block device (or
// device bind mount) at path, synced, and returns their hash.
func writeDevice(t testing.TB, path string, seed uint64, n int64) [sha256.Size]byte {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	sum := writeRandom(t, f, seed, n)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return sum
}

// hashPrefix returns the SHA-256 of the first n bytes of path.
func hashPrefix(t testing.TB, path string, n int64) [sha256.Size]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if got, err := io.Copy(h, io.LimitReader(f, n)); err != nil || got != n {
		t.Fatalf("read %s: %d bytes, %v; want %d", path, got, err, n)
	}
	return [sha256.Size]byte(h.Sum(nil))
}

func statfsTotal(t testing.TB, path string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Blocks) * int64(st.Bsize)
}

// requireCap skips the test unless this process has capability c, which
// the kernel requires for what the test does (why); in the VM lane,
// which has it, it fails instead (testfs.SkipKernel).
func requireCap(t testing.TB, c int, name, why string) {
	t.Helper()
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			bits, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			if bits&(1<<c) == 0 {
				testfs.SkipKernel(t, "environment: this process lacks %s, which the kernel requires %s", name, why)
			}
			return
		}
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
