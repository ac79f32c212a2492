// Package lvmpool owns the "lvm" pool type: each volume is an LVM logical
// volume in an existing volume group, which the node layer uses as a
// block device (backend.SourceBlockDevice): formatted if blank and
// mounted for mount access, bind-mounted as a device file for block
// access. There is no loop layer.
//
// A pool is configured as "VG/THINPOOL" (a *ThinPool: thin volumes, with
// thin snapshots, restores and clones, all O(1)) or "VG" (a *Pool: thick,
// linear volumes; no snapshots or clones, which the driver refuses with an
// error naming the pool type). Cairn never creates or removes volume
// groups or thin pools; New says precisely which one is missing.
//
// # Ownership
//
// Every LV Cairn makes carries the tags TagOwner, TagPool=<VG or
// VG/THINPOOL> and TagKind=volume|snapshot. Lookups, Reconcile and every
// removal consider only LVs with this pool's tags: an untagged LV is
// never touched, whatever its name.
//
// # Crash safety
//
// The staging protocol of internal/backend/staging, with LV names for
// paths: an LV is created as new-<id> and renamed (lvrename) to <id>
// before the commit; a delete renames <id> to rm-<id>, commits, and only
// then runs lvremove. Reconcile removes tagged new-*/rm-* LVs and tagged
// LVs the store does not know, renames back an rm-<id> whose ID the store
// still has, and reports store records with no LV. The kill points are
// the staging package's (create:start, create:renamed, create:committed,
// delete:renamed, delete:committed).
//
// # Space
//
// LV sizes are whole extents of the VG, so a capacity is exactly the LV's
// size, and a request that rounds past limit_bytes is OUT_OF_RANGE. A
// thick pool has the VG's free extents. A thin pool offers its size times
// Options.OverProvisionRatio, less the sizes of its thin volumes; once its
// data or metadata use reaches Options.FullPercent it refuses new
// volumes, clones, snapshots and expansions with RESOURCE_EXHAUSTED
// naming the pool and its fill level, before it can overflow (a full thin
// pool fails writes in every volume).
//
// # Encryption
//
// A *Pool is a backend.Encrypter (LUKS2, as image pools are): an encrypted
// volume's LV is its capacity plus luks.HeaderBytes, starts with the LUKS2
// header written at create, and carries TagEncryption=luks2, which Source
// reports (backend.Source.LUKS) so that the node opens the LV as a
// mapping. Thin snapshots copy the ciphertext; restores and clones are
// moved to their own key slot before the commit (encryption.go).
//
// # Activation and health
//
// Source, listings and VolumeCondition only read lvs reports. An LV that
// is inactive (after a reboot with auto-activation off) is activated by
// Activate, which the node calls at NodeStageVolume only; until then
// VolumeCondition reports it Inactive, and a missing, partial or failed
// LV likewise, for the driver's volume health RPCs.
//
// # Commands and locking
//
// lvm2 runs through Runner (exec.CommandContext, LC_ALL=C), and reports
// are read with --reportformat json into LV and VG values, never scraped
// from text. lvm2 locks each VG per command; the check-then-create pairs
// (free space, then lvcreate or lvextend) are serialised by one mutex per
// VG, shared by every pool on it. Calls on one volume are serialised by
// the driver's per-volume try-locks.
package lvmpool
