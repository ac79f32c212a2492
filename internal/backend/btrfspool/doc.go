// Package btrfspool owns the "btrfs" pool type: each volume is a btrfs
// subvolume whose size is a qgroup limit, and snapshots, restores and
// clones are subvolume snapshots, so they cost the same for 1 KiB and for
// 1 TiB of data. The node layer bind-mounts a volume's subvolume like a
// dir pool's directory.
//
// Layout under the pool path, which must be on btrfs:
//
//	volumes/<id>        a volume: a writable subvolume
//	volumes/new-<id>    being created (staging.NewPrefix)
//	volumes/rm-<id>     being removed (staging.RmPrefix)
//	snapshots/<id>      a snapshot: a read-only snapshot of a volume
//
// volumes and snapshots are plain directories; every entry in them is a
// subvolume, built at new-<id> and renamed into place (a rename moves a
// subvolume like a directory). Renaming a subvolume forces btrfs's next
// fsync to commit the whole transaction (its tree log cannot record it),
// so the staging protocol's directory fsync makes a create, or the rename
// to rm-<id> of a delete, durable before the metadata commit.
//
// # Sizes
//
// Quotas (qgroups) are enabled when the pool is opened. A volume's
// capacity is the limit on the bytes its qgroup may reference: a write
// past it fails with EDQUOT inside the volume, for root too. That limit is
// the capacity: CreateVolume sets it, ExpandVolume raises it, Usage and a
// repeated CreateVolume read it back. A copy is kept in the xattr
// trusted.cairn.capacity on the subvolume's root, for the one case that
// loses limits: disabling quotas drops every qgroup. A pool opened on a
// filesystem with quotas off turns them on, and Reconcile, at every start,
// sets the limits of the volumes the store knows from their copies. A
// snapshot's root carries its volume's xattrs, so the copy also tells a
// snapshot's size (its volume's capacity when taken) without a filesystem
// sync. Usage does sync (qgroup numbers change at transaction commits), so
// each NodeGetVolumeStats costs a sync of the pool's filesystem.
//
// Referenced bytes count data shared with snapshots, so a restored or
// cloned volume starts out using what its source used. Volumes are thin:
// limits reserve nothing, and Capacity reports the filesystem's free space.
//
// # Limits of the enforcement
//
// Any user may create a subvolume in a directory it can write, and a
// subvolume nested in a volume has a qgroup of its own, outside the
// volume's limit. A workload that does so escapes its limit (as it would
// by writing to any other unlimited filesystem it can reach); deleting the
// volume deletes nested subvolumes too.
//
// # Deletion
//
// Deleting a subvolume unlinks it at once; the kernel's cleaner frees the
// space in the background, so Capacity catches up over seconds. Kernels
// differ in whether the deleted subvolume's qgroup goes with it (see
// btrfs.RemoveQgroup); Reconcile clears the stale ones, and every new
// subvolume gets its limit set explicitly, since a subvolume that reuses
// a stale qgroup's ID would inherit its limit.
package btrfspool
