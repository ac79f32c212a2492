package bench

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// definite reports whether a failed create certainly created nothing. A
// timeout, a cancelled call, a lost connection or an internal error may
// have left a resource behind whose ID the bench never learned.
func definite(err error) bool {
	switch status.Code(err) {
	case codes.InvalidArgument, codes.NotFound, codes.AlreadyExists, codes.PermissionDenied,
		codes.ResourceExhausted, codes.FailedPrecondition, codes.OutOfRange, codes.Unimplemented,
		codes.Unauthenticated:
		return true
	}
	return false
}

// askAgain repeats an idempotent create to learn what a lost call made.
// While the driver still works on the lost call it may answer ABORTED
// (the name is busy) or run out of time again, so it retries those until
// the cleanup's own deadline, with the timeout of the phase that made the
// call: a 1 GiB clone that outlived --timeout once will outlive it again.
func askAgain[Req, Resp any](ctx context.Context, r *runner, t callTimeout, fn func(context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	ctx = withCallTimeout(ctx, t)
	wait := 100 * time.Millisecond
	for {
		resp, err := callRPC(ctx, r, fn, req)
		switch status.Code(err) {
		case codes.Aborted, codes.DeadlineExceeded, codes.Unavailable:
			if ctx.Err() != nil {
				return resp, err
			}
			select {
			case <-ctx.Done():
				return resp, err
			case <-time.After(wait):
			}
			wait = min(2*wait, 5*time.Second)
			continue
		}
		return resp, err
	}
}

// trackedVolume is a volume the bench asked for.
type trackedVolume struct {
	req  *csi.CreateVolumeRequest
	undo *undoEntry

	mu  sync.Mutex
	vol *csi.Volume
	err error
}

func (t *trackedVolume) set(v *csi.Volume, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.vol, t.err = v, err
}

func (t *trackedVolume) get() (*csi.Volume, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.vol, t.err
}

func (t *trackedVolume) id() string {
	v, _ := t.get()
	return v.GetVolumeId()
}

// createVolume creates a volume, having first pushed its deletion.
func (r *runner) createVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*trackedVolume, time.Duration, error) {
	tv := &trackedVolume{req: req}
	t := r.timeoutOf(ctx)
	tv.undo = r.undo.push("delete volume "+req.GetName(), func(ctx context.Context) error {
		vol, err := tv.get()
		if vol == nil {
			if definite(err) {
				return nil
			}
			// CreateVolume is idempotent by name: asking again returns the
			// volume if the lost call made it (and makes it if not, which
			// the delete below then takes back).
			resp, err := askAgain(ctx, r, t, r.cl.Controller.CreateVolume, req)
			if err != nil {
				if definite(err) {
					return nil
				}
				return fmt.Errorf("cannot tell whether it was created: %w", err)
			}
			vol = resp.GetVolume()
		}
		_, err = askAgain(ctx, r, t, r.cl.Controller.DeleteVolume, &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId(), Secrets: r.cfg.Secrets})
		return err
	})
	start := time.Now()
	resp, err := callRPC(ctx, r, r.cl.Controller.CreateVolume, req)
	d := time.Since(start)
	tv.set(resp.GetVolume(), err)
	return tv, d, err
}

// deleteVolume deletes a volume as a measured step.
func (r *runner) deleteVolume(ctx context.Context, tv *trackedVolume) (time.Duration, error) {
	start := time.Now()
	_, err := callRPC(ctx, r, r.cl.Controller.DeleteVolume, &csi.DeleteVolumeRequest{VolumeId: tv.id(), Secrets: r.cfg.Secrets})
	d := time.Since(start)
	if err == nil {
		tv.undo.finish()
	}
	return d, err
}

// trackedSnapshot is a snapshot the bench asked for.
type trackedSnapshot struct {
	mu   sync.Mutex
	snap *csi.Snapshot
	err  error
}

func (t *trackedSnapshot) get() (*csi.Snapshot, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.snap, t.err
}

func (r *runner) createSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.Snapshot, time.Duration, error) {
	ts := &trackedSnapshot{}
	t := r.timeoutOf(ctx)
	r.undo.push("delete snapshot "+req.GetName(), func(ctx context.Context) error {
		snap, err := ts.get()
		if snap == nil {
			if definite(err) {
				return nil
			}
			resp, err := askAgain(ctx, r, t, r.cl.Controller.CreateSnapshot, req)
			if err != nil {
				if definite(err) {
					return nil
				}
				return fmt.Errorf("cannot tell whether it was created: %w", err)
			}
			snap = resp.GetSnapshot()
		}
		_, err = askAgain(ctx, r, t, r.cl.Controller.DeleteSnapshot, &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshotId(), Secrets: r.cfg.Secrets})
		return err
	})
	start := time.Now()
	resp, err := callRPC(ctx, r, r.cl.Controller.CreateSnapshot, req)
	d := time.Since(start)
	ts.mu.Lock()
	ts.snap, ts.err = resp.GetSnapshot(), err
	ts.mu.Unlock()
	return resp.GetSnapshot(), d, err
}

// readyTimeout bounds the wait for a snapshot to become ready to use
// (drivers that upload snapshots elsewhere can take minutes).
const readyTimeout = 30 * time.Minute

// waitReady polls until the snapshot is ready to use, as a CO does before
// restoring from it.
func (r *runner) waitReady(ctx context.Context, snap *csi.Snapshot) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	for !snap.GetReadyToUse() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("snapshot %s not ready to use: %w", snap.GetSnapshotId(), ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
		if r.ctlCaps[csi.ControllerServiceCapability_RPC_GET_SNAPSHOT] {
			resp, err := callRPC(ctx, r, r.cl.Controller.GetSnapshot, &csi.GetSnapshotRequest{SnapshotId: snap.GetSnapshotId()})
			if err != nil {
				return err
			}
			snap = resp.GetSnapshot()
			continue
		}
		resp, err := callRPC(ctx, r, r.cl.Controller.ListSnapshots, &csi.ListSnapshotsRequest{SnapshotId: snap.GetSnapshotId()})
		if err != nil {
			return err
		}
		if len(resp.GetEntries()) != 1 {
			return fmt.Errorf("ListSnapshots for %s returned %d entries", snap.GetSnapshotId(), len(resp.GetEntries()))
		}
		snap = resp.GetEntries()[0].GetSnapshot()
	}
	return nil
}

// attachment is a volume made usable on this node: where its data is,
// and the undo entries that take it back.
type attachment struct {
	vol      *csi.Volume
	pubCtx   map[string]string
	staging  string
	target   string
	dataPath string // the file (mount) or device (block) the bench writes

	ctlPublish, stage, publish *undoEntry
}

// stepTimes are the latencies of the calls of one attach or detach, by
// step name.
type stepTimes map[string]time.Duration

// attach does what a CO does to give a pod a volume: ControllerPublish
// (if advertised), NodeStage (if advertised) and NodePublish, creating
// the directories the spec makes the CO's job. Every call's undo is
// pushed first. times receives each call's latency.
func (r *runner) attach(ctx context.Context, vol *csi.Volume, name string, times stepTimes) (*attachment, error) {
	a := &attachment{vol: vol}
	dir := r.volumeDir(name)
	if err := r.makeDir(dir); err != nil {
		return a, err
	}
	id := vol.GetVolumeId()
	vc := r.capability()
	if r.ctlCaps[csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME] {
		a.ctlPublish = r.undo.push("controller-unpublish "+id, func(ctx context.Context) error {
			_, err := callRPC(ctx, r, r.cl.Controller.ControllerUnpublishVolume, &csi.ControllerUnpublishVolumeRequest{
				VolumeId: id, NodeId: r.nodeID, Secrets: r.cfg.Secrets})
			return err
		})
		start := time.Now()
		resp, err := callRPC(ctx, r, r.cl.Controller.ControllerPublishVolume, &csi.ControllerPublishVolumeRequest{
			VolumeId: id, NodeId: r.nodeID, VolumeCapability: vc, VolumeContext: vol.GetVolumeContext(), Secrets: r.cfg.Secrets})
		times["controller-publish"] = time.Since(start)
		if err != nil {
			return a, fmt.Errorf("ControllerPublishVolume: %w", err)
		}
		a.pubCtx = resp.GetPublishContext()
	}
	if r.nodeCaps[csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME] {
		a.staging = filepath.Join(dir, "staging")
		if err := r.makeDir(a.staging); err != nil {
			return a, err
		}
		staging := a.staging
		a.stage = r.undo.push("unstage "+id, func(ctx context.Context) error {
			_, err := callRPC(ctx, r, r.cl.Node.NodeUnstageVolume, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
			return err
		})
		start := time.Now()
		_, err := callRPC(ctx, r, r.cl.Node.NodeStageVolume, &csi.NodeStageVolumeRequest{
			VolumeId: id, StagingTargetPath: staging, VolumeCapability: vc,
			VolumeContext: vol.GetVolumeContext(), PublishContext: a.pubCtx, Secrets: r.cfg.Secrets})
		times["stage"] = time.Since(start)
		if err != nil {
			return a, fmt.Errorf("NodeStageVolume: %w", err)
		}
	}
	a.target = filepath.Join(dir, "target")
	target := a.target
	// The driver creates the target and should remove it on unpublish;
	// one that leaves it would otherwise keep dir from being removed.
	r.undo.push("remove "+target, func(context.Context) error { return removeIfExists(target) })
	a.publish = r.undo.push("unpublish "+id, func(ctx context.Context) error {
		_, err := callRPC(ctx, r, r.cl.Node.NodeUnpublishVolume, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
		return err
	})
	start := time.Now()
	_, err := callRPC(ctx, r, r.cl.Node.NodePublishVolume, &csi.NodePublishVolumeRequest{
		VolumeId: id, StagingTargetPath: a.staging, TargetPath: target, VolumeCapability: vc,
		VolumeContext: vol.GetVolumeContext(), PublishContext: a.pubCtx, Secrets: r.cfg.Secrets})
	times["publish"] = time.Since(start)
	if err != nil {
		return a, fmt.Errorf("NodePublishVolume: %w", err)
	}
	a.dataPath = target
	if r.cfg.AccessType == "mount" {
		a.dataPath = filepath.Join(target, "cairnctl-bench.dat")
	}
	return a, nil
}

// detach takes an attachment back in order, timing each call, and marks
// the undo entries done.
func (r *runner) detach(ctx context.Context, a *attachment, times stepTimes) error {
	id := a.vol.GetVolumeId()
	steps := []struct {
		name string
		u    *undoEntry
		call func(context.Context) error
	}{
		{"unpublish", a.publish, func(ctx context.Context) error {
			_, err := callRPC(ctx, r, r.cl.Node.NodeUnpublishVolume, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: a.target})
			return err
		}},
		{"unstage", a.stage, func(ctx context.Context) error {
			_, err := callRPC(ctx, r, r.cl.Node.NodeUnstageVolume, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: a.staging})
			return err
		}},
		{"controller-unpublish", a.ctlPublish, func(ctx context.Context) error {
			_, err := callRPC(ctx, r, r.cl.Controller.ControllerUnpublishVolume, &csi.ControllerUnpublishVolumeRequest{
				VolumeId: id, NodeId: r.nodeID, Secrets: r.cfg.Secrets})
			return err
		}},
	}
	for _, s := range steps {
		if s.u == nil {
			continue // the driver lacks this step
		}
		start := time.Now()
		err := s.call(ctx)
		times[s.name] = time.Since(start)
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		s.u.finish()
	}
	return nil
}

var errVerify = errors.New("the new volume's data differs from the source's")
