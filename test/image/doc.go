// Package image owns the end-to-end tests of image volumes through the real
// cairn binary (internal/testdriver) and the real kernel: loop devices,
// mkfs, mounts, FIFREEZE, online growth. Each test makes its own pool
// filesystem with internal/testfs and needs root; without it, the tests
// skip.
//
// What is covered:
//
//   - TestStageUnstageLeaks: many stage/publish/unpublish/unstage cycles of
//     a mount and a block volume leave mountinfo and the loop device list as
//     they were. CAIRN_LEAK_CYCLES sets the count (see the test for the
//     default and what it costs).
//   - TestRebootSimulation: mounts and loop devices vanish behind the
//     driver's back and the driver is SIGKILLed; after a restart the volume
//     stages and publishes again with its data.
//   - TestOnlineExpansion: ControllerExpandVolume + NodeExpandVolume while
//     published, for ext4, xfs, btrfs and block.
//   - TestGrowAtStage: a restore into a larger volume, and a volume grown
//     while unstaged, get their filesystem grown at stage.
//   - TestBlockExpansionLeavesWorkloadFilesystem: growing a block volume
//     never touches a filesystem the workload made on it.
//   - TestRepeatedPublishDoesNotStack, TestSnapshotWhileWriting (fsck of a
//     snapshot and a clone taken under write load), TestFsTypes (fsType and
//     mkfsOptions reach mkfs, in one process and split), TestFsMinimumSize,
//     TestFailedStageLeavesNothing, TestDeletedImageLoops (loop devices of
//     deleted images are detached, at unstage and by the start-up
//     reconcile).
//   - BenchmarkStagePublish: stage+publish latency for mount and block.
//
// Growing a mounted ext4 needs CAP_SYS_RESOURCE; where the test process
// lacks it (some CI sandboxes), the ext4 growth cases skip and say why.
// The VM lane (hack/vm-lane.sh) runs TestOnlineExpansion, TestGrowAtStage
// and TestBlockExpansionLeavesWorkloadFilesystem as root with it, and there
// a missing capability fails them.
package image
