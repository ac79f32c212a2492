package driver

import (
	"context"
	"sync"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/store"
)

// This file is what internal/metrics reads from the driver. Metrics are
// taken at scrape time, so nothing here is on the path of a CSI call except
// recordReconcile, which runs once per pool at start-up.

// PoolStats is one pool's state at the moment it is read.
type PoolStats struct {
	Name string
	Type string
	// Capacity is the pool's space; CapacityErr is set when it could not
	// be read (the pool's filesystem is gone, say), and Capacity is zero.
	Capacity    backend.Capacity
	CapacityErr error
	// Volumes and Snapshots count the store's records in this pool.
	// Counted is false in node mode, which has no store.
	Volumes, Snapshots int
	Counted            bool
}

// PoolStats reads every configured pool's capacity and, when this process
// has the metadata store, counts its volumes and snapshots in one read
// transaction. Pools come back in configuration order.
func (d *Driver) PoolStats(ctx context.Context) ([]PoolStats, error) {
	out := make([]PoolStats, 0, len(d.poolOrder))
	index := map[string]int{}
	for _, name := range d.poolOrder {
		b := d.pools[name]
		ps := PoolStats{Name: name, Type: b.Type(), Counted: d.store != nil}
		ps.Capacity, ps.CapacityErr = b.Capacity(ctx)
		index[name] = len(out)
		out = append(out, ps)
	}
	if d.store == nil {
		return out, nil
	}
	err := d.store.View(ctx, func(tx *store.Tx) error {
		vols, _, err := tx.Volumes("", 0)
		if err != nil {
			return err
		}
		for _, v := range vols {
			if i, ok := index[v.Pool]; ok {
				out[i].Volumes++
			}
		}
		snaps, _, err := tx.Snapshots("", 0)
		if err != nil {
			return err
		}
		for _, s := range snaps {
			if i, ok := index[s.Pool]; ok {
				out[i].Snapshots++
			}
		}
		return nil
	})
	return out, err
}

// ReconcileStats is what reconcile found in one pool, summed over every
// reconcile this driver has run.
type ReconcileStats struct {
	Pool string
	// OrphansFound counts entries on disk the store did not know (staged
	// leftovers new-*, rm-* and unknown IDs); OrphansRemoved counts those
	// removed. The difference failed to be removed and was logged.
	OrphansFound, OrphansRemoved uint64
	// MissingData is how many store records had no data on disk at the
	// last reconcile (a gauge, not a sum: they stay until someone acts).
	MissingData int
}

// reconcileRecord holds a driver's reconcile totals per pool.
type reconcileRecord struct {
	mu    sync.Mutex
	pools map[string]*ReconcileStats
	order []string
}

// recordReconcile adds one pool's reconcile report to the totals. It is
// called from reconcileStore after each pool's Reconcile.
func (d *Driver) recordReconcile(pool string, rep backend.Report) {
	r := &d.reconciled
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pools == nil {
		r.pools = map[string]*ReconcileStats{}
	}
	s, ok := r.pools[pool]
	if !ok {
		s = &ReconcileStats{Pool: pool}
		r.pools[pool] = s
		r.order = append(r.order, pool)
	}
	s.OrphansFound += uint64(len(rep.Removed) + len(rep.Errors))
	s.OrphansRemoved += uint64(len(rep.Removed))
	s.MissingData = len(rep.Missing)
}

// ReconcileStats returns the reconcile totals per pool, in the order the
// pools were reconciled; empty before the first reconcile and in node mode.
func (d *Driver) ReconcileStats() []ReconcileStats {
	r := &d.reconciled
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]ReconcileStats, 0, len(r.order))
	for _, p := range r.order {
		out = append(out, *r.pools[p])
	}
	return out
}
