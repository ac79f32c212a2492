// Package backend defines the contract between Cairn's CSI driver and its
// storage pools. It owns the Backend interface, the optional one-method
// capability interfaces, and the value types that cross that boundary.
//
// # Terms
//
//   - A pool is one configured instance of a backend type ("dir", "btrfs",
//     "image") rooted at a path on the node.
//   - A volume is a unit of storage in a pool, named on disk by the ID the
//     driver gives it (never by user input). IDs are validated by the driver
//     before they reach a backend: no "/", no "..", no NUL.
//   - A snapshot is a read-only, point-in-time copy of a volume, in the same
//     pool, also named by its ID.
//   - A source describes where a volume's data can be reached on this node
//     (a directory, an image file, a block device). Backends never mount,
//     attach or format anything: that is the node layer's job, so that every
//     backend shares one implementation of mount safety.
//
// # Crash safety
//
// Every method that changes disk state takes a commit callback, which the
// driver uses to run its metadata transaction at the one point where doing so
// is safe:
//
//	CreateVolume:   build in new-<id>   -> rename to <id> -> commit() -> done
//	                                                      commit failed -> remove <id>
//	DeleteVolume:   rename <id> to rm-<id> -> commit() -> remove rm-<id>
//	                                       commit failed -> rename back
//
// A crash at any point leaves either a directory the store does not know
// (new-*, rm-*, or a renamed <id> whose commit never happened), which
// Reconcile removes, or a consistent pair. Backends must make every
// operation idempotent: a retried call after a crash must converge.
//
// # Lifecycle
//
// The pool types rooted at a directory (dir, btrfs, image) have
// constructors of one shape, New(ctx, path, log) (*Pool, error). The
// package example runs this on a dir pool:
//
//	b, _ := dirpool.New(ctx, "/srv/cairn/fast", log)
//	b.Reconcile(ctx, inventory)                         // at start-up
//	v, _ := b.CreateVolume(ctx, "vol-1", Spec{CapacityBytes: 1 << 30}, commit)
//	src, _ := b.Source(ctx, "vol-1")                    // node layer mounts src
//	b.DeleteVolume(ctx, "vol-1", commit)
package backend

import (
	"context"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// Backend is one storage pool. All methods are safe for concurrent use on
// different IDs; the driver serialises calls on the same ID.
type Backend interface {
	// Type is the pool type name, e.g. "dir".
	Type() string
	// Check reports whether the pool is usable now (path present, writable,
	// the expected filesystem). It is Probe's per-pool check.
	Check(ctx context.Context) error
	// Capacity reports the space the pool can still give to new volumes.
	Capacity(ctx context.Context) (Capacity, error)
	// CreateVolume creates volume id with at least spec.CapacityBytes, staged
	// as the package comment describes. It is idempotent: if id already exists
	// with a compatible size, it calls commit and returns the volume.
	CreateVolume(ctx context.Context, id string, spec Spec, commit func(Volume) error) (Volume, error)
	// DeleteVolume removes volume id. A missing volume calls commit and
	// returns nil.
	DeleteVolume(ctx context.Context, id string, commit func() error) error
	// Source returns where volume id's data is on this node, or an error of
	// class errdefs.ErrNotFound.
	Source(ctx context.Context, id string) (Source, error)
	// Usage reports space and inode usage of volume id.
	Usage(ctx context.Context, id string) (Usage, error)
	// Reconcile removes staged leftovers (new-*, rm-*) and every volume or
	// snapshot not in inv, and reports what it found and did. It is called
	// at start-up, before the driver serves, and must not touch anything
	// outside the pool's path.
	Reconcile(ctx context.Context, inv Inventory) (Report, error)
}

// Snapshotter is implemented by pools that can snapshot volumes. Making
// and deleting are one interface: the driver advertises the capability from
// it, and a pool that could make snapshots but not delete them would leak.
type Snapshotter interface {
	// CreateSnapshot makes snapshot snapID of volume volID, staged like
	// CreateVolume. Idempotent for an existing snapID of the same volume.
	CreateSnapshot(ctx context.Context, snapID, volID string, commit func(Snapshot) error) (Snapshot, error)
	// DeleteSnapshot removes snapshot snapID, staged like DeleteVolume. A
	// missing snapshot calls commit and returns nil.
	DeleteSnapshot(ctx context.Context, snapID string, commit func() error) error
}

// BlockCapable is implemented by pools that can serve raw block volumes
// (AccessBlock). A pool without it refuses them with ErrInvalidArgument.
type BlockCapable interface {
	SupportsBlock() bool
}

// SupportsBlock reports whether b serves raw block volumes.
func SupportsBlock(b Backend) bool {
	bc, ok := b.(BlockCapable)
	return ok && bc.SupportsBlock()
}

// ContentCreator is implemented by pools that can create a volume
// pre-populated from a snapshot or another volume (restore and clone).
type ContentCreator interface {
	// CreateVolumeFrom is CreateVolume with the data of src. The new
	// capacity is at least the source's.
	CreateVolumeFrom(ctx context.Context, id string, spec Spec, src ContentSource, commit func(Volume) error) (Volume, error)
}

// Expander is implemented by pools whose volumes can grow.
type Expander interface {
	// ExpandVolume grows volume id to at least newBytes and returns the new
	// capacity. A request at or below the current size changes nothing and
	// returns the current capacity: volumes never shrink.
	ExpandVolume(ctx context.Context, id string, newBytes int64) (int64, error)
}

// Encrypter is implemented by pools that can encrypt volumes with a key of
// their own each.
type Encrypter interface {
	// CanEncrypt reports why the pool cannot encrypt now (its filesystem
	// lacks the feature, the node lacks the kernel support), or nil.
	CanEncrypt(ctx context.Context) error
	// EncryptionMechanism names how: "fscrypt" or "luks2". The driver
	// derives each mechanism's keys its own way.
	EncryptionMechanism() string
}

// EncryptedSnapshotter is implemented by Encrypters that can snapshot an
// encrypted volume. key is the volume's master key when the caller has it;
// nil means the key must already be loaded (the volume is staged).
type EncryptedSnapshotter interface {
	CreateEncryptedSnapshot(ctx context.Context, snapID, volID string, key []byte, commit func(Snapshot) error) (Snapshot, error)
}

// Encryption asks an Encrypter to encrypt a new volume. The driver derives
// the keys from the claim's secret; a pool uses them for the duration of
// the call only and stores none of them.
type Encryption struct {
	Key       []byte // the new volume's master key
	SourceKey []byte // the content source's key, when the source is encrypted
}

// AccessType is how a volume is consumed on the node.
type AccessType int

// Access types.
const (
	AccessMount AccessType = iota // a filesystem mounted at the target
	AccessBlock                   // a raw block device at the target
)

func (a AccessType) String() string {
	if a == AccessBlock {
		return "block"
	}
	return "mount"
}

// Spec is what the driver asks a backend to create.
type Spec struct {
	CapacityBytes int64       // the minimum size; backends may round up
	LimitBytes    int64       // 0 = no upper bound; a backend that must round past it fails with ErrOutOfRange
	AccessType    AccessType  // pools that cannot serve it return ErrInvalidArgument
	Encryption    *Encryption // nil: not encrypted; only for Encrypters
}

// Volume is what a backend reports about a volume.
type Volume struct {
	ID            string
	CapacityBytes int64
}

// Snapshot is what a backend reports about a snapshot.
type Snapshot struct {
	ID        string
	VolumeID  string
	SizeBytes int64
	CreatedAt time.Time
}

// ContentSource names the data a new volume starts from. Exactly one field
// is set.
type ContentSource struct {
	SnapshotID string
	VolumeID   string
}

// Capacity is a pool's space.
type Capacity struct {
	TotalBytes     int64
	AvailableBytes int64
	// MaxVolumeBytes is the largest single volume the pool could create now.
	MaxVolumeBytes int64
	// Enforced is true when volume sizes are hard limits (quota, qgroup,
	// file size). A dir pool without project quota reports false and says so.
	Enforced bool
}

// SourceKind says how the node layer reaches a volume's data.
type SourceKind int

// Source kinds.
const (
	SourceDirectory   SourceKind = iota // bind-mount Path
	SourceImageFile                     // attach Path to a loop device first
	SourceBlockDevice                   // Path is a block device node
)

func (k SourceKind) String() string {
	switch k {
	case SourceImageFile:
		return "image"
	case SourceBlockDevice:
		return "block"
	}
	return "directory"
}

// Source is where a volume's data is on this node.
type Source struct {
	Kind SourceKind
	Path string
	// LUKS says that a block device source starts with a LUKS2 header the
	// pool wrote (an Encrypter's volume): the node opens it and uses the
	// mapping, never the device itself. The pool knows this from its own
	// records, not from the device's content, which a workload with raw
	// block access writes. Image sources leave it false; the node reads
	// their header.
	LUKS bool
}

// Activator is implemented by pools whose volumes can exist but be
// inactive on the node, with no device to use (LVM logical volumes after a
// reboot with auto-activation off). Only NodeStageVolume, the call that is
// about to use the device, activates; Source, health and every listing
// report what they find and change nothing.
type Activator interface {
	// Activate makes volume id's device usable, if it is not already. It
	// refuses with errdefs.ErrUnavailable a volume that cannot be used
	// whole (an LV missing a physical volume).
	Activate(ctx context.Context, id string) error
}

// Condition is a volume's state as its pool sees it, for health reports.
type Condition struct {
	Abnormal bool
	Reason   string // short, CamelCase: "DataMissing", "Inactive", "Partial"
	Message  string // what an operator reads: what is wrong and what to do
}

// HealthChecker is implemented by pools that know more about a volume's
// state than whether its path exists (an LV can be inactive or partial).
type HealthChecker interface {
	// VolumeCondition reports volume id's condition. It only reads: it
	// never activates, repairs or otherwise changes anything. An error
	// means the condition could not be determined.
	VolumeCondition(ctx context.Context, id string) (Condition, error)
}

// Usage is a volume's space and inode usage. Zero inode fields mean the
// backend cannot tell.
type Usage struct {
	TotalBytes, UsedBytes, AvailableBytes    int64
	TotalInodes, UsedInodes, AvailableInodes int64
}

// Inventory is what the metadata store knows, given to Reconcile.
type Inventory struct {
	Volumes   map[string]bool
	Snapshots map[string]bool
}

// Report is what Reconcile found and did.
type Report struct {
	Removed []string // paths removed (staged leftovers and unknown entries)
	Missing []string // IDs in the inventory with nothing on disk
	Errors  []string // what could not be cleaned, and why
}

// ImageFiles is implemented by pools whose volumes are image files, so that
// the node can tell which loop devices point into the pool.
type ImageFiles interface {
	// VolumeForImage returns the volume ID that image path belongs to, if
	// path is a volume image of this pool (whether or not it still exists).
	VolumeForImage(path string) (id string, ok bool)
}

// DirsNamedByID is implemented by pools whose every volume is a directory
// named by its volume ID: Source returns Kind SourceDirectory and a Path
// whose last element is the ID. A bind mount of such a volume shows that
// name as the last element of its root in the mount table, so a listing
// stats only the volumes some mount is named after, instead of every
// volume (internal/mounttable).
type DirsNamedByID interface {
	VolumeDirsNamedByID() bool
}

// FormatState is what a pool records of whether the node has formatted a
// volume's image.
type FormatState int

// Format states.
const (
	// FormatUnknown: nothing is recorded (a volume made before pools
	// recorded it, a block volume, or a pool that cannot record it). The
	// node trusts a filesystem it finds and formats only a blank device.
	FormatUnknown FormatState = iota
	// FormatPending: the volume has never been formatted to completion, so
	// whatever a device holds is the leftover of an interrupted mkfs and
	// is wiped and formatted again.
	FormatPending
	// FormatDone: mkfs completed and was synced: never format again.
	FormatDone
)

func (s FormatState) String() string {
	switch s {
	case FormatPending:
		return "pending"
	case FormatDone:
		return "done"
	}
	return "unknown"
}

// FormatRecorder is implemented by pools whose volumes are images the node
// formats. The record travels with the volume: a snapshot, restore or clone
// has its source's state, and it goes when the volume goes.
type FormatRecorder interface {
	FormatState(ctx context.Context, id string) (FormatState, error)
	// MarkFormatted durably records that volume id holds a complete
	// filesystem; the caller has synced the filesystem first.
	MarkFormatted(ctx context.Context, id string) error
}

// StatfsUsage reports the usage of the filesystem holding path: what a
// volume that is a whole filesystem (a mounted image), or a directory
// without a limit of its own, can report.
func StatfsUsage(path string) (Usage, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return Usage{}, fmt.Errorf("statfs %s: %w", path, err)
	}
	bs := int64(st.Bsize)
	return Usage{
		TotalBytes:      int64(st.Blocks) * bs,
		UsedBytes:       int64(st.Blocks-st.Bfree) * bs,
		AvailableBytes:  int64(st.Bavail) * bs,
		TotalInodes:     int64(st.Files),
		UsedInodes:      int64(st.Files - st.Ffree),
		AvailableInodes: int64(st.Ffree),
	}, nil
}
