// Package driver owns Cairn's CSI gRPC services: Identity, Controller and
// Node. It validates requests, takes per-volume locks, runs the metadata
// transactions and the node's mount work, and is the only package that
// knows gRPC codes: errors from below arrive classed (internal/errdefs) and
// become codes in one place, the mapErrors interceptor (server.go).
package driver

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"sort"
	"sync/atomic"

	"github.com/container-storage-interface/spec/lib/go/csi"
	mount "k8s.io/mount-utils"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/keylock"
	"github.com/cairn-csi/cairn/internal/node"
	"github.com/cairn-csi/cairn/internal/store"
)

// TopologyKey is the topology segment key: volumes are reachable only on
// the node that holds them.
const TopologyKey = "topology.cairn.csi.dev/node"

// Mode is which services a driver serves.
type Mode string

// Modes.
const (
	ModeAll        Mode = "all"
	ModeController Mode = "controller"
	ModeNode       Mode = "node"
)

// ParseMode parses a --mode value.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeAll, ModeController, ModeNode:
		return m, nil
	}
	return "", fmt.Errorf("mode %q: want all, controller or node: %w", s, errdefs.ErrInvalidArgument)
}

func (m Mode) controller() bool { return m == ModeAll || m == ModeController }
func (m Mode) node() bool       { return m == ModeAll || m == ModeNode }

// Config is a driver's identity and policy.
type Config struct {
	Name                string // CSI driver name, e.g. cairn.csi.dev
	Version             string
	NodeID              string
	Mode                Mode
	MaxVolumesPerNode   int64
	ControllerExpansion bool  // advertise controller EXPAND_VOLUME
	DefaultCapacity     int64 // bytes, when a request names none
	Logger              *slog.Logger
	// Node is the node layer (mounts, loop devices, growth, freeze
	// markers, loop devices); nil: one without loop devices is made from
	// the mounter New is given and StateDir.
	Node     *node.Node
	StateDir string // the driver's own files (ephemeral staging), under the data dir
}

// Pool is a named backend.
type Pool struct {
	Name    string
	Backend backend.Backend
	// Root is the pool's directory on the node. Node calls refuse staging
	// and target paths at or below it.
	Root string
	// MkfsOptions are mkfs arguments per filesystem type that the node's
	// administrator set for this pool (--mkfs-options). They are trusted,
	// unlike the StorageClass's mkfsOptions, which pass an allow-list.
	MkfsOptions map[string][]string
}

// Driver implements the CSI services.
type Driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer

	cfg        Config
	log        *slog.Logger
	store      *store.Store // nil in node mode: the node derives its state from the mount table
	pools      map[string]backend.Backend
	poolOrder  []string
	topo       *csi.Topology // this node's topology, shared by every message (topology)
	node       *node.Node    // every mount, loop device and freeze goes through it
	locks      keylock.Locks
	ready      atomic.Bool
	lastProbe  atomic.Pointer[string]         // Probe's last verdict, to log changes only
	reconciled reconcileRecord                // reconcile totals, for metrics
	protected  []string                       // pool roots and the data directory: never a staging or target path
	adminMkfs  map[string]map[string][]string // pool → fs type → trusted mkfs arguments
}

// New makes a driver. st may be nil only in node mode. mounter is used
// only when cfg.Node is nil, to make the node layer.
func New(cfg Config, st *store.Store, pools []Pool, mounter *mount.SafeFormatAndMount) (*Driver, error) {
	if err := requireString("driver name", cfg.Name); err != nil {
		return nil, err
	}
	if cfg.NodeID == "" || len(cfg.NodeID) > maxNodeIDBytes {
		return nil, invalid("node ID must be 1 to %d bytes", maxNodeIDBytes)
	}
	if cfg.Mode == "" {
		cfg.Mode = ModeAll
	}
	if cfg.Mode.controller() && st == nil {
		return nil, fmt.Errorf("mode %s needs a metadata store: %w", cfg.Mode, errdefs.ErrInvalidArgument)
	}
	if len(pools) == 0 {
		return nil, invalid("at least one pool is required")
	}
	if cfg.DefaultCapacity <= 0 {
		cfg.DefaultCapacity = 1 << 30
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Node == nil {
		cfg.Node = node.New(node.Config{Logger: cfg.Logger, Mounter: mounter, StateDir: cfg.StateDir})
	}
	d := &Driver{cfg: cfg, log: cfg.Logger, store: st, pools: map[string]backend.Backend{}, node: cfg.Node}
	d.topo = &csi.Topology{Segments: map[string]string{TopologyKey: cfg.NodeID}}
	for _, p := range pools {
		if err := requireID("pool name", p.Name); err != nil {
			return nil, err
		}
		if _, dup := d.pools[p.Name]; dup {
			return nil, invalid("pool %q is configured twice", p.Name)
		}
		d.pools[p.Name] = p.Backend
		d.poolOrder = append(d.poolOrder, p.Name)
		if p.Root != "" {
			d.protected = append(d.protected, realPath(p.Root))
		}
		if len(p.MkfsOptions) > 0 {
			if d.adminMkfs == nil {
				d.adminMkfs = map[string]map[string][]string{}
			}
			d.adminMkfs[p.Name] = p.MkfsOptions
		}
	}
	if cfg.StateDir != "" {
		d.protected = append(d.protected, realPath(cfg.StateDir))
	}
	return d, nil
}

// realPath resolves the symbolic links in a directory the administrator
// configured, so that it compares with the symlink-free paths node calls
// accept.
func realPath(p string) string {
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r
	}
	return filepath.Clean(p)
}

// pool returns the named pool, or the default one when name is empty: the
// pool called "default" if there is one, else the first configured.
func (d *Driver) pool(name string) (string, backend.Backend, error) {
	if name == "" {
		if _, ok := d.pools["default"]; ok {
			name = "default"
		} else {
			name = d.poolOrder[0]
		}
	}
	b, ok := d.pools[name]
	if !ok {
		names := append([]string(nil), d.poolOrder...)
		sort.Strings(names)
		return "", nil, invalid("parameter pool: unknown pool %q (configured: %v)", name, names)
	}
	return name, b, nil
}

// Start reconciles every pool against the store (controller side) and
// marks the driver ready. It must run before serving.
func (d *Driver) Start(ctx context.Context) error {
	d.node.ThawLeftovers(ctx)
	if d.cfg.Mode.controller() {
		if err := d.reconcileStore(ctx); err != nil {
			return err
		}
	}
	if d.cfg.Mode.node() {
		d.reconcileNode(ctx)
		if d.store != nil {
			d.reconcileKeys(ctx)
			d.reconcileMappings(ctx)
		}
	}
	d.ready.Store(true)
	return nil
}

// reconcileStore makes each pool's disk agree with the store: leftovers of
// interrupted creates and deletes, and entries the store does not know, are
// removed; records with nothing on disk are reported, never silently dropped.
func (d *Driver) reconcileStore(ctx context.Context) error {
	inv := map[string]backend.Inventory{}
	for _, name := range d.poolOrder {
		inv[name] = backend.Inventory{Volumes: map[string]bool{}, Snapshots: map[string]bool{}}
	}
	var orphanRecords []string
	err := d.store.View(ctx, func(tx *store.Tx) error {
		vols, _, err := tx.Volumes("", 0)
		if err != nil {
			return err
		}
		for _, v := range vols {
			if i, ok := inv[v.Pool]; ok {
				i.Volumes[v.ID] = true
			} else {
				orphanRecords = append(orphanRecords, v.ID)
			}
		}
		snaps, _, err := tx.Snapshots("", 0)
		if err != nil {
			return err
		}
		for _, s := range snaps {
			if i, ok := inv[s.Pool]; ok {
				i.Snapshots[s.ID] = true
			} else {
				orphanRecords = append(orphanRecords, s.ID)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("reconcile: read store: %w", err)
	}
	if len(orphanRecords) > 0 {
		// A pool was removed from the configuration: keep the records, so
		// that re-adding the pool brings the volumes back.
		d.log.Warn("reconcile: records in pools that are not configured", "ids", orphanRecords)
	}
	for _, name := range d.poolOrder {
		rep, err := d.pools[name].Reconcile(ctx, inv[name])
		if err != nil {
			return fmt.Errorf("reconcile pool %s: %w", name, err)
		}
		d.recordReconcile(name, rep)
		d.log.Info("reconcile", "pool", name, "volumes", len(inv[name].Volumes), "snapshots", len(inv[name].Snapshots),
			"removed", rep.Removed, "missing", rep.Missing, "errors", rep.Errors)
		if len(rep.Missing) > 0 {
			d.log.Error("reconcile: store records with no data on disk; reported abnormal by ControllerGetVolume", "pool", name, "ids", rep.Missing)
		}
	}
	return nil
}

// lock takes the per-key locks for one operation, or fails with ABORTED
// because another operation on the same volume is in flight.
func (d *Driver) lock(keys ...string) (func(), error) {
	seen := map[string]bool{}
	uniq := keys[:0:0]
	for _, k := range keys {
		if !seen[k] {
			seen[k] = true
			uniq = append(uniq, k)
		}
	}
	unlock, ok := d.locks.TryLockAll(uniq...)
	if !ok {
		return nil, fmt.Errorf("an operation on %v is already in progress: %w", uniq, errdefs.ErrAborted)
	}
	return unlock, nil
}

// topology is this node's topology. Every message shares the one value
// (a listing of 10,000 volumes would otherwise build 10,000 maps), so it
// must never be changed; protobuf allows concurrent marshalling of it.
func (d *Driver) topology() *csi.Topology { return d.topo }
