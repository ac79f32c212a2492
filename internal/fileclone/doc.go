// Package fileclone owns cheap copies of image files and directory trees,
// used to create volumes from snapshots and clones.
//
// Where the filesystem can share extents (btrfs, xfs with reflink), a copy
// is a reflink made with the FICLONE ioctl: instant, and sharing space until
// either side is written. Elsewhere it is a sparse copy that walks the
// source's data extents with SEEK_DATA/SEEK_HOLE and copies only those, so
// a thin 100 GiB image holding 1 GiB of data costs 1 GiB to copy and to
// store. Callers learn which happened from the returned Method.
package fileclone
