package driver

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	mount "k8s.io/mount-utils"
	testingexec "k8s.io/utils/exec/testing"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/store"
)

// conditionPool is a fakePool that reports canned conditions, as the lvm
// pool does for inactive, partial and missing LVs, and counts Source
// calls: the controller's health must not need them.
type conditionPool struct {
	fakePool
	conds   map[string]backend.Condition
	sources int
}

var _ backend.HealthChecker = (*conditionPool)(nil)

func (p *conditionPool) VolumeCondition(ctx context.Context, id string) (backend.Condition, error) {
	if id == "vol-00000000000000ee" {
		return backend.Condition{}, errors.New("lvs: exit status 5")
	}
	return p.conds[id], nil
}

func (p *conditionPool) Source(ctx context.Context, id string) (backend.Source, error) {
	p.sources++
	return p.fakePool.Source(ctx, id)
}

// TestPoolConditionsInHealth: a pool's abnormal conditions are reported
// INACCESSIBLE with their reason and message by ControllerGetVolumeHealth,
// ControllerListVolumeHealth (which lists only those) and
// NodeGetVolumeHealth (for a volume the store knows whose source is not
// usable here); a pool that cannot tell is CheckFailed; a healthy volume
// has no entries.
func TestPoolConditionsInHealth(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(t.TempDir(), "cairn.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	const (
		ok       = "vol-0000000000000001"
		inactive = "vol-0000000000000002"
		missing  = "vol-0000000000000003"
		broken   = "vol-00000000000000ee"
	)
	pool := &conditionPool{conds: map[string]backend.Condition{
		inactive: {Abnormal: true, Reason: "Inactive", Message: "LV vg/" + inactive + " is inactive"},
		missing:  {Abnormal: true, Reason: "DataMissing", Message: "LV vg/" + missing + " does not exist"},
	}}
	err = st.Update(ctx, func(tx *store.Tx) error {
		for i, id := range []string{ok, inactive, missing, broken} {
			if err := tx.PutVolume(store.Volume{ID: id, Name: "v" + string(rune('a'+i)), Pool: "default", AccessType: "mount"}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	mounter := &mount.SafeFormatAndMount{Interface: mount.NewFakeMounter(nil), Exec: &testingexec.FakeExec{}}
	d, err := New(Config{Name: "cairn.csi.dev", NodeID: "node-1", Mode: ModeAll, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))},
		st, []Pool{{Name: "default", Backend: pool}}, mounter)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{ok: "", inactive: "Inactive", missing: "DataMissing", broken: "CheckFailed"}
	pool.sources = 0
	for id, reason := range want {
		resp, err := d.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: id})
		if err != nil {
			t.Fatalf("ControllerGetVolumeHealth(%s): %v", id, err)
		}
		checkHealth(t, "ControllerGetVolumeHealth", id, resp.GetVolumeHealth().GetHealthStatuses(), reason)
	}
	list, err := d.ControllerListVolumeHealth(ctx, &csi.ControllerListVolumeHealthRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetEntries()) != 3 {
		t.Errorf("ControllerListVolumeHealth listed %d volumes, want the 3 abnormal ones", len(list.GetEntries()))
	}
	for _, h := range list.GetEntries() {
		checkHealth(t, "ControllerListVolumeHealth", h.GetVolumeId(), h.GetHealthStatuses(), want[h.GetVolumeId()])
	}
	if pool.sources != 0 {
		t.Errorf("controller health asked the pool for %d sources; the pool's condition is enough", pool.sources)
	}
	// The fake's Source answers NOT_FOUND for every volume: the node
	// reports the store's volume abnormal rather than unknown.
	resp, err := d.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: inactive})
	if err != nil {
		t.Fatalf("NodeGetVolumeHealth: %v", err)
	}
	checkHealth(t, "NodeGetVolumeHealth", inactive, resp.GetVolumeHealth().GetHealthStatuses(), "Inactive")
}

func checkHealth(t *testing.T, rpc, id string, hs []*csi.VolumeHealth_VolumeHealthEntry, reason string) {
	t.Helper()
	if reason == "" {
		if len(hs) != 0 {
			t.Errorf("%s(%s) = %v, want healthy", rpc, id, hs)
		}
		return
	}
	if len(hs) != 1 || hs[0].GetStatus() != csi.VolumeHealthErrorType_INACCESSIBLE || hs[0].GetReason() != reason || hs[0].GetMessage() == "" {
		t.Errorf("%s(%s) = %v, want one INACCESSIBLE %s entry with a message", rpc, id, hs, reason)
	}
}
