// Package reboot checks how the real cairn binary handles node state that
// changed behind its back: mounts gone after a reboot (restored by
// NodeStage and NodePublish, or cleaned up by NodeUnpublish and
// NodeUnstage), repeated publishes after a kubelet restart (never a
// stacked mount), and targets that are symlinks or someone else's mounts
// (refused, and left untouched). TestQuotaSurvivesReboot checks that a dir
// pool's project quota limits are on disk: they hold after the pool
// filesystem is unmounted and mounted again; it needs a kernel with ext4
// and XFS project quota, so it runs in the VM lane (hack/vm-lane.sh).
package reboot
