package btrfs

import (
	"context"
	"errors"
	"github.com/cairn-csi/cairn/internal/testfs"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/errdefs"
)

const mib = 1 << 20

func TestEnableQuota(t *testing.T) {
	ctx := context.Background()
	mnt := testfs.New(t, "btrfs", 512<<20)
	if err := CreateSubvolume(ctx, mnt, "vol"); err != nil {
		t.Fatal(err)
	}
	vol := filepath.Join(mnt, "vol")

	if on, err := QuotaEnabled(ctx, mnt); err != nil || on {
		t.Fatalf("QuotaEnabled before enabling = %v, %v; want false", on, err)
	}
	for _, call := range []struct {
		name string
		err  error
	}{
		{"SetLimit", SetLimit(ctx, vol, mib)},
		{"Usage", func() error { _, _, _, err := Usage(ctx, vol); return err }()},
	} {
		if !errors.Is(call.err, errdefs.ErrFailedPrecondition) {
			t.Errorf("%s with quotas off = %v, want ErrFailedPrecondition", call.name, call.err)
		}
	}
	if n, err := RemoveStaleQgroups(ctx, mnt); err != nil || n != 0 {
		t.Errorf("RemoveStaleQgroups with quotas off = %d, %v; want 0, nil", n, err)
	}

	for i := range 2 { // idempotent
		if err := EnableQuota(ctx, mnt); err != nil {
			t.Fatalf("EnableQuota #%d: %v", i+1, err)
		}
		for _, p := range []string{mnt, vol} {
			if on, err := QuotaEnabled(ctx, p); err != nil || !on {
				t.Errorf("QuotaEnabled(%s) = %v, %v; want true", p, on, err)
			}
		}
	}
	// The subvolume made before quotas were on got its qgroup in the rescan.
	if _, _, limit, err := Usage(ctx, vol); err != nil || limit != 0 {
		t.Errorf("Usage of pre-existing subvolume = limit %d, %v; want 0, nil", limit, err)
	}
	if err := Rescan(ctx, mnt); err != nil {
		t.Errorf("Rescan: %v", err)
	}
}

func TestUsage(t *testing.T) {
	ctx := context.Background()
	mnt := testfs.New(t, "btrfs", 512<<20)
	if err := EnableQuota(ctx, mnt); err != nil {
		t.Fatal(err)
	}
	if err := CreateSubvolume(ctx, mnt, "vol"); err != nil {
		t.Fatal(err)
	}
	vol := filepath.Join(mnt, "vol")

	// Each step adds data and then checks what Usage reports. Metadata adds
	// a few 16 KiB nodes, hence the slack.
	const slack = 1 * mib
	steps := []struct {
		name      string
		do        func() error
		wantRfer  uint64
		wantExcl  uint64
		wantLimit uint64
	}{
		{"empty", func() error { return nil }, 0, 0, 0},
		{"8MiB", func() error { _, err := testfs.WriteFile(filepath.Join(vol, "a"), 8*mib, 1); return err }, 8 * mib, 8 * mib, 0},
		{"limit", func() error { return SetLimit(ctx, vol, 100*mib) }, 8 * mib, 8 * mib, 100 * mib},
		// A snapshot shares every extent: referenced stays, exclusive drops.
		{"snapshot", func() error { return Snapshot(ctx, vol, mnt, "snap", true) }, 8 * mib, 0, 100 * mib},
		{"4MiB more", func() error { _, err := testfs.WriteFile(filepath.Join(vol, "b"), 4*mib, 2); return err }, 12 * mib, 4 * mib, 100 * mib},
		{"no limit", func() error { return SetLimit(ctx, vol, 0) }, 12 * mib, 4 * mib, 0},
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		rfer, excl, limit, err := Usage(ctx, vol)
		if err != nil {
			t.Fatalf("%s: Usage: %v", st.name, err)
		}
		if rfer < st.wantRfer || rfer > st.wantRfer+slack {
			t.Errorf("%s: referenced = %d, want %d (+%d)", st.name, rfer, st.wantRfer, slack)
		}
		if excl < st.wantExcl || excl > st.wantExcl+slack {
			t.Errorf("%s: exclusive = %d, want %d (+%d)", st.name, excl, st.wantExcl, slack)
		}
		if limit != st.wantLimit {
			t.Errorf("%s: limit = %d, want %d", st.name, limit, st.wantLimit)
		}
	}
	if _, _, _, err := Usage(ctx, filepath.Join(vol, "a")); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("Usage of a file = %v, want ErrInvalidArgument", err)
	}
}

func TestLimitEnforced(t *testing.T) {
	ctx := context.Background()
	mnt := testfs.New(t, "btrfs", 512<<20)
	if err := EnableQuota(ctx, mnt); err != nil {
		t.Fatal(err)
	}
	if err := CreateSubvolume(ctx, mnt, "vol"); err != nil {
		t.Fatal(err)
	}
	vol := filepath.Join(mnt, "vol")
	if err := SetLimit(ctx, vol, 16*mib); err != nil {
		t.Fatal(err)
	}

	written, err := testfs.WriteFile(filepath.Join(vol, "big"), 32*mib, 3)
	if !errors.Is(err, unix.EDQUOT) && !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("writing 32 MiB under a 16 MiB limit: wrote %d bytes, err %v; want EDQUOT or ENOSPC", written, err)
	}
	if written >= 32*mib && err == nil {
		t.Errorf("all 32 MiB written under a 16 MiB limit")
	}
	t.Logf("stopped after %d bytes: %v", written, err)

	rfer, _, limit, err := Usage(ctx, vol)
	if err != nil {
		t.Fatal(err)
	}
	if limit != 16*mib || rfer > 16*mib {
		t.Errorf("Usage = referenced %d, limit %d; want at most 16 MiB, limit 16 MiB", rfer, limit)
	}

	// Raising the limit lets writes through again.
	if err := SetLimit(ctx, vol, 64*mib); err != nil {
		t.Fatal(err)
	}
	if _, err := testfs.WriteFile(filepath.Join(vol, "more"), 16*mib, 4); err != nil {
		t.Errorf("write after raising the limit: %v", err)
	}
}

// TestDeleteRemovesQgroup checks that no qgroup outlives its subvolume,
// whichever way the running kernel handles it (see RemoveQgroup).
func TestDeleteRemovesQgroup(t *testing.T) {
	ctx := context.Background()
	mnt := testfs.New(t, "btrfs", 512<<20)
	if err := EnableQuota(ctx, mnt); err != nil {
		t.Fatal(err)
	}
	vol := filepath.Join(mnt, "vol")
	if err := CreateSubvolume(ctx, mnt, "vol"); err != nil {
		t.Fatal(err)
	}
	if err := SetLimit(ctx, vol, 64*mib); err != nil {
		t.Fatal(err)
	}
	if _, err := testfs.WriteFile(filepath.Join(vol, "f"), 4*mib, 5); err != nil {
		t.Fatal(err)
	}
	if err := Snapshot(ctx, vol, mnt, "snap", true); err != nil {
		t.Fatal(err)
	}
	var ids []uint64
	for _, p := range []string{vol, filepath.Join(mnt, "snap")} {
		id, err := SubvolumeID(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
		if err := DeleteSubvolume(ctx, p); err != nil {
			t.Fatal(err)
		}
	}

	fd, err := unix.Open(mnt, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	for _, id := range ids {
		t.Logf("qgroup 0/%d right after DeleteSubvolume: present=%v", id, qgroupExists(t, fd, id))
		waitDropped(t, fd, id)
	}
	n, err := RemoveStaleQgroups(ctx, mnt)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("RemoveStaleQgroups removed %d qgroups the kernel left behind", n)
	for _, id := range ids {
		if qgroupExists(t, fd, id) {
			t.Errorf("qgroup 0/%d still there after its subvolume was dropped", id)
		}
	}
	if err := RemoveQgroup(ctx, mnt, ids[0]); err != nil {
		t.Errorf("RemoveQgroup of a missing qgroup: %v", err)
	}
	if top, err := SubvolumeID(ctx, mnt); err != nil || !qgroupExists(t, fd, top) {
		t.Errorf("top-level qgroup 0/%d gone (%v)", top, err)
	}
}

// waitDropped syncs until the cleaner thread has dropped subvolume id, like
// `btrfs subvolume sync`. The deadline only bounds a hang; nothing is timed.
func waitDropped(t *testing.T, fd int, id uint64) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		gone := true
		err := treeSearch(fd, exactRange(rootTreeObjectID, id, rootItemKey), func(searchHeader, []byte) bool {
			gone = false
			return false
		})
		if err != nil {
			t.Fatal(err)
		}
		if gone {
			// One more commit so qgroup changes made by the drop are on disk.
			if err := ioctl(fd, iocSync, nil); err != nil {
				t.Fatal(err)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("subvolume %d not dropped by the cleaner", id)
		}
		if err := ioctl(fd, iocSync, nil); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func qgroupExists(t *testing.T, fd int, id uint64) bool {
	t.Helper()
	found := false
	err := treeSearch(fd, exactKey(quotaTreeObjectID, 0, qgroupInfoKey, id), func(searchHeader, []byte) bool {
		found = true
		return false
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

func exactRange(tree, objectID uint64, typ uint32) searchKey {
	k := exactKey(tree, objectID, typ, 0)
	k.MaxOffset = ^uint64(0)
	return k
}
