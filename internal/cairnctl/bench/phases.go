package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
)

// Phase names, stable for scripts reading --json-out.
const (
	PhaseCreateSequential = "create/sequential"
	PhaseDeleteSequential = "delete/sequential"
	PhaseCreateConcurrent = "create/concurrent"
	PhaseDeleteConcurrent = "delete/concurrent"
	PhaseLifecycle        = "lifecycle" // lifecycle/<step> and lifecycle/total
	PhaseDataWrite        = "data/write"
	PhaseDataSnapshot     = "data/snapshot"
	PhaseDataRestore      = "data/restore"
	PhaseDataClone        = "data/clone"
)

// parallel calls fn(i) for i in [0, n) from conc goroutines, and stops
// handing out work once ctx is done.
func parallel(ctx context.Context, n, conc int, fn func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(conc, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				fn(i)
			}
		}()
	}
	wg.Wait()
}

// createMany creates cfg.Volumes volumes with conc callers and records
// the phase; it returns the volumes that were created.
//
// With one caller and a floor rig, a floor round follows every create, so
// that the floor and the driver see the same load from whatever else the
// machine runs (measured minutes apart, the ratio moved with it); the
// rounds' time is not the phase's.
func (r *runner) createMany(ctx context.Context, phase, tag string, conc int) []*trackedVolume {
	var s sampler
	bar := startProgress(r.cfg.Progress, phase, int64(r.cfg.Volumes), false)
	floor := r.floor
	if conc != 1 {
		floor = nil
	}
	var floorBefore time.Duration
	if floor != nil {
		floorBefore = floor.elapsed
	}
	start := time.Now()
	out, _ := r.createSet(ctx, tag, r.cfg.Volumes, conc, func(d time.Duration, err error) {
		s.add(d, err)
		bar.add(1)
		if floor != nil {
			floor.step()
		}
	})
	elapsed := time.Since(start)
	if floor != nil {
		elapsed -= floor.elapsed - floorBefore
	}
	bar.end()
	if !s.empty() {
		p := s.phase(phase, conc, elapsed)
		if conc > 1 && r.cfg.Volumes < 20*conc {
			// Start and end, with fewer callers busy, are then much of
			// the phase: the rate understates what conc callers sustain.
			p.Note = fmt.Sprintf("only %d calls per caller; --volumes %d or more gives a steadier rate", r.cfg.Volumes/conc, 20*conc)
		}
		r.res.Phases = append(r.res.Phases, p)
	}
	return out
}

// createSet creates n volumes named by tag with conc callers, reports each
// call to each (when set), and returns the volumes made and the failures.
func (r *runner) createSet(ctx context.Context, tag string, n, conc int, each func(time.Duration, error)) ([]*trackedVolume, int) {
	made := make([]*trackedVolume, n)
	var failed atomic.Int64
	parallel(ctx, n, conc, func(i int) {
		tv, d, err := r.createVolume(ctx, r.createRequest(fmt.Sprintf("%s-%s-%d", r.cfg.Prefix, tag, i), r.cfg.CapacityBytes, nil))
		if each != nil {
			each(d, err)
		}
		if err == nil {
			made[i] = tv
		} else {
			failed.Add(1)
		}
	})
	var out []*trackedVolume
	for _, tv := range made {
		if tv != nil {
			out = append(out, tv)
		}
	}
	return out, int(failed.Load())
}

// deleteMany deletes vols with conc callers and records the phase.
func (r *runner) deleteMany(ctx context.Context, phase string, vols []*trackedVolume, conc int) {
	if len(vols) == 0 {
		return
	}
	var s sampler
	bar := startProgress(r.cfg.Progress, phase, int64(len(vols)), false)
	start := time.Now()
	parallel(ctx, len(vols), conc, func(i int) {
		d, err := r.deleteVolume(ctx, vols[i])
		s.add(d, err)
		bar.add(1)
	})
	elapsed := time.Since(start)
	bar.end()
	if !s.empty() && phase != "" {
		r.res.Phases = append(r.res.Phases, s.phase(phase, conc, elapsed))
	}
}

// throughputPhases: CreateVolume and DeleteVolume, one caller and then
// cfg.Concurrency callers.
func (r *runner) throughputPhases(ctx context.Context) error {
	vols := r.createMany(ctx, PhaseCreateSequential, "seq", 1)
	r.finishFloor(ctx)
	r.deleteMany(ctx, PhaseDeleteSequential, vols, 1)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if r.cfg.Concurrency == 1 {
		r.skip(PhaseCreateConcurrent, "--concurrency is 1")
		r.skip(PhaseDeleteConcurrent, "--concurrency is 1")
		return nil
	}
	vols = r.createMany(ctx, PhaseCreateConcurrent, "par", r.cfg.Concurrency)
	r.deleteMany(ctx, PhaseDeleteConcurrent, vols, r.cfg.Concurrency)
	return nil
}

// rssPhase reads the driver's memory with none of the bench's volumes,
// with half of cfg.RSSVolumes and with all of them, and reports the slope
// between the last two: the throughput phases before it have already
// paid the driver's start-up growth (connections, caches, the store's
// first pages), which a reading around the first creates would have
// shown as a per-volume cost.
func (r *runner) rssPhase(ctx context.Context) error {
	n := r.cfg.RSSVolumes
	if n == 0 {
		r.res.RSS = RSS{Reason: "--rss-volumes is 0"}
		return nil
	}
	before, err := r.measureRSS()
	if err != nil {
		r.res.RSS = RSS{Reason: err.Error()}
		return nil
	}
	half := max(n/2, 1)
	var vols []*trackedVolume
	var failed int
	add := func(tag string, k int) {
		made, errs := r.createSet(ctx, tag, k, r.cfg.Concurrency, nil)
		vols = append(vols, made...)
		failed += errs
	}
	add("rss-a", half)
	mid, errMid := r.measureRSS()
	if n > half {
		add("rss-b", n-half)
	}
	after, errAfter := r.measureRSS()
	defer r.deleteMany(ctx, "", vols, r.cfg.Concurrency)
	r.listPhase(ctx, len(vols))
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case failed > 0:
		r.res.RSS = RSS{Reason: fmt.Sprintf("%d of the %d creates failed", failed, n)}
	case errMid != nil || errAfter != nil:
		r.res.RSS = RSS{Reason: errors.Join(errMid, errAfter).Error()}
	default:
		r.res.RSS = RSS{Known: true, PID: r.res.RSS.PID, BeforeBytes: before, MidBytes: mid, AfterBytes: after,
			MidVolumes: half, Volumes: n}
		if n > half {
			r.res.RSS.BytesPerVolume = float64(after-mid) / float64(n-half)
		}
	}
	return nil
}

// nodeSkipReason says why phases that need the node cannot run, or "".
func (r *runner) nodeSkipReason() string {
	switch {
	case !r.nodeServed:
		return "the endpoint serves no node service (give --endpoint the node's socket)"
	case r.cfg.WorkDir == "":
		return "needs --work-dir for staging and target paths"
	}
	return ""
}

// lifecycleSteps are the calls of one lifecycle, in order.
var lifecycleSteps = []string{"create", "controller-publish", "stage", "publish", "unpublish", "unstage", "controller-unpublish", "delete"}

// lifecyclePhase times cfg.LifecycleRuns full lifecycles, one at a time.
func (r *runner) lifecyclePhase(ctx context.Context) error {
	if r.cfg.LifecycleRuns == 0 {
		r.skip(PhaseLifecycle, "--lifecycle-runs is 0")
		return nil
	}
	if why := r.nodeSkipReason(); why != "" {
		r.skip(PhaseLifecycle, why)
		return nil
	}
	if err := os.MkdirAll(r.cfg.WorkDir, 0o750); err != nil {
		return fmt.Errorf("--work-dir: %w", err)
	}
	if !r.ctlCaps[csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME] {
		r.skip(PhaseLifecycle+"/controller-publish", "the controller does not advertise PUBLISH_UNPUBLISH_VOLUME (node-local drivers need none)")
	}
	if !r.nodeCaps[csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME] {
		r.skip(PhaseLifecycle+"/stage", "the node does not advertise STAGE_UNSTAGE_VOLUME")
	}
	samplers := map[string]*sampler{}
	for _, s := range append(lifecycleSteps, "total") {
		samplers[s] = &sampler{}
	}
	bar := startProgress(r.cfg.Progress, PhaseLifecycle, int64(r.cfg.LifecycleRuns), false)
	start := time.Now()
	for i := range r.cfg.LifecycleRuns {
		if ctx.Err() != nil {
			break
		}
		mark := r.undo.mark()
		times := stepTimes{}
		failed, err := r.lifecycleOnce(ctx, i, times)
		var total time.Duration
		for step, d := range times {
			var stepErr error
			if step == failed {
				stepErr = err
			}
			samplers[step].add(d, stepErr)
			total += d
		}
		samplers["total"].add(total, err)
		if ctx.Err() == nil {
			// Take back this lifecycle's leftovers now (its directories,
			// or what a failed step left), so the next starts clean.
			n, errs := r.undo.unwindTo(ctx, mark)
			r.res.Cleanup.Actions += n
			for _, e := range errs {
				r.res.Cleanup.Errors = append(r.res.Cleanup.Errors, e.Error())
			}
		}
		bar.add(1)
	}
	elapsed := time.Since(start)
	bar.end()
	for _, step := range append(lifecycleSteps, "total") {
		s := samplers[step]
		if s.empty() {
			continue // a step the driver does not have
		}
		// A step's time is the sum of its own calls, so that its ops/s is
		// its own rate; only the total counts the whole phase's wall time.
		t := s.sum()
		if step == "total" {
			t = elapsed
		}
		r.res.Phases = append(r.res.Phases, s.phase(PhaseLifecycle+"/"+step, 1, t))
	}
	return nil
}

// lifecycleOnce runs one lifecycle. On failure it returns the failing
// step's name and the error; its latency is in times too.
func (r *runner) lifecycleOnce(ctx context.Context, i int, times stepTimes) (string, error) {
	name := fmt.Sprintf("%s-life-%d", r.cfg.Prefix, i)
	tv, d, err := r.createVolume(ctx, r.createRequest(name, r.cfg.CapacityBytes, nil))
	times["create"] = d
	if err != nil {
		return "create", err
	}
	vol, _ := tv.get()
	a, err := r.attach(ctx, vol, name, times)
	if err != nil {
		return lastStep(times), err
	}
	if err := r.detach(ctx, a, times); err != nil {
		return lastStep(times), err
	}
	times["delete"], err = r.deleteVolume(ctx, tv)
	if err != nil {
		return "delete", err
	}
	return "", nil
}

// lastStep is the latest lifecycle step that has a time: the one that
// failed, since attach and detach stop at the first failure.
func lastStep(times stepTimes) string {
	last := ""
	for _, s := range lifecycleSteps {
		if _, ok := times[s]; ok {
			last = s
		}
	}
	return last
}

// dataCapacity is the size of the data phases' volumes: room for the data
// plus a filesystem's overhead.
func (r *runner) dataCapacity() int64 {
	need := r.cfg.DataBytes
	if r.cfg.AccessType == "mount" {
		need += max(need/4, 32<<20)
	}
	need = (need + (1<<20 - 1)) &^ (1<<20 - 1)
	return max(need, r.cfg.CapacityBytes)
}

// dataPhases writes cfg.DataBytes through a published volume, then times
// a snapshot of it, a restore of the snapshot and a clone of the volume,
// checking that the new volumes hold the same bytes.
func (r *runner) dataPhases(ctx context.Context) error {
	if r.cfg.DataBytes == 0 {
		r.skip("data", "--data-size is 0")
		return nil
	}
	if why := r.nodeSkipReason(); why != "" {
		r.skip("data", why)
		return nil
	}
	if err := os.MkdirAll(r.cfg.WorkDir, 0o750); err != nil {
		return fmt.Errorf("--work-dir: %w", err)
	}
	// Copies of DataBytes take as long as the driver's disk needs, not a
	// small call's --timeout; cleanup of what they made uses it too.
	ctx = withCallTimeout(ctx, callTimeout{r.cfg.DataTimeout, "--data-timeout"})
	failed := func(phase string, err error) {
		r.res.Phases = append(r.res.Phases, Phase{Name: phase, Errors: 1, Concurrency: 1, FirstError: err.Error()})
	}
	name := r.cfg.Prefix + "-data-src"
	src, _, err := r.createVolume(ctx, r.createRequest(name, r.dataCapacity(), nil))
	if err != nil {
		failed(PhaseDataWrite, fmt.Errorf("create the source volume: %w", err))
		return nil
	}
	srcVol, _ := src.get()
	a, err := r.attach(ctx, srcVol, name, stepTimes{})
	if err != nil {
		failed(PhaseDataWrite, fmt.Errorf("attach the source volume: %w", err))
		return nil
	}
	bar := startProgress(r.cfg.Progress, PhaseDataWrite, r.cfg.DataBytes, true)
	start := time.Now()
	sum, err := writeRandom(ctx, a.dataPath, r.cfg.DataBytes, bar)
	d := time.Since(start)
	bar.end()
	if err != nil {
		failed(PhaseDataWrite, err)
		return nil
	}
	var s sampler
	s.add(d, nil)
	w := s.phase(PhaseDataWrite, 1, d)
	w.Bytes, w.BytesPerSecond = r.cfg.DataBytes, float64(r.cfg.DataBytes)/d.Seconds()
	w.Note = "written through NodePublishVolume's target, fsync'd"
	r.res.Phases = append(r.res.Phases, w)

	var snap *csi.Snapshot
	if !r.ctlCaps[csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT] {
		r.skip(PhaseDataSnapshot, "the controller does not advertise CREATE_DELETE_SNAPSHOT")
		r.skip(PhaseDataRestore, "no snapshot to restore (CREATE_DELETE_SNAPSHOT)")
	} else {
		snap = r.snapshotPhase(ctx, srcVol)
		if snap == nil {
			r.skip(PhaseDataRestore, "the snapshot failed")
		}
	}
	if snap != nil && ctx.Err() == nil {
		r.copyPhase(ctx, PhaseDataRestore, "restore", srcVol, sum, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshotId()}}})
	}
	if !r.ctlCaps[csi.ControllerServiceCapability_RPC_CLONE_VOLUME] {
		r.skip(PhaseDataClone, "the controller does not advertise CLONE_VOLUME")
	} else if ctx.Err() == nil {
		r.copyPhase(ctx, PhaseDataClone, "clone", srcVol, sum, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: srcVol.GetVolumeId()}}})
	}
	return nil
}

// snapshotPhase times CreateSnapshot until the snapshot is ready to use.
func (r *runner) snapshotPhase(ctx context.Context, src *csi.Volume) *csi.Snapshot {
	var s sampler
	start := time.Now()
	snap, created, err := r.createSnapshot(ctx, &csi.CreateSnapshotRequest{
		Name: r.cfg.Prefix + "-snap", SourceVolumeId: src.GetVolumeId(), Secrets: r.cfg.Secrets})
	if err == nil {
		err = r.waitReady(ctx, snap)
	}
	d := time.Since(start)
	s.add(d, err)
	p := s.phase(PhaseDataSnapshot, 1, d)
	if err != nil {
		r.res.Phases = append(r.res.Phases, p)
		return nil
	}
	p.Bytes = r.cfg.DataBytes
	if wait := d - created; wait > time.Millisecond {
		p.Note = fmt.Sprintf("CreateSnapshot %s, then ready to use after %s", fmtDuration(created), fmtDuration(wait))
	}
	r.res.Phases = append(r.res.Phases, p)
	return snap
}

// copyPhase times a CreateVolume from content (restore or clone), then
// reads the new volume back and compares it with the source's data.
func (r *runner) copyPhase(ctx context.Context, phase, tag string, src *csi.Volume, want []byte, content *csi.VolumeContentSource) {
	var s sampler
	name := r.cfg.Prefix + "-" + tag
	tv, d, err := r.createVolume(ctx, r.createRequest(name, src.GetCapacityBytes(), content))
	s.add(d, err)
	p := s.phase(phase, 1, d)
	if err != nil {
		r.res.Phases = append(r.res.Phases, p)
		return
	}
	p.Bytes = r.cfg.DataBytes
	vol, _ := tv.get()
	ok, err := r.verify(ctx, vol, name, want)
	p.Verified = &ok
	switch {
	case err != nil:
		p.Note = "could not verify: " + err.Error()
	case !ok:
		p.Note = errVerify.Error()
	case r.cfg.DropCaches:
		p.Note = "data verified (sha256), read after dropping the page cache"
	default:
		p.Note = "data verified (sha256), read with the page cache as it was (no --drop-caches)"
	}
	r.res.Phases = append(r.res.Phases, p)
}

// verify attaches vol, hashes its first DataBytes and detaches it again.
func (r *runner) verify(ctx context.Context, vol *csi.Volume, name string, want []byte) (bool, error) {
	mark := r.undo.mark()
	defer func() {
		if ctx.Err() == nil {
			n, errs := r.undo.unwindTo(ctx, mark)
			r.res.Cleanup.Actions += n
			for _, e := range errs {
				r.res.Cleanup.Errors = append(r.res.Cleanup.Errors, e.Error())
			}
		}
	}()
	a, err := r.attach(ctx, vol, name, stepTimes{})
	if err != nil {
		return false, err
	}
	if r.cfg.DropCaches {
		if err := dropCaches(); err != nil {
			return false, fmt.Errorf("--drop-caches: %w", err)
		}
	}
	got, err := hashFile(ctx, a.dataPath, r.cfg.DataBytes)
	if err != nil {
		return false, err
	}
	return bytes.Equal(got, want), r.detach(ctx, a, stepTimes{})
}

// writeRandom writes n random bytes to path (a file it creates, or a
// device), fsyncs, and returns their sha256. ChaCha8 rather than
// crypto/rand keeps the generator far faster than any disk.
func writeRandom(ctx context.Context, path string, n int64, bar *progress) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var seed [32]byte
	rand.Read(seed[:])
	rng := mrand.NewChaCha8(seed)
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for left := n; left > 0; {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		chunk := buf[:min(int64(len(buf)), left)]
		rng.Read(chunk)
		if _, err := f.Write(chunk); err != nil {
			return nil, fmt.Errorf("write %s: %w", path, err)
		}
		h.Write(chunk)
		left -= int64(len(chunk))
		bar.add(int64(len(chunk)))
	}
	if err := f.Sync(); err != nil {
		return nil, fmt.Errorf("fsync %s: %w", path, err)
	}
	return h.Sum(nil), f.Close()
}

// hashFile returns the sha256 of the first n bytes of path.
func hashFile(ctx context.Context, path string, n int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(h, ctxReader{ctx, f}, n); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return h.Sum(nil), nil
}

// ctxReader stops a long read when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// dropCaches writes dirty pages back and drops the clean page cache, so
// that a read-back measures the disk, not memory (root only).
func dropCaches() error {
	unix.Sync()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0)
}
