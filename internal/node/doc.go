// Package node is Cairn's node layer: everything a node does to the kernel
// for a volume, without gRPC. It owns mounting (bind mounts through
// internal/mountfd, format-and-mount through mount-utils behind the
// first-mount gate), deciding by device and inode whether a mount is a
// volume's, loop attach and detach (with rollback of an attach whose stage
// fails), filesystem growth, and the freeze markers that let a restart thaw
// a filesystem a crash left frozen.
//
// The mount table it reads is injectable (MountTable), so the questions it
// answers ("where is this volume mounted?") are unit-tested over a fake
// table. Its errors are classed with internal/errdefs; internal/driver
// alone turns them into gRPC codes, and asks this package, never the
// kernel, about node state: the Node service for stage and publish, the
// Controller service for "is this volume published, where?" and for the
// freeze around a snapshot.
package node
