package crash

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"

	"github.com/cairn-csi/cairn/internal/backend/lvmpool"
	"github.com/cairn-csi/cairn/internal/fscrypt"
	"github.com/cairn-csi/cairn/internal/fsfreeze"
	"github.com/cairn-csi/cairn/internal/loopdev"
	"github.com/cairn-csi/cairn/internal/luks"
)

// entryPattern is what may sit in a pool's volumes/ or snapshots/
// directory once reconcile has run: an ID, optionally with an extension.
var entryPattern = regexp.MustCompile(`^((?:vol|snap)-[0-9a-f]{16})(\.[a-z0-9]+)?$`)

// listed returns every ID ListVolumes and ListSnapshots report, walking
// small pages so that the tokens are exercised too.
func (h *harness) listed() (vols, snaps map[string]bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	vols, snaps = map[string]bool{}, map[string]bool{}
	token := ""
	for {
		resp, err := h.c.ctl.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: 3, StartingToken: token})
		if err != nil {
			h.fatalf("ListVolumes: %v", err)
		}
		for _, e := range resp.GetEntries() {
			id := e.GetVolume().GetVolumeId()
			if vols[id] {
				h.fatalf("ListVolumes reported %s twice", id)
			}
			vols[id] = true
		}
		if token = resp.GetNextToken(); token == "" {
			break
		}
	}
	if !h.caps.snapshot {
		return vols, snaps
	}
	for {
		resp, err := h.c.ctl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{MaxEntries: 3, StartingToken: token})
		if err != nil {
			h.fatalf("ListSnapshots: %v", err)
		}
		for _, e := range resp.GetEntries() {
			id := e.GetSnapshot().GetSnapshotId()
			if snaps[id] {
				h.fatalf("ListSnapshots reported %s twice", id)
			}
			snaps[id] = true
		}
		if token = resp.GetNextToken(); token == "" {
			break
		}
	}
	return vols, snaps
}

// onDisk returns the IDs in one of the pool's directories, failing on
// anything that is not an ID: a new-*/rm-* leftover or a stray entry.
func (h *harness) onDisk(dir string) map[string]bool {
	if h.tg.lvm {
		vols, snaps := h.onLVM()
		return map[string]map[string]bool{"volumes": vols, "snapshots": snaps}[dir]
	}
	ids := map[string]bool{}
	entries, err := os.ReadDir(filepath.Join(h.poolRoot, dir))
	if err != nil {
		h.fatalf("read pool %s/: %v", dir, err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") { // the pool's own bookkeeping
			continue
		}
		m := entryPattern.FindStringSubmatch(e.Name())
		if m == nil {
			h.fatalf("pool %s/ holds %q after reconcile: a leftover the store does not account for", dir, e.Name())
		}
		ids[m[1]] = true
	}
	return ids
}

// check verifies the invariants after a restart. With operations pending
// (interrupted, not yet retried) it allows exactly the uncertainty they
// leave; with none, model, store, disk and mounts must agree exactly.
func (h *harness) check(pending []*op) {
	h.t.Helper()
	vols, snaps := h.listed()

	// Store against disk: exactly the same IDs.
	var diskVols, diskSnaps map[string]bool
	if h.tg.lvm { // one lvs for both: each lvm2 command costs about a second in the VM
		diskVols, diskSnaps = h.onLVM()
	} else {
		diskVols, diskSnaps = h.onDisk("volumes"), h.onDisk("snapshots")
	}
	for _, cmp := range []struct {
		what        string
		store, disk map[string]bool
	}{{"volume", vols, diskVols}, {"snapshot", snaps, diskSnaps}} {
		for id := range cmp.store {
			if !cmp.disk[id] {
				h.fatalf("%s %s is in the store but not on disk", cmp.what, id)
			}
		}
		for id := range cmp.disk {
			if !cmp.store[id] {
				h.fatalf("%s %s is on disk but unknown to the store after reconcile", cmp.what, id)
			}
		}
	}

	// Store against the model.
	uncertain := map[any]bool{}
	unknownCreates := 0 // creates whose answer never came: their IDs are unknown
	for _, o := range pending {
		for _, k := range o.keys() {
			uncertain[k] = true
		}
		switch o.kind {
		case opCreate, opRestore, opClone, opSnapshot:
			if o.gotID == "" {
				unknownCreates++
			}
		}
	}
	known := map[string]bool{}
	for _, v := range h.m.vols {
		known[v.id] = true
		switch {
		case v.state == alive && !uncertain[v] && !vols[v.id]:
			h.fatalf("volume %s (%s) was created and never deleted, but the store lost it", v.name, v.id)
		case v.state == deleted && !uncertain[v] && vols[v.id]:
			h.fatalf("volume %s (%s) was deleted, but the store lists it again", v.name, v.id)
		}
	}
	for _, s := range h.m.snaps {
		known[s.id] = true
		switch {
		case s.state == alive && !uncertain[s] && !snaps[s.id]:
			h.fatalf("snapshot %s (%s) was created and never deleted, but the store lost it", s.name, s.id)
		case s.state == deleted && !uncertain[s] && snaps[s.id]:
			h.fatalf("snapshot %s (%s) was deleted, but the store lists it again", s.name, s.id)
		}
	}
	for _, o := range pending {
		if o.gotID != "" {
			known[o.gotID] = true
			if !vols[o.gotID] && !snaps[o.gotID] {
				h.fatalf("%s was answered with ID %s, so committed, but the store lost it", o, o.gotID)
			}
		}
	}
	var strangers []string
	for id := range vols {
		if !known[id] {
			strangers = append(strangers, id)
		}
	}
	for id := range snaps {
		if !known[id] {
			strangers = append(strangers, id)
		}
	}
	if len(strangers) > unknownCreates {
		sort.Strings(strangers)
		h.fatalf("the store has %d IDs the harness never got (%v), but only %d creates were interrupted before answering",
			len(strangers), strangers, unknownCreates)
	}

	h.checkMounts(vols, uncertain)
	h.checkLoops(vols, uncertain)
	h.checkMappings(vols, uncertain)
}

// checkMounts: every mount under the harness's directories is of a volume
// the store knows, where the model (or an interrupted operation) put it,
// and never stacked; without uncertainty, every staged and published
// volume is mounted where it should be.
func (h *harness) checkMounts(vols map[string]bool, uncertain map[any]bool) {
	byID := map[string]*volume{}
	for _, v := range h.m.vols {
		if v.id != "" {
			byID[v.id] = v
		}
	}
	mounts := h.ourMounts()
	for mp, n := range mounts {
		if n > 1 {
			h.fatalf("%s is mounted %d times: stacked mounts", mp, n)
		}
		rel, _ := filepath.Rel(h.root, mp)
		parts := strings.Split(rel, "/")
		if len(parts) != 2 || (parts[0] != "staging" && parts[0] != "target") {
			h.fatalf("unexpected mount %s under the harness's directory", mp)
		}
		id := parts[1]
		if !vols[id] {
			h.fatalf("%s is mounted, but volume %s is not in the store", mp, id)
		}
		v := byID[id]
		if v == nil {
			// An interrupted create's volume: it must be one.
			if len(uncertain) == 0 {
				h.fatalf("%s is mounted for a volume the harness does not know", mp)
			}
			continue
		}
		want := v.staged
		if parts[0] == "target" {
			want = v.pub
		}
		if !want && !uncertain[v] {
			h.fatalf("%s is mounted, but volume %s (%s) is not %sed", mp, v.name, id, map[string]string{"staging": "stag", "target": "publish"}[parts[0]])
		}
	}
	for _, v := range h.m.vols {
		if v.state == alive || uncertain[v] {
			h.checkKey(v, mounts[h.stagingPath(v.id)] > 0, uncertain[v])
		}
		if v.state != alive || uncertain[v] {
			continue
		}
		if v.staged && mounts[h.stagingPath(v.id)] == 0 && h.stagedIsMount() {
			h.fatalf("volume %s (%s) is staged but %s is not mounted", v.name, v.id, h.stagingPath(v.id))
		}
		if v.pub && mounts[h.targetPath(v.id)] == 0 {
			h.fatalf("volume %s (%s) is published but %s is not mounted", v.name, v.id, h.targetPath(v.id))
		}
	}
}

// checkKey: an encrypted volume's key is loaded exactly while it is
// staged. A key loaded with nothing mounted is a leak (a crash between
// unlock and mount, or during a copy) that start-up reconcile must clean,
// so that holds for volumes whose last operation was interrupted too.
func (h *harness) checkKey(v *volume, mounted, uncertain bool) {
	if !h.tg.encrypted || v.id == "" || h.tg.poolType != "dir" {
		return // LUKS: checkMappings
	}
	dir := filepath.Join(h.poolRoot, "volumes", v.id)
	kid, encrypted, err := fscrypt.Policy(dir)
	if errors.Is(err, fs.ErrNotExist) && uncertain {
		return // an interrupted create or delete
	}
	if err != nil || !encrypted {
		h.fatalf("volume %s (%s) of an encrypting target is not encrypted: %v", v.name, v.id, err)
	}
	present, err := fscrypt.KeyPresent(dir, kid)
	if err != nil {
		h.fatalf("key status of %s: %v", v.id, err)
	}
	switch {
	case present && !mounted:
		h.fatalf("volume %s (%s): its key is loaded but nothing mounts it", v.name, v.id)
	case !present && v.staged && !uncertain:
		h.fatalf("volume %s (%s) is staged but its key is not loaded", v.name, v.id)
	}
}

// checkMappings: the LUKS mapping of a volume (cairn-<ID>, the volume's
// key in the kernel) is open exactly while the volume is staged. A mapping
// on one of the pool's images with nothing mounting it is a leak (a crash
// between open and mount, or between unmount and close) that start-up
// reconcile must close, so that holds for volumes whose last operation was
// interrupted too: reconcile has run before the first call is answered.
// Every volume here is staged with a mount (no block access).
func (h *harness) checkMappings(vols map[string]bool, uncertain map[any]bool) {
	maps := h.ourMappings()
	if len(maps) == 0 && !(h.tg.encrypted && h.tg.poolType == "image") {
		return
	}
	mounts := h.ourMounts()
	for id, backing := range maps {
		switch {
		case strings.HasSuffix(backing, " (deleted)"):
			h.fatalf("mapping %s is open on the deleted image %s", luks.MappingName(id), backing)
		case !vols[id]:
			h.fatalf("mapping %s is open, but volume %s is not in the store", luks.MappingName(id), id)
		case mounts[h.stagingPath(id)] == 0:
			h.fatalf("mapping %s is open (the volume's key is in the kernel), but nothing stages volume %s", luks.MappingName(id), id)
		}
	}
	for _, v := range h.m.vols {
		if v.state == alive && v.staged && !uncertain[v] && maps[v.id] == "" {
			h.fatalf("volume %s (%s) is staged, but its mapping %s is not open", v.name, v.id, luks.MappingName(v.id))
		}
	}
}

// ourMappings maps the ID of every open cairn-<ID> device-mapper mapping
// that sits on a loop device of one of the pool's images to that image,
// as sysfs reports it (with " (deleted)" when it was unlinked). Mappings
// of other pools are not ours to judge.
func (h *harness) ourMappings() map[string]string {
	out := map[string]string{}
	entries, _ := os.ReadDir("/dev/mapper")
	for _, e := range entries {
		id, ok := strings.CutPrefix(e.Name(), "cairn-")
		if !ok {
			continue
		}
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join("/dev/mapper", e.Name()), &st); err != nil {
			continue // closed meanwhile
		}
		slaves, _ := os.ReadDir(fmt.Sprintf("/sys/dev/block/%d:%d/slaves", unix.Major(st.Rdev), unix.Minor(st.Rdev)))
		for _, sl := range slaves {
			b, err := os.ReadFile(filepath.Join("/sys/block", sl.Name(), "loop", "backing_file"))
			if backing := strings.TrimSuffix(string(b), "\n"); err == nil && strings.HasPrefix(backing, h.poolRoot+"/") {
				out[id] = backing
			}
		}
	}
	return out
}

// stagedIsMount: every pool here stages filesystem volumes with a mount.
func (h *harness) stagedIsMount() bool { return true }

// ourMounts counts the mount table's entries per mount point under the
// harness's directory.
func (h *harness) ourMounts() map[string]int {
	infos, err := mount.ParseMountInfo("/proc/self/mountinfo")
	if err != nil {
		h.fatalf("read mountinfo: %v", err)
	}
	out := map[string]int{}
	for _, mi := range infos {
		if strings.HasPrefix(mi.MountPoint, h.root+"/") {
			out[mi.MountPoint]++
		}
	}
	return out
}

// checkLoops: every loop device backed by a file in the pool belongs to a
// volume the store knows and the model has staged (or an interrupted
// operation touched).
func (h *harness) checkLoops(vols map[string]bool, uncertain map[any]bool) {
	byID := map[string]*volume{}
	for _, v := range h.m.vols {
		byID[v.id] = v
	}
	for dev, backing := range loopDevices() {
		file := strings.TrimSuffix(backing, " (deleted)")
		if !strings.HasPrefix(file, h.poolRoot+"/") {
			continue
		}
		m := entryPattern.FindStringSubmatch(filepath.Base(file))
		if m == nil {
			h.fatalf("%s is attached to %s, which is not a volume image", dev, backing)
		}
		id := m[1]
		v := byID[id]
		switch {
		case strings.HasSuffix(backing, " (deleted)") && len(uncertain) == 0:
			h.fatalf("%s is attached to the deleted image %s", dev, file)
		case !vols[id] && len(uncertain) == 0:
			h.fatalf("%s is attached to %s, whose volume the store does not know", dev, file)
		case v != nil && !v.staged && !uncertain[v]:
			h.fatalf("%s is attached to volume %s (%s), which is not staged", dev, v.name, id)
		case v == nil && len(uncertain) == 0:
			h.fatalf("%s is attached to %s, a volume the harness does not know", dev, file)
		}
	}
}

// loopDevices maps each attached loop device to its backing file, as
// sysfs reports it.
func loopDevices() map[string]string {
	out := map[string]string{}
	paths, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // detached meanwhile
		}
		dev := "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(p)))
		out[dev] = strings.TrimSuffix(string(b), "\n")
	}
	return out
}

// verifyParallel is how many volumes verifyData reads back at once. Every
// stage and unstage costs the lvm pool several lvm2 commands, about a
// second each in the VM lane, and the harness would otherwise wait for
// each in turn after every crash; the driver takes calls on distinct
// volumes concurrently, as it does from kubelet.
const verifyParallel = 4

// verifyData reads every volume's data back. A published volume is read
// through its target (which also proves the mount survived the restart);
// any other is published, or staged and published, afresh and then put
// back as it was. Volumes are read back verifyParallel at a time.
func (h *harness) verifyData() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var vols []*volume
	for _, v := range h.m.vols {
		if v.state == alive {
			vols = append(vols, v)
			h.stats.verified++
		}
	}
	errs := make([]error, len(vols))
	sem := make(chan struct{}, verifyParallel)
	var wg sync.WaitGroup
	for i, v := range vols {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			errs[i] = h.verifyVolume(ctx, v)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		h.fatalf("after restart: %v", err)
	}
	for _, v := range vols {
		if v.pub {
			h.probeWrite(v)
		}
	}
}

// verifyVolume reads one volume's data back for verifyData; it runs on
// its own goroutine, so it returns its failure.
func (h *harness) verifyVolume(ctx context.Context, v *volume) error {
	if v.pub {
		return h.readBack(v, h.targetPath(v.id), v.sum)
	}
	staging, target := h.stagingPath(v.id), h.targetPath(v.id)
	steps := []func() error{}
	// An encrypted volume that stays staged is staged again, as kubelet
	// may after a restart: with its secret, it must find its own
	// mapping or key and mount, not fail or stack a second one.
	if !v.staged || h.tg.encrypted {
		steps = append(steps, func() error { return h.stage(ctx, h.c, v.id, staging) })
	}
	steps = append(steps,
		func() error { return h.publish(ctx, h.c, v.id, staging, target) },
		func() error { return h.readBack(v, target, v.sum) },
		func() error { return h.unpublish(ctx, h.c, v.id, target) },
	)
	if !v.staged {
		steps = append(steps, func() error { return h.unstage(ctx, h.c, v.id, staging) })
	}
	for _, step := range steps {
		if err := h.converge(fmt.Sprintf("verify volume %s (%s) after restart", v.name, v.id), step); err != nil {
			return err
		}
	}
	return nil
}

// unmountOurs removes every mount under the harness's directory, deepest
// first: the last resort at cleanup, so that a failed run does not keep
// the pool's filesystem busy.
func (h *harness) unmountOurs() {
	for range 3 {
		mps := h.ourMountsNoFail()
		if len(mps) == 0 {
			break
		}
		sort.Sort(sort.Reverse(sort.StringSlice(mps)))
		for _, mp := range mps {
			unix.Unmount(mp, unix.MNT_DETACH)
		}
	}
	// Loop devices on pool images hold the pool's filesystem open.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// So do the LUKS mappings on them.
	for id := range h.ourMappings() {
		luks.Close(ctx, luks.MappingName(id))
	}
	for dev, backing := range loopDevices() {
		if strings.HasPrefix(backing, h.poolRoot+"/") {
			loopdev.Detach(ctx, dev)
		}
	}
}

func (h *harness) ourMountsNoFail() []string {
	infos, err := mount.ParseMountInfo("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, mi := range infos {
		if strings.HasPrefix(mi.MountPoint, h.root+"/") {
			out = append(out, mi.MountPoint)
		}
	}
	return out
}

// probeWrite proves a published volume takes writes: a filesystem left
// frozen (FIFREEZE outlives the process that froze it) makes them hang.
func (h *harness) probeWrite(v *volume) {
	probe := filepath.Join(h.targetPath(v.id), ".probe")
	done := make(chan error, 1)
	go func() { done <- writeProbe(probe) }()
	select {
	case err := <-done:
		if err != nil {
			h.fatalf("volume %s (%s): write through %s: %v", v.name, v.id, h.targetPath(v.id), err)
		}
	case <-time.After(30 * time.Second):
		// Thaw it, or the blocked write keeps this test process from
		// ever exiting; the failure stands.
		thawErr := fsfreeze.Thaw(h.targetPath(v.id))
		h.fatalf("volume %s (%s): a write through %s hangs: its filesystem was left frozen (thawed by the harness: %v)",
			v.name, v.id, h.targetPath(v.id), thawErr)
	}
}

func writeProbe(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := f.WriteString("probe"); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Remove(path)
}

// onLVM is onDisk for an lvm pool: the IDs of the pool's tagged volume
// and snapshot LVs, from one lvs, failing on a tagged LV whose name is not
// an ID (a new-*/rm-* leftover reconcile missed). Untagged LVs (testlvm's
// "foreign" one) are not the pool's.
func (h *harness) onLVM() (vols, snaps map[string]bool) {
	vg, _, _ := strings.Cut(h.poolRoot, "/")
	cmd := exec.Command("lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", "lv_name,lv_tags", vg)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LVM_SUPPRESS_FD_WARNINGS=1")
	out, err := cmd.Output()
	if err != nil {
		h.fatalf("lvs %s: %v", vg, err)
	}
	lvs, err := lvmpool.ParseLVs(out)
	if err != nil {
		h.fatalf("%v", err)
	}
	vols, snaps = map[string]bool{}, map[string]bool{}
	for _, lv := range lvs {
		pool, _ := lv.Tag(lvmpool.TagPool)
		k, _ := lv.Tag(lvmpool.TagKind)
		ids := map[string]map[string]bool{"volume": vols, "snapshot": snaps}[k]
		if !lv.HasTag(lvmpool.TagOwner) || pool != h.poolRoot || ids == nil {
			continue
		}
		m := entryPattern.FindStringSubmatch(lv.Name)
		if m == nil || m[2] != "" {
			h.fatalf("lvm pool %s holds the %s LV %q after reconcile: a leftover the store does not account for", h.poolRoot, k, lv.Name)
		}
		ids[m[1]] = true
	}
	return vols, snaps
}
