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
			return nil, toStatus(err)
		}
		for _, v := range vols {
			if err := ctx.Err(); err != nil {
				return nil, toStatus(err)
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
