// Package store owns Cairn's metadata: the records of volumes and snapshots
// and the name indexes that make CreateVolume and CreateSnapshot idempotent.
//
// It is a bbolt database under the data directory. Every change is one
// transaction (Update); readers never block the writer (View). Everything
// lives under a version bucket ("v1") so that a future layout can migrate.
// Values are JSON so that a record can gain fields without a migration.
//
// Writers are group-committed (group.go): an idle store commits a write at
// once, and the writes that arrive while a commit is in flight share the
// next transaction and its fsyncs.
//
// The store knows nothing about disks or gRPC. Errors are of the classes in
// internal/errdefs.
package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/cairn-csi/cairn/internal/errdefs"
)

var (
	bucketV1        = []byte("v1")
	bucketVolumes   = []byte("volumes")
	bucketVolNames  = []byte("volume-names")
	bucketSnapshots = []byte("snapshots")
	bucketSnapNames = []byte("snapshot-names")
)

// ID prefixes. IDs are the prefix and 16 random hex digits, so they are safe
// as file names and unique across nodes without coordination.
const (
	VolumePrefix   = "vol-"
	SnapshotPrefix = "snap-"
)

// AccessType is how a volume is used: as a filesystem or a raw block
// device. It is stored as its string, so records stay as they were.
type AccessType string

// Access types. A record written before access types were stored has "",
// which callers treat as unknown.
const (
	AccessMount AccessType = "mount"
	AccessBlock AccessType = "block"
)

// Volume is the record of one volume.
type Volume struct {
	ID            string            `json:"id"`
	Name          string            `json:"name"`
	Pool          string            `json:"pool"`
	CapacityBytes int64             `json:"capacityBytes"`
	AccessType    AccessType        `json:"accessType"`
	FsType        string            `json:"fsType,omitempty"`
	MkfsOptions   string            `json:"mkfsOptions,omitempty"`
	Parameters    map[string]string `json:"parameters,omitempty"`
	// Exactly one of these is set when the volume was made from content.
	SourceSnapshotID string    `json:"sourceSnapshotId,omitempty"`
	SourceVolumeID   string    `json:"sourceVolumeId,omitempty"`
	Ephemeral        bool      `json:"ephemeral,omitempty"`
	CreatedAt        time.Time `json:"createdAt"`
	// Encryption is how the volume is encrypted ("fscrypt"), or empty.
	// KeyID identifies its key (never the key itself), so that a secret
	// can be checked against the volume.
	Encryption string `json:"encryption,omitempty"`
	KeyID      string `json:"keyId,omitempty"`
}

// Snapshot is the record of one snapshot.
type Snapshot struct {
	ID             string    `json:"id"`
	Name           string    `json:"name"`
	SourceVolumeID string    `json:"sourceVolumeId"`
	Pool           string    `json:"pool"`
	SizeBytes      int64     `json:"sizeBytes"`
	CreatedAt      time.Time `json:"createdAt"`
	// Encryption is the source volume's: a snapshot is encrypted with its
	// source's key.
	Encryption string `json:"encryption,omitempty"`
}

// Store is the metadata database.
type Store struct {
	db    *bolt.DB
	path  string
	group group
}

// Open opens (creating if needed) the store at path. It fails after timeout
// instead of waiting forever when another process holds the database.
func Open(ctx context.Context, path string, timeout time.Duration) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("store %s is locked by another process: %w", path, errdefs.ErrUnavailable)
		}
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		v1, err := tx.CreateBucketIfNotExists(bucketV1)
		if err != nil {
			return err
		}
		for _, b := range [][]byte{bucketVolumes, bucketVolNames, bucketSnapshots, bucketSnapNames} {
			if _, err := v1.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("store %s: init: %w", path, err)
	}
	return &Store{db: db, path: path}, nil
}

// SetBeforeCommit makes every group of writers run fn before its
// transaction, and fail together if it fails. internal/app gives it
// staging.SyncPending, so that one group makes the renames of all its
// members durable (one directory fsync each) and then their records (one
// transaction). Call it before the first Update.
func (s *Store) SetBeforeCommit(fn func() error) { s.group.before = fn }

// Close closes the database. Later calls fail with errdefs.ErrUnavailable.
func (s *Store) Close() error { return s.db.Close() }

// Path is the database file.
func (s *Store) Path() string { return s.path }

// Check reports whether the store is open and readable.
func (s *Store) Check(ctx context.Context) error {
	return s.View(ctx, func(*Tx) error { return nil })
}

// View runs fn in a read-only transaction.
func (s *Store) View(ctx context.Context, fn func(*Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.wrap(s.db.View(func(btx *bolt.Tx) error { return fn(&Tx{tx: btx}) }))
}

// Update runs fn in one read-write transaction: all of fn's changes commit
// together or not at all. Concurrent callers are group-committed, so fn may
// run more than once and must only touch the transaction. Once fn is
// queued, Update waits for the outcome whatever ctx says: a caller told
// "cancelled" while its change commits would undo disk work the store
// then points at.
func (s *Store) Update(ctx context.Context, fn func(*Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.wrap(s.group.update(s.db, func(btx *bolt.Tx) error { return fn(&Tx{tx: btx}) }))
}

func (s *Store) wrap(err error) error {
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return fmt.Errorf("store closed: %w", errdefs.ErrUnavailable)
	}
	return err
}

// Tx is one transaction. Values returned are copies, valid after it ends.
type Tx struct{ tx *bolt.Tx }

func (t *Tx) bucket(name []byte) *bolt.Bucket { return t.tx.Bucket(bucketV1).Bucket(name) }

// NewID returns an unused ID with the given prefix.
func (t *Tx) NewID(prefix string) (string, error) {
	b := t.bucket(bucketVolumes)
	if prefix == SnapshotPrefix {
		b = t.bucket(bucketSnapshots)
	}
	for range 8 {
		var raw [8]byte
		if _, err := rand.Read(raw[:]); err != nil {
			return "", err
		}
		id := prefix + hex.EncodeToString(raw[:])
		if b.Get([]byte(id)) == nil {
			return id, nil
		}
	}
	return "", errors.New("store: could not find a free ID")
}

// Volume returns volume id.
func (t *Tx) Volume(id string) (Volume, error) {
	var v Volume
	err := get(t.bucket(bucketVolumes), id, &v)
	if err != nil {
		return v, fmt.Errorf("volume %q: %w", id, err)
	}
	return v, nil
}

// VolumeByName returns the volume created under name.
func (t *Tx) VolumeByName(name string) (Volume, error) {
	id := t.bucket(bucketVolNames).Get([]byte(name))
	if id == nil {
		return Volume{}, fmt.Errorf("volume named %q: %w", name, errdefs.ErrNotFound)
	}
	return t.Volume(string(id))
}

// PutVolume creates or replaces v. Its name must not belong to another volume.
func (t *Tx) PutVolume(v Volume) error {
	return putNamed(t.bucket(bucketVolumes), t.bucket(bucketVolNames), v.ID, v.Name, v)
}

// DeleteVolume removes volume id and its name. Missing is not an error.
func (t *Tx) DeleteVolume(id string) error {
	v, err := t.Volume(id)
	if errdefs.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	return deleteNamed(t.bucket(bucketVolumes), t.bucket(bucketVolNames), id, v.Name)
}

// Volumes returns up to limit volumes (all when limit <= 0) in ID order,
// starting at the first ID >= from, and the ID to continue from ("" at the end).
func (t *Tx) Volumes(from string, limit int) ([]Volume, string, error) {
	var out []Volume
	next, err := page(t.bucket(bucketVolumes), from, limit, func(v []byte) error {
		var rec Volume
		if err := json.Unmarshal(v, &rec); err != nil {
			return err
		}
		out = append(out, rec)
		return nil
	})
	return out, next, err
}

// ListedVolume is what a listing reports of a volume. Only the fields of
// Volume that a CSI Volume message carries are decoded: ID, Pool,
// CapacityBytes, FsType, MkfsOptions, the content source, Encryption and
// KeyID. Name, AccessType, Parameters, Ephemeral and CreatedAt stay
// empty; skipping them (a time to parse, a map to build) halves the
// decoding that dominates a listing's cost. RecordBytes is the size of
// the stored record, which bounds the size of anything made of its values.
type ListedVolume struct {
	Volume
	RecordBytes int
}

// listedFields are the fields ListedVolume decodes; JSON skips the rest.
type listedFields struct {
	ID               string `json:"id"`
	Pool             string `json:"pool"`
	CapacityBytes    int64  `json:"capacityBytes"`
	FsType           string `json:"fsType"`
	MkfsOptions      string `json:"mkfsOptions"`
	SourceSnapshotID string `json:"sourceSnapshotId"`
	SourceVolumeID   string `json:"sourceVolumeId"`
	Encryption       string `json:"encryption"`
	KeyID            string `json:"keyId"`
}

// maxPrealloc caps how many listed records ListVolumes allocates ahead.
const maxPrealloc = 10000

// ListVolumes is Volumes for a listing: see ListedVolume.
func (t *Tx) ListVolumes(from string, limit int) ([]ListedVolume, string, error) {
	// Sized up front: growing a slice of records this large was almost
	// half of a listing's store time.
	out := make([]ListedVolume, 0, min(max(limit, 0), maxPrealloc))
	next, err := page(t.bucket(bucketVolumes), from, limit, func(v []byte) error {
		var f listedFields
		if err := decodeListed(v, &f); err != nil {
			return err
		}
		out = append(out, ListedVolume{RecordBytes: len(v), Volume: Volume{
			ID: f.ID, Pool: f.Pool, CapacityBytes: f.CapacityBytes, FsType: f.FsType, MkfsOptions: f.MkfsOptions,
			SourceSnapshotID: f.SourceSnapshotID, SourceVolumeID: f.SourceVolumeID, Encryption: f.Encryption, KeyID: f.KeyID,
		}})
		return nil
	})
	return out, next, err
}

// Snapshot returns snapshot id.
func (t *Tx) Snapshot(id string) (Snapshot, error) {
	var s Snapshot
	err := get(t.bucket(bucketSnapshots), id, &s)
	if err != nil {
		return s, fmt.Errorf("snapshot %q: %w", id, err)
	}
	return s, nil
}

// SnapshotByName returns the snapshot created under name.
func (t *Tx) SnapshotByName(name string) (Snapshot, error) {
	id := t.bucket(bucketSnapNames).Get([]byte(name))
	if id == nil {
		return Snapshot{}, fmt.Errorf("snapshot named %q: %w", name, errdefs.ErrNotFound)
	}
	return t.Snapshot(string(id))
}

// PutSnapshot creates or replaces s. Its name must not belong to another snapshot.
func (t *Tx) PutSnapshot(s Snapshot) error {
	return putNamed(t.bucket(bucketSnapshots), t.bucket(bucketSnapNames), s.ID, s.Name, s)
}

// DeleteSnapshot removes snapshot id and its name. Missing is not an error.
func (t *Tx) DeleteSnapshot(id string) error {
	s, err := t.Snapshot(id)
	if errdefs.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	return deleteNamed(t.bucket(bucketSnapshots), t.bucket(bucketSnapNames), id, s.Name)
}

// Snapshots is Volumes for snapshots.
func (t *Tx) Snapshots(from string, limit int) ([]Snapshot, string, error) {
	var out []Snapshot
	next, err := page(t.bucket(bucketSnapshots), from, limit, func(v []byte) error {
		var rec Snapshot
		if err := json.Unmarshal(v, &rec); err != nil {
			return err
		}
		out = append(out, rec)
		return nil
	})
	return out, next, err
}

func get(b *bolt.Bucket, id string, into any) error {
	raw := b.Get([]byte(id))
	if raw == nil {
		return errdefs.ErrNotFound
	}
	if err := json.Unmarshal(raw, into); err != nil {
		return fmt.Errorf("corrupt record: %w", err)
	}
	return nil
}

func putNamed(records, names *bolt.Bucket, id, name string, rec any) error {
	if id == "" || name == "" {
		return fmt.Errorf("record needs an ID and a name: %w", errdefs.ErrInvalidArgument)
	}
	if owner := names.Get([]byte(name)); owner != nil && string(owner) != id {
		return fmt.Errorf("name %q belongs to %s: %w", name, owner, errdefs.ErrAlreadyExists)
	}
	raw, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := records.Put([]byte(id), raw); err != nil {
		return err
	}
	return names.Put([]byte(name), []byte(id))
}

func deleteNamed(records, names *bolt.Bucket, id, name string) error {
	if err := records.Delete([]byte(id)); err != nil {
		return err
	}
	if owner := names.Get([]byte(name)); string(owner) == id {
		return names.Delete([]byte(name))
	}
	return nil
}

func page(b *bolt.Bucket, from string, limit int, each func([]byte) error) (string, error) {
	c := b.Cursor()
	n := 0
	for k, v := c.Seek([]byte(from)); k != nil; k, v = c.Next() {
		if limit > 0 && n == limit {
			return string(k), nil
		}
		if err := each(v); err != nil {
			return "", fmt.Errorf("record %s: %w", k, err)
		}
		n++
	}
	return "", nil
}
