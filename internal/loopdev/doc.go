// Package loopdev owns Cairn's loop devices: attaching image files to
// /dev/loopN, finding and listing attached devices, resizing and detaching
// them. It talks to the kernel directly (/dev/loop-control, loop ioctls and
// /sys/block/loop*/loop) and never runs losetup, so that its behaviour does
// not depend on the util-linux version or output format on the node.
//
// Every function is safe for concurrent use, including from several
// processes: the kernel hands out free devices and Attach retries when it
// loses a race for one.
package loopdev
