package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// Floor phases: what the kernel and the disk under --work-dir demand for
// the work a driver's calls do, measured in the same run as the driver, so
// that its figures can be read as ratios that mean something on any
// machine. A driver whose pool is on another filesystem than --work-dir
// is compared with this one's floor; the note says so.
const (
	PhaseFloorCreate    = "floor/create"
	PhaseFloorBindMount = "floor/bind-mount"
	PhaseListVolumes    = "list/volumes"
	floorRounds         = 50
)

// floorPhases prepares the durable floor of a create (mkdir, rename,
// directory fsync, one bbolt commit of one record), whose rounds are
// interleaved with the sequential creates (throughputPhases), and, as
// root, measures the floor of a stage or publish (mount(2) of a bind
// mount and umount2).
func (r *runner) floorPhases(ctx context.Context) error {
	if r.cfg.WorkDir == "" {
		r.skip("floor", "no --work-dir to measure the filesystem's floor on")
		return nil
	}
	dir := filepath.Join(r.cfg.WorkDir, r.cfg.Prefix+"-floor")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("--work-dir: %w", err)
	}
	rig, err := newFloorRig(dir)
	if err != nil {
		r.res.Phases = append(r.res.Phases, Phase{Name: PhaseFloorCreate, Errors: 1, Concurrency: 1, FirstError: err.Error()})
		os.RemoveAll(dir)
	} else {
		r.floor = rig
	}
	if os.Geteuid() != 0 {
		r.skip(PhaseFloorBindMount, "mount(2) needs root")
		return nil
	}
	if err := r.floorBind(ctx, dir); err != nil {
		r.res.Phases = append(r.res.Phases, Phase{Name: PhaseFloorBindMount, Errors: 1, Concurrency: 1, FirstError: err.Error()})
	}
	return nil
}

// floorRig does one durable create's floor per step, in one directory
// and one bbolt database.
type floorRig struct {
	dir, entries string
	db           *bolt.DB
	rec          []byte
	n            int
	s            sampler
	elapsed      time.Duration
}

func newFloorRig(dir string) (*floorRig, error) {
	entries := filepath.Join(dir, "entries")
	if err := os.Mkdir(entries, 0o700); err != nil {
		return nil, err
	}
	db, err := bolt.Open(filepath.Join(dir, "floor.db"), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, err
	}
	if err := db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucketIfNotExists([]byte("v")); return err }); err != nil {
		db.Close()
		return nil, err
	}
	return &floorRig{dir: dir, entries: entries, db: db, rec: make([]byte, 300)}, nil // about a volume record
}

// step times one round and records it; after an error it does nothing.
func (f *floorRig) step() {
	if f.s.errors > 0 {
		return
	}
	id := fmt.Sprintf("vol-%016x", f.n)
	f.n++
	t0 := time.Now()
	err := func() error {
		tmp := filepath.Join(f.entries, "new-"+id)
		if err := unix.Mkdir(tmp, 0o700); err != nil {
			return err
		}
		if err := unix.Rename(tmp, filepath.Join(f.entries, id)); err != nil {
			return err
		}
		fd, err := unix.Open(f.entries, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		err = unix.Fsync(fd)
		unix.Close(fd)
		if err != nil {
			return err
		}
		return f.db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte("v")).Put([]byte(id), f.rec) })
	}()
	d := time.Since(t0)
	f.elapsed += d
	f.s.add(d, err)
}

// finish tops the rounds up to floorRounds, records the phase and
// removes the rig's files.
func (r *runner) finishFloor(ctx context.Context) {
	f := r.floor
	if f == nil {
		return
	}
	r.floor = nil
	for f.n < floorRounds && ctx.Err() == nil && f.s.errors == 0 {
		f.step()
	}
	f.db.Close()
	os.RemoveAll(f.dir)
	if f.s.empty() {
		return
	}
	p := f.s.phase(PhaseFloorCreate, 1, f.elapsed)
	p.Note = "mkdir, rename, directory fsync, one bbolt commit, on --work-dir's filesystem; a round before each sequential create"
	r.res.Phases = append(r.res.Phases, p)
}

func (r *runner) floorBind(ctx context.Context, dir string) error {
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	for _, p := range []string{src, dst} {
		if err := os.Mkdir(p, 0o700); err != nil {
			return err
		}
	}
	var s sampler
	start := time.Now()
	for i := 0; i < floorRounds && ctx.Err() == nil; i++ {
		t0 := time.Now()
		err := unix.Mount(src, dst, "", unix.MS_BIND, "")
		if err == nil {
			err = unix.Unmount(dst, 0)
		}
		s.add(time.Since(t0), err)
		if err != nil {
			unix.Unmount(dst, unix.MNT_DETACH)
			break
		}
	}
	p := s.phase(PhaseFloorBindMount, 1, time.Since(start))
	p.Note = "mount(2) of a bind mount and umount2"
	r.res.Phases = append(r.res.Phases, p)
	return nil
}

// listPhase times ListVolumes through every page, as a CO lists, while
// the bench's volumes exist.
func (r *runner) listPhase(ctx context.Context, benchVolumes int) {
	if !r.ctlCaps[csi.ControllerServiceCapability_RPC_LIST_VOLUMES] {
		r.skip(PhaseListVolumes, "the controller does not advertise LIST_VOLUMES")
		return
	}
	var s sampler
	start := time.Now()
	total, pages, token := 0, 0, ""
	for {
		t0 := time.Now()
		resp, err := callRPC(ctx, r, r.cl.Controller.ListVolumes, &csi.ListVolumesRequest{StartingToken: token})
		if err != nil {
			s.add(time.Since(t0), err)
			break
		}
		pages++
		total += len(resp.GetEntries())
		if token = resp.GetNextToken(); token == "" {
			s.add(time.Since(start), nil)
			break
		}
	}
	p := s.phase(PhaseListVolumes, 1, time.Since(start))
	p.Note = fmt.Sprintf("%d volumes (%d of them the bench's) in %d pages, max_entries 0", total, benchVolumes, pages)
	r.res.Phases = append(r.res.Phases, p)
}

// ratios relates the driver's figures to the floor and to each other.
func (r *Result) ratios() map[string]float64 {
	by := map[string]Phase{}
	for _, p := range r.Phases {
		by[p.Name] = p
	}
	out := map[string]float64{}
	if c, f := by[PhaseCreateSequential], by[PhaseFloorCreate]; c.Ops > 0 && f.Ops > 0 && f.Latency.P50 > 0 {
		out["create/sequential p50 ÷ floor/create p50"] = c.Latency.P50 / f.Latency.P50
	}
	if c, s := by[PhaseCreateConcurrent], by[PhaseCreateSequential]; c.Ops > 0 && s.OpsPerSecond > 0 {
		out["create/concurrent ops/s ÷ create/sequential ops/s"] = c.OpsPerSecond / s.OpsPerSecond
	}
	for _, step := range []string{"stage", "publish"} {
		if l, f := by[PhaseLifecycle+"/"+step], by[PhaseFloorBindMount]; l.Ops > 0 && f.Ops > 0 && f.Latency.P50 > 0 {
			out["lifecycle/"+step+" p50 ÷ floor/bind-mount p50"] = l.Latency.P50 / f.Latency.P50
		}
	}
	return out
}
