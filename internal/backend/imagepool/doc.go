// Package imagepool owns the "image" pool type: each volume is a sparse
// image file in the pool's directory, which the node layer attaches to a
// loop device and, for filesystem access, formats and mounts. It works on
// any filesystem that has sparse files, enforces every volume's size (a
// file cannot grow past its length through a loop device), and serves raw
// block volumes.
//
// Layout under the pool path:
//
//	volumes/<id>        a volume's image, mode 0600, sparse
//	volumes/new-<id>    being created (staging.NewPrefix)
//	volumes/rm-<id>     being removed (staging.RmPrefix)
//	snapshots/<id>      a snapshot's image, mode 0400, never written again
//
// Names carry no extension so that an entry's name is exactly its ID, the
// way internal/backend/staging reconciles them. VolumeForImage maps a path
// the kernel reports for a loop device back to the ID.
//
// # Space
//
// Images are thin: a volume costs what has been written to it, so the sum
// of the pool's volume sizes can exceed the filesystem holding them.
// Capacity reports that filesystem's free space as both AvailableBytes and
// MaxVolumeBytes, and the driver refuses a volume larger than it, but it
// cannot reserve the space. When the pool's filesystem fills up, writes
// into any volume that needs a new block fail with EIO inside the
// workload's filesystem. Operators who cannot overcommit should keep the
// sum of volume sizes below the pool's size.
//
// # Copies
//
// Snapshots, restores and clones are made with internal/fileclone: a
// reflink (FICLONE) where the pool's filesystem shares extents (btrfs, xfs
// with reflink=1), which is instant and costs no space until either side is
// written; elsewhere (ext4) a sparse copy of the data extents. A snapshot is
// an independent file, so deleting its volume does not touch it.
//
// Consistency of a snapshot of a mounted volume is the caller's job: the
// driver freezes the volume's filesystem (FIFREEZE) around CreateSnapshot
// and around CreateVolumeFrom of a volume. A block volume has no
// filesystem to freeze: a reflink is still a crash-consistent copy (the
// clone is atomic with respect to writes to the image), but a sparse copy
// of a block volume that is being written is not, and can be torn.
package imagepool
