package crash

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Limits that keep a round's checks quick.
const (
	maxVolumes   = 8
	maxSnapshots = 4
	volumeBytes  = 16 << 20
	maxBytes     = 64 << 20
	growBytes    = 4 << 20
)

type state int

const (
	planned state = iota // a create is in flight or interrupted
	alive
	deleted
)

// volume is the harness's model of one volume.
type volume struct {
	name     string
	id       string
	state    state
	bytes    int64
	sum      [32]byte // sha256 of the data file
	staged   bool
	pub      bool
	fromSnap *snapshot // restore source
	fromVol  *volume   // clone source
}

type snapshot struct {
	name  string
	id    string
	state state
	vol   *volume // source
	sum   [32]byte
	bytes int64 // the source's size when it was taken
}

type opKind string

const (
	opCreate         opKind = "create"
	opDelete         opKind = "delete"
	opSnapshot       opKind = "snapshot"
	opDeleteSnapshot opKind = "delete-snapshot"
	opRestore        opKind = "restore"
	opClone          opKind = "clone"
	opExpand         opKind = "expand"
	opStage          opKind = "stage"
	opPublish        opKind = "publish"
	opUnpublish      opKind = "unpublish"
	opUnstage        opKind = "unstage"
)

// op is one operation: a short, idempotent sequence of CSI calls that an
// orchestrator would retry with the same name or ID until it succeeds.
type op struct {
	kind  opKind
	vol   *volume // the volume acted on or created
	src   *volume // clone source
	snap  *snapshot
	bytes int64 // expand: the new size

	gotID            string // create/restore/clone/snapshot: the ID the driver answered, once it has
	err              error
	failedBeforeKill bool
}

func (o *op) String() string {
	s := string(o.kind)
	if o.vol != nil {
		s += fmt.Sprintf(" volume %s (%s)", o.vol.name, firstNonEmpty(o.vol.id, o.gotID, "no ID yet"))
	}
	if o.snap != nil {
		s += fmt.Sprintf(" snapshot %s (%s)", o.snap.name, firstNonEmpty(o.snap.id, o.gotID, "no ID yet"))
	}
	if o.src != nil {
		s += fmt.Sprintf(" from volume %s", o.src.id)
	}
	return s
}

func firstNonEmpty(v ...string) string {
	for _, s := range v {
		if s != "" {
			return s
		}
	}
	return ""
}

// keys are the model objects o touches: a batch never has two operations
// on one object, so ABORTED is never the expected answer.
func (o *op) keys() []any {
	var k []any
	if o.vol != nil {
		k = append(k, o.vol)
	}
	if o.src != nil {
		k = append(k, o.src)
	}
	if o.snap != nil {
		k = append(k, o.snap)
	}
	return k
}

// model is what the harness knows; only the test goroutine changes it.
type model struct {
	h       *harness
	vols    []*volume
	snaps   []*snapshot
	n       int
	planned int // volumes the batch being built will create
}

func (m *model) aliveVolumes() int {
	n := m.planned
	for _, v := range m.vols {
		if v.state == alive {
			n++
		}
	}
	return n
}

func (m *model) aliveSnapshots() int {
	n := 0
	for _, s := range m.snaps {
		if s.state == alive {
			n++
		}
	}
	return n
}

func (m *model) newVolume() *volume {
	m.n++
	return &volume{name: fmt.Sprintf("crash-%d-v%05d", m.h.seed%1000, m.n), bytes: volumeBytes}
}

func (m *model) newSnapshot(v *volume) *snapshot {
	m.n++
	return &snapshot{name: fmt.Sprintf("crash-%d-s%05d", m.h.seed%1000, m.n), vol: v}
}

func (h *harness) supported(k opKind) bool {
	switch k {
	case opSnapshot, opDeleteSnapshot, opRestore:
		return h.caps.snapshot
	case opClone:
		return h.caps.clone
	case opExpand:
		return h.caps.expand
	}
	return true
}

// pick makes an operation of kind on objects not in busy, or nil when the
// model has nothing it applies to.
func (m *model) pick(rng *rand.Rand, kind opKind, busy map[any]bool) *op {
	if !m.h.supported(kind) {
		return nil
	}
	free := func(v *volume, ok func(*volume) bool) []*volume {
		var out []*volume
		for _, x := range m.vols {
			if x.state == alive && !busy[x] && ok(x) {
				out = append(out, x)
			}
		}
		return out
	}
	any := func(*volume) bool { return true }
	one := func(vs []*volume) *volume {
		if len(vs) == 0 {
			return nil
		}
		return vs[rng.Intn(len(vs))]
	}
	switch kind {
	case opCreate:
		if m.aliveVolumes() >= maxVolumes {
			return nil
		}
		return &op{kind: kind, vol: m.newVolume()}
	case opClone:
		src := one(free(nil, any))
		if src == nil || m.aliveVolumes() >= maxVolumes {
			return nil
		}
		v := m.newVolume()
		v.fromVol = src
		return &op{kind: kind, vol: v, src: src}
	case opRestore:
		var snaps []*snapshot
		for _, s := range m.snaps {
			if s.state == alive && !busy[s] {
				snaps = append(snaps, s)
			}
		}
		if len(snaps) == 0 || m.aliveVolumes() >= maxVolumes {
			return nil
		}
		v := m.newVolume()
		v.fromSnap = snaps[rng.Intn(len(snaps))]
		return &op{kind: kind, vol: v, snap: v.fromSnap}
	case opSnapshot:
		src := one(free(nil, any))
		if src == nil || m.aliveSnapshots() >= maxSnapshots {
			return nil
		}
		return &op{kind: kind, snap: m.newSnapshot(src), src: src}
	case opDeleteSnapshot:
		var snaps []*snapshot
		for _, s := range m.snaps {
			if s.state == alive && !busy[s] {
				snaps = append(snaps, s)
			}
		}
		if len(snaps) == 0 {
			return nil
		}
		return &op{kind: kind, snap: snaps[rng.Intn(len(snaps))]}
	case opDelete:
		if v := one(free(nil, any)); v != nil {
			return &op{kind: kind, vol: v}
		}
	case opExpand:
		if v := one(free(nil, func(v *volume) bool { return v.bytes+growBytes <= maxBytes })); v != nil {
			return &op{kind: kind, vol: v, bytes: v.bytes + growBytes}
		}
	case opStage:
		if v := one(free(nil, func(v *volume) bool { return !v.staged })); v != nil {
			return &op{kind: kind, vol: v}
		}
	case opPublish:
		if v := one(free(nil, func(v *volume) bool { return v.staged && !v.pub })); v != nil {
			return &op{kind: kind, vol: v}
		}
	case opUnpublish:
		if v := one(free(nil, func(v *volume) bool { return v.pub })); v != nil {
			return &op{kind: kind, vol: v}
		}
	case opUnstage:
		if v := one(free(nil, func(v *volume) bool { return v.staged && !v.pub })); v != nil {
			return &op{kind: kind, vol: v}
		}
	}
	return nil
}

// weights of the random mix.
var weights = []struct {
	kind opKind
	w    int
}{
	{opCreate, 4}, {opDelete, 2}, {opSnapshot, 2}, {opDeleteSnapshot, 1}, {opRestore, 2}, {opClone, 2},
	{opExpand, 1}, {opStage, 2}, {opPublish, 2}, {opUnpublish, 2}, {opUnstage, 2},
}

// batch picks up to n operations on distinct objects.
func (m *model) batch(rng *rand.Rand, n int) []*op {
	total := 0
	for _, w := range weights {
		total += w.w
	}
	busy := map[any]bool{}
	var out []*op
	m.planned = 0
	defer func() { m.planned = 0 }()
	for tries := 0; len(out) < n && tries < 20; tries++ {
		r := rng.Intn(total)
		var kind opKind
		for _, w := range weights {
			if r < w.w {
				kind = w.kind
				break
			}
			r -= w.w
		}
		o := m.pick(rng, kind, busy)
		if o == nil {
			continue
		}
		for _, k := range o.keys() {
			busy[k] = true
		}
		if o.vol != nil && o.vol.state == planned {
			m.planned++
		}
		out = append(out, o)
	}
	if len(out) == 0 {
		out = append(out, m.pick(rng, opCreate, busy)) // the model is full of nothing to do: make something
		if out[0] == nil {
			out[0] = m.pick(rng, opDelete, busy)
		}
	}
	return out
}

// apply records a successful operation in the model.
func (m *model) apply(o *op) {
	switch o.kind {
	case opCreate, opRestore, opClone:
		v := o.vol
		if v.state == planned {
			m.vols = append(m.vols, v)
		}
		v.id, v.state, v.staged, v.pub = o.gotID, alive, false, false
		switch {
		case v.fromSnap != nil:
			v.sum = v.fromSnap.sum
		case v.fromVol != nil:
			v.sum = v.fromVol.sum
		default:
			v.sum = sha256.Sum256(m.h.content(v))
		}
	case opDelete:
		o.vol.state, o.vol.staged, o.vol.pub = deleted, false, false
	case opSnapshot:
		s := o.snap
		if s.state == planned {
			m.snaps = append(m.snaps, s)
		}
		s.id, s.state, s.sum, s.bytes = o.gotID, alive, s.vol.sum, s.vol.bytes
	case opDeleteSnapshot:
		o.snap.state = deleted
	case opExpand:
		o.vol.bytes = o.bytes
	case opStage:
		o.vol.staged = true
	case opPublish:
		o.vol.pub = true
	case opUnpublish:
		o.vol.pub = false
	case opUnstage:
		o.vol.staged = false
	}
	m.h.stats.opsDone++
}

// content is the data the harness writes into a new volume: a few KiB
// that depend on the seed and the volume's name.
func (h *harness) content(v *volume) []byte {
	s := sha256.Sum256([]byte(fmt.Sprintf("%d/%s", h.seed, v.name)))
	r := rand.New(rand.NewSource(int64(binary.LittleEndian.Uint64(s[:]))))
	b := make([]byte, 4096+r.Intn(60<<10))
	r.Read(b)
	return b
}

func (h *harness) stagingPath(id string) string { return filepath.Join(h.root, "staging", id) }
func (h *harness) targetPath(id string) string  { return filepath.Join(h.root, "target", id) }

var mountCap = &csi.VolumeCapability{
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
}

// permanent marks an error that retrying cannot fix: a broken promise.
type permanent struct{ error }

// retryable reports whether an orchestrator's retry may still fix err.
// It retries every failure, but answers that are wrong for a retried call
// (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, OUT_OF_RANGE, ...) will not
// change, and a broken promise the harness saw is never fixed by retrying.
func retryable(err error) bool {
	var p permanent
	if errors.As(err, &p) {
		return false
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.Aborted, codes.DeadlineExceeded, codes.Canceled, codes.Internal:
		return true
	}
	return false
}

// runOp runs o once against the current process.
func (h *harness) runOp(o *op) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := h.c
	switch o.kind {
	case opCreate, opRestore, opClone:
		return h.create(ctx, c, o)
	case opDelete:
		id := o.vol.id
		if err := h.unpublish(ctx, c, id, h.targetPath(id)); err != nil {
			return err
		}
		if err := h.unstage(ctx, c, id, h.stagingPath(id)); err != nil {
			return err
		}
		_, err := c.ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: map[string]string{}})
		return wrap("DeleteVolume", err)
	case opSnapshot:
		resp, err := c.ctl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: o.snap.name, SourceVolumeId: o.src.id, Secrets: h.secrets()})
		if err != nil {
			return wrap("CreateSnapshot", err)
		}
		return o.answer(resp.GetSnapshot().GetSnapshotId())
	case opDeleteSnapshot:
		_, err := c.ctl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: o.snap.id})
		return wrap("DeleteSnapshot", err)
	case opExpand:
		return h.expand(ctx, c, o)
	case opStage:
		return h.stage(ctx, c, o.vol.id, h.stagingPath(o.vol.id))
	case opPublish:
		target := h.targetPath(o.vol.id)
		if err := h.publish(ctx, c, o.vol.id, h.stagingPath(o.vol.id), target); err != nil {
			return err
		}
		return h.readBack(o.vol, target, o.vol.sum)
	case opUnpublish:
		return h.unpublish(ctx, c, o.vol.id, h.targetPath(o.vol.id))
	case opUnstage:
		return h.unstage(ctx, c, o.vol.id, h.stagingPath(o.vol.id))
	}
	return fmt.Errorf("unknown operation %s", o.kind)
}

// answer records the ID a create returned; a retry must get the same one
// once an attempt has been answered, since the answer means committed.
func (o *op) answer(id string) error {
	if id == "" {
		return permanent{fmt.Errorf("%s: the driver answered an empty ID", o)}
	}
	if o.gotID != "" && o.gotID != id {
		return permanent{fmt.Errorf("%s: a retry answered ID %s, an earlier attempt %s", o, id, o.gotID)}
	}
	o.gotID = id
	return nil
}

func wrap(call string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", call, err)
}

func (h *harness) create(ctx context.Context, c clients, o *op) error {
	v := o.vol
	req := &csi.CreateVolumeRequest{
		Name:               v.name,
		CapacityRange:      &csi.CapacityRange{RequiredBytes: v.bytes},
		VolumeCapabilities: []*csi.VolumeCapability{mountCap},
		Secrets:            h.secrets(),
	}
	if h.tg.encrypted {
		req.Parameters = map[string]string{"encryption": "true"}
	}
	var want [32]byte
	switch {
	case v.fromSnap != nil:
		req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: v.fromSnap.id}}}
		req.CapacityRange.RequiredBytes = max(v.bytes, v.fromSnap.bytes)
		want = v.fromSnap.sum
	case v.fromVol != nil:
		req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: v.fromVol.id}}}
		req.CapacityRange.RequiredBytes = max(v.bytes, v.fromVol.bytes)
		want = v.fromVol.sum
	}
	resp, err := c.ctl.CreateVolume(ctx, req)
	if err != nil {
		return wrap("CreateVolume", err)
	}
	if err := o.answer(resp.GetVolume().GetVolumeId()); err != nil {
		return err
	}
	if got := resp.GetVolume().GetCapacityBytes(); got < req.CapacityRange.RequiredBytes {
		return permanent{fmt.Errorf("%s: %d bytes, fewer than the %d required", o, got, req.CapacityRange.RequiredBytes)}
	}
	v.bytes = max(v.bytes, req.CapacityRange.RequiredBytes)
	id := o.gotID
	staging, target := h.stagingPath(id), h.targetPath(id)
	if err := h.stage(ctx, c, id, staging); err != nil {
		return err
	}
	if err := h.publish(ctx, c, id, staging, target); err != nil {
		return err
	}
	if v.fromSnap == nil && v.fromVol == nil {
		if err := writeData(target, h.content(v)); err != nil {
			return permanent{fmt.Errorf("%s: write data: %w", o, err)}
		}
	} else if err := h.readBack(v, target, want); err != nil {
		return err
	}
	if err := h.unpublish(ctx, c, id, target); err != nil {
		return err
	}
	return h.unstage(ctx, c, id, staging)
}

func (h *harness) expand(ctx context.Context, c clients, o *op) error {
	v := o.vol
	resp, err := c.ctl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{
		VolumeId: v.id, CapacityRange: &csi.CapacityRange{RequiredBytes: o.bytes}, VolumeCapability: mountCap,
	})
	if err != nil {
		return wrap("ControllerExpandVolume", err)
	}
	if resp.GetCapacityBytes() < o.bytes {
		return permanent{fmt.Errorf("%s: expanded to %d bytes, want at least %d", o, resp.GetCapacityBytes(), o.bytes)}
	}
	if !resp.GetNodeExpansionRequired() || !v.staged {
		return nil // the next stage sees the new size
	}
	// The node grows a staged filesystem where it is mounted.
	path := h.stagingPath(v.id)
	if v.pub {
		path = h.targetPath(v.id)
	}
	_, err = c.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{
		VolumeId: v.id, VolumePath: path, StagingTargetPath: h.stagingPath(v.id),
		CapacityRange: &csi.CapacityRange{RequiredBytes: o.bytes}, VolumeCapability: mountCap,
	})
	return wrap("NodeExpandVolume", err)
}

func (h *harness) stage(ctx context.Context, c clients, id, staging string) error {
	if err := os.MkdirAll(staging, 0o750); err != nil { // the CO makes the staging directory
		return permanent{err}
	}
	_, err := c.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: mountCap, Secrets: h.secrets()})
	return wrap("NodeStageVolume "+id, err)
}

func (h *harness) publish(ctx context.Context, c clients, id, staging, target string) error {
	_, err := c.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{
		VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: mountCap,
	})
	return wrap("NodePublishVolume "+id, err)
}

func (h *harness) unpublish(ctx context.Context, c clients, id, target string) error {
	_, err := c.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
	if err != nil {
		return wrap("NodeUnpublishVolume "+id, err)
	}
	if _, err := os.Lstat(target); err == nil {
		return permanent{fmt.Errorf("NodeUnpublishVolume %s succeeded but left %s", id, target)}
	}
	return nil
}

func (h *harness) unstage(ctx context.Context, c clients, id, staging string) error {
	_, err := c.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
	if err != nil {
		return wrap("NodeUnstageVolume "+id, err)
	}
	// The CO removes the staging directory it made; an unstaged volume's
	// directory must be empty and unmounted, which rmdir proves.
	if err := os.Remove(staging); err != nil && !os.IsNotExist(err) {
		return permanent{fmt.Errorf("NodeUnstageVolume %s succeeded but %s cannot be removed: %w", id, staging, err)}
	}
	return nil
}

// writeData writes the data file and its checksum, durably.
func writeData(dir string, data []byte) error {
	sum := sha256.Sum256(data)
	for _, f := range []struct {
		name string
		b    []byte
	}{{"data", data}, {"data.sha256", []byte(hex.EncodeToString(sum[:]))}} {
		fh, err := os.OpenFile(filepath.Join(dir, f.name), os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		if _, err := fh.Write(f.b); err != nil {
			fh.Close()
			return err
		}
		if err := fh.Sync(); err != nil {
			fh.Close()
			return err
		}
		if err := fh.Close(); err != nil {
			return err
		}
	}
	return nil
}

// readBack checks the data file under dir against want and against the
// checksum stored beside it.
func (h *harness) readBack(v *volume, dir string, want [32]byte) error {
	data, err := os.ReadFile(filepath.Join(dir, "data"))
	if err != nil {
		return permanent{fmt.Errorf("volume %s (%s): read data at %s: %w", v.name, v.id, dir, err)}
	}
	stored, err := os.ReadFile(filepath.Join(dir, "data.sha256"))
	if err != nil {
		return permanent{fmt.Errorf("volume %s (%s): read checksum at %s: %w", v.name, v.id, dir, err)}
	}
	got := sha256.Sum256(data)
	if got != want || hex.EncodeToString(got[:]) != string(stored) {
		return permanent{fmt.Errorf("volume %s (%s): data at %s has sha256 %x (stored %s), want %x",
			v.name, v.id, dir, got, stored, want)}
	}
	return nil
}

// secrets are the CSI secrets of every call that takes them: the
// encryption passphrase on an encrypted target, none elsewhere.
func (h *harness) secrets() map[string]string {
	if !h.tg.encrypted {
		return nil
	}
	return map[string]string{"encryptionPassphrase": "crash-harness-passphrase-32-bytes"}
}
