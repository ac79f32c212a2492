package driver

import (
	"context"
	"fmt"
	"os"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/store"
)

// Volume health (CSI 1.13 replaced the alpha VolumeCondition with these
// RPCs). A volume is INACCESSIBLE when its pool is not configured, its
// data is gone from disk, or its pool says it cannot be used as it is (an
// LVM LV that is inactive or partial: backend.HealthChecker), and DEGRADED
// when a published path on this node lost its mount. Health only reads:
// an inactive LV stays inactive, and abnormal, until NodeStageVolume
// activates it.

func healthEntry(status csi.VolumeHealthErrorType, reason, msg string) *csi.VolumeHealth_VolumeHealthEntry {
	return &csi.VolumeHealth_VolumeHealthEntry{Status: status, Reason: reason, Message: msg}
}

// volumeHealth checks that a volume's data is where the store says.
func (d *Driver) volumeHealth(ctx context.Context, v store.Volume) *csi.VolumeHealth {
	h := &csi.VolumeHealth{VolumeId: v.ID}
	pool, ok := d.pools[v.Pool]
	if !ok {
		h.HealthStatuses = append(h.HealthStatuses, healthEntry(csi.VolumeHealthErrorType_INACCESSIBLE,
			"PoolNotConfigured", fmt.Sprintf("pool %q is not configured on this node", v.Pool)))
		return h
	}
	h.HealthStatuses = append(h.HealthStatuses, d.dataHealth(ctx, pool, v.ID, nil)...)
	return h
}

// dataHealth checks that volume id's data is there and usable: by the
// pool's own check when it has one, else by finding its source (src, when
// the caller already has it) on disk.
func (d *Driver) dataHealth(ctx context.Context, pool backend.Backend, id string, src *backend.Source) []*csi.VolumeHealth_VolumeHealthEntry {
	if hc, ok := pool.(backend.HealthChecker); ok {
		c, err := hc.VolumeCondition(ctx, id)
		switch {
		case err != nil:
			return []*csi.VolumeHealth_VolumeHealthEntry{healthEntry(csi.VolumeHealthErrorType_INACCESSIBLE,
				"CheckFailed", fmt.Sprintf("the pool could not report the volume's state: %v", err))}
		case c.Abnormal:
			return []*csi.VolumeHealth_VolumeHealthEntry{healthEntry(csi.VolumeHealthErrorType_INACCESSIBLE, c.Reason, c.Message)}
		}
		return nil
	}
	var err error
	if src == nil {
		var s backend.Source
		if s, err = pool.Source(ctx, id); err == nil {
			src = &s
		}
	}
	if err == nil {
		_, err = os.Stat(src.Path)
	}
	if err != nil {
		return []*csi.VolumeHealth_VolumeHealthEntry{healthEntry(csi.VolumeHealthErrorType_INACCESSIBLE,
			"DataMissing", fmt.Sprintf("volume data is missing: %v", err))}
	}
	return nil
}

// ControllerGetVolumeHealth implements csi.ControllerServer.
func (d *Driver) ControllerGetVolumeHealth(ctx context.Context, req *csi.ControllerGetVolumeHealthRequest) (*csi.ControllerGetVolumeHealthResponse, error) {
	if err := requireID("volume_id", req.GetVolumeId()); err != nil {
		return nil, err
	}
	v, err := d.volumeRecord(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	return &csi.ControllerGetVolumeHealthResponse{VolumeHealth: d.volumeHealth(ctx, v)}, nil
}

// ControllerListVolumeHealth implements csi.ControllerServer: only
// abnormal volumes are listed, as the spec asks.
func (d *Driver) ControllerListVolumeHealth(ctx context.Context, req *csi.ControllerListVolumeHealthRequest) (*csi.ControllerListVolumeHealthResponse, error) {
	if req.GetMaxEntries() < 0 {
		return nil, invalid("max_entries must not be negative")
	}
	if t := req.GetStartingToken(); t != "" && !volumeIDPattern.MatchString(t) {
		return nil, fmt.Errorf("starting_token %q is not one this driver issued: %w", truncate(t), errdefs.ErrAborted)
	}
	// Records are read a chunk at a time, each in its own read
	// transaction, and checked outside it: a node of 100,000 volumes is
	// neither held in memory at once nor checked under a transaction. The
	// page ends after max_entries (a default when 0) abnormal volumes or at
	// the reply byte budget, with the next unchecked ID as the token.
	const chunk = 256
	limit := pageLimit(req.GetMaxEntries())
	resp := &csi.ControllerListVolumeHealthResponse{}
	used := 0
	from := req.GetStartingToken()
	for {
		var vols []store.Volume
		var next string
		if err := d.store.View(ctx, func(tx *store.Tx) (err error) { vols, next, err = tx.Volumes(from, chunk); return }); err != nil {
			return nil, err
		}
		for _, v := range vols {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			h := d.volumeHealth(ctx, v)
			if len(h.HealthStatuses) == 0 {
				continue
			}
			n := entrySize(h)
			if len(resp.Entries) == limit || !fits(used, n, len(resp.Entries)) {
				resp.NextToken = v.ID
				return resp, nil
			}
			used += n
			resp.Entries = append(resp.Entries, h)
		}
		if next == "" {
			return resp, nil
		}
		from = next
	}
}

// NodeGetVolumeHealth implements csi.NodeServer.
func (d *Driver) NodeGetVolumeHealth(ctx context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	if err := requireID("volume_id", req.GetVolumeId()); err != nil {
		return nil, err
	}
	nv, err := d.findVolume(ctx, req.GetVolumeId(), nil)
	if d.store != nil && (errdefs.Is(err, errdefs.ErrNotFound) || errdefs.Is(err, errdefs.ErrUnavailable)) {
		// A volume the store knows whose data is gone or unusable on this
		// node is abnormal, not unknown.
		if v, verr := d.volumeRecord(ctx, req.GetVolumeId()); verr == nil {
			return &csi.NodeGetVolumeHealthResponse{VolumeHealth: d.volumeHealth(ctx, v)}, nil
		}
	}
	if err != nil {
		return nil, err
	}
	h := &csi.VolumeHealth{VolumeId: nv.id}
	h.HealthStatuses = append(h.HealthStatuses, d.dataHealth(ctx, nv.b, nv.id, &nv.src)...)
	if p := req.GetVolumePublishPath(); p != "" {
		if err := requirePath("volume_publish_path", p); err != nil {
			return nil, err
		}
		id, err := d.node.IdentityOf(ctx, nv.src)
		if err != nil {
			return nil, err
		}
		st, err := d.node.Inspect(p, id)
		if err != nil {
			return nil, err
		}
		if !st.Mounted || !st.Ours {
			h.HealthStatuses = append(h.HealthStatuses, healthEntry(csi.VolumeHealthErrorType_DEGRADED,
				"NotMounted", fmt.Sprintf("volume is not mounted at %s", p)))
		}
	}
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: h}, nil
}
