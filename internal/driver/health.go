package driver

import (
	"context"
	"fmt"
	"os"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/store"
)

// Volume health (CSI 1.13 replaced the alpha VolumeCondition with these
// RPCs). A volume is INACCESSIBLE when its pool is not configured or its
// data is gone from disk, and DEGRADED when a published path on this node
// lost its mount.

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
	src, err := pool.Source(ctx, v.ID)
	if err == nil {
		_, err = os.Stat(src.Path)
	}
	if err != nil {
		h.HealthStatuses = append(h.HealthStatuses, healthEntry(csi.VolumeHealthErrorType_INACCESSIBLE,
			"DataMissing", fmt.Sprintf("volume data is missing: %v", err)))
	}
	return h
}

// ControllerGetVolumeHealth implements csi.ControllerServer.
func (d *Driver) ControllerGetVolumeHealth(ctx context.Context, req *csi.ControllerGetVolumeHealthRequest) (*csi.ControllerGetVolumeHealthResponse, error) {
	if err := requireID("volume_id", req.GetVolumeId()); err != nil {
		return nil, toStatus(err)
	}
	v, err := d.volumeRecord(ctx, req.GetVolumeId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.ControllerGetVolumeHealthResponse{VolumeHealth: d.volumeHealth(ctx, v)}, nil
}

// ControllerListVolumeHealth implements csi.ControllerServer: only
// abnormal volumes are listed, as the spec asks.
func (d *Driver) ControllerListVolumeHealth(ctx context.Context, req *csi.ControllerListVolumeHealthRequest) (*csi.ControllerListVolumeHealthResponse, error) {
	if req.GetMaxEntries() < 0 {
		return nil, toStatus(invalid("max_entries must not be negative"))
	}
	if t := req.GetStartingToken(); t != "" && !volumeIDPattern.MatchString(t) {
		return nil, toStatus(fmt.Errorf("starting_token %q is not one this driver issued: %w", truncate(t), errdefs.ErrAborted))
	}
	var vols []store.Volume
	if err := d.store.View(ctx, func(tx *store.Tx) (err error) { vols, _, err = tx.Volumes(req.GetStartingToken(), 0); return }); err != nil {
		return nil, toStatus(err)
	}
	resp := &csi.ControllerListVolumeHealthResponse{}
	for _, v := range vols {
		h := d.volumeHealth(ctx, v)
		if len(h.HealthStatuses) == 0 {
			continue
		}
		if max := int(req.GetMaxEntries()); max > 0 && len(resp.Entries) == max {
			resp.NextToken = v.ID
			break
		}
		resp.Entries = append(resp.Entries, h)
	}
	return resp, nil
}

// NodeGetVolumeHealth implements csi.NodeServer.
func (d *Driver) NodeGetVolumeHealth(ctx context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	if err := requireID("volume_id", req.GetVolumeId()); err != nil {
		return nil, toStatus(err)
	}
	nv, err := d.findVolume(ctx, req.GetVolumeId(), nil)
	if err != nil {
		return nil, toStatus(err)
	}
	h := &csi.VolumeHealth{VolumeId: nv.id}
	if _, err := os.Stat(nv.src.Path); err != nil {
		h.HealthStatuses = append(h.HealthStatuses, healthEntry(csi.VolumeHealthErrorType_INACCESSIBLE, "DataMissing", err.Error()))
	}
	if p := req.GetVolumePublishPath(); p != "" {
		if err := requirePath("volume_publish_path", p); err != nil {
			return nil, toStatus(err)
		}
		id, err := d.identityOf(ctx, nv.src)
		if err != nil {
			return nil, toStatus(err)
		}
		st, err := d.inspect(p, id)
		if err != nil {
			return nil, toStatus(err)
		}
		if !st.mounted || !st.ours {
			h.HealthStatuses = append(h.HealthStatuses, healthEntry(csi.VolumeHealthErrorType_DEGRADED,
				"NotMounted", fmt.Sprintf("volume is not mounted at %s", p)))
		}
	}
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: h}, nil
}
