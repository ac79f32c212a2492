package driver

import (
	"context"
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/store"
)

// expandVolume grows a volume's backing storage and records the new size:
// the one volume operation ControllerExpandVolume and NodeExpandVolume
// (node-only expansion) share, so that neither service calls the other's
// code. The caller holds the volume's lock.
func (d *Driver) expandVolume(ctx context.Context, id string, r *csi.CapacityRange) (store.Volume, int64, error) {
	v, err := d.volumeRecord(ctx, id)
	if err != nil {
		return v, 0, err
	}
	want, lim := r.GetRequiredBytes(), r.GetLimitBytes()
	if want < 0 || lim < 0 {
		return v, 0, invalid("capacity_range must not be negative")
	}
	if lim > 0 && lim < v.CapacityBytes {
		return v, 0, fmt.Errorf("capacity_range: limit_bytes %d is below the current %d bytes; volumes do not shrink: %w", lim, v.CapacityBytes, errdefs.ErrOutOfRange)
	}
	if want <= v.CapacityBytes {
		return v, v.CapacityBytes, nil
	}
	pool, ok := d.pools[v.Pool]
	if !ok {
		return v, 0, fmt.Errorf("pool %q is not configured: %w", v.Pool, errdefs.ErrFailedPrecondition)
	}
	ex, ok := pool.(backend.Expander)
	if !ok {
		return v, 0, fmt.Errorf("pool %s (%s) cannot expand volumes: %w", v.Pool, pool.Type(), errdefs.ErrNotSupported)
	}
	if c, err := pool.Capacity(ctx); err == nil && want-v.CapacityBytes > c.AvailableBytes {
		return v, 0, fmt.Errorf("pool %s has %d bytes free, %d more requested: %w", v.Pool, c.AvailableBytes, want-v.CapacityBytes, errdefs.ErrResourceExhausted)
	}
	got, err := ex.ExpandVolume(ctx, id, want)
	if err != nil {
		return v, 0, err
	}
	if lim > 0 && got > lim {
		return v, 0, fmt.Errorf("pool rounded the size to %d, above limit_bytes %d: %w", got, lim, errdefs.ErrOutOfRange)
	}
	err = d.store.Update(ctx, func(tx *store.Tx) error {
		cur, err := tx.Volume(id)
		if err != nil {
			return err
		}
		cur.CapacityBytes = got
		v = cur
		return tx.PutVolume(cur)
	})
	if err != nil {
		return v, 0, err
	}
	d.log.Info("volume expanded", "volume", id, "bytes", got)
	return v, got, nil
}
