// Package hotpath measures Cairn's small calls against the physical floor of
// the same work, in the same run, on the same loop filesystem, so that the
// ratios mean something on any machine:
//
//   - Floor: mkdir, rename, one directory fsync and one bbolt commit of one
//     record: what a durable CreateVolume cannot avoid.
//   - BindMount: mount(2) of a bind mount plus umount2, the floor of a
//     stage or publish.
//   - Create: CreateVolume through the real binary's gRPC socket, alone
//     (p50 and its ratio to the floor) and with 16 callers (rate and its
//     ratio to the sequential rate), beside two ceilings for 16 callers
//     measured on the same disk: perfect groups of 16 (ceiling16/seq), and
//     the best a group commit without a batch timer can do
//     (notimer16/seq; see BenchmarkCreate).
//   - List: ListVolumes, following every page, of 1,000 and 10,000
//     volumes of which 100 are bind-mounted (published); $CAIRN_HOTPATH_LIST
//     (comma-separated counts) picks other sizes, e.g. 1000,10000,100000.
//
// $CAIRN_HOTPATH_PROFILE=<dir> makes the driver write a CPU profile of each
// benchmark there. Needs root; run with
//
//	go test -run '^$' -bench . -benchtime 200x ./test/hotpath/
//
// TestScale (skipped unless $CAIRN_HOTPATH_SCALE is set, e.g. 100000) is
// the long run: create p50 of the first and last 1,000, RSS, restart time
// and `cairnctl volume list`.
package hotpath

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"

	"github.com/cairn-csi/cairn/internal/testdriver"
	"github.com/cairn-csi/cairn/internal/testfs"
)

const fsSize = 4 << 30

// env is one loop filesystem with a driver on it.
type env struct {
	mnt  string
	proc *testdriver.Process
	ctl  csi.ControllerClient
}

func newEnv(b testing.TB) *env {
	testfs.RequireRoot(b)
	mnt := testfs.New(b, "ext4", fsSize)
	var penv []string
	if dir := os.Getenv("CAIRN_HOTPATH_PROFILE"); dir != "" {
		// The driver writes its CPU profile when it stops gracefully.
		name := strings.NewReplacer("/", "_").Replace(b.Name()) + ".cpu.prof"
		penv = append(penv, "CAIRN_CPUPROFILE="+filepath.Join(dir, name))
	}
	p := testdriver.Start(b, testdriver.Options{
		DataDir: filepath.Join(mnt, "data"),
		Pools:   []string{"default=dir:" + filepath.Join(mnt, "pool")},
		Extra:   []string{"--log-level", "warn"},
		Env:     penv,
	})
	if len(penv) > 0 {
		b.Cleanup(func() { p.Stop(30 * time.Second) })
	}
	return &env{mnt: mnt, proc: p, ctl: csi.NewControllerClient(p.Dial())}
}

var seq atomic.Int64

func createReq() *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{
		Name:          fmt.Sprintf("hot-%d-%d", os.Getpid(), seq.Add(1)),
		CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20},
		VolumeCapabilities: []*csi.VolumeCapability{{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		}},
	}
}

func p50(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// floorRig does the durable minimum of a create in one directory: mkdir,
// rename, fsync of the directory, one bbolt commit of one record.
type floorRig struct {
	tb      testing.TB
	entries string
	db      *bolt.DB
	rec     []byte
	n       int
}

func newFloor(tb testing.TB, dir string) *floorRig {
	entries := filepath.Join(dir, "entries")
	if err := os.MkdirAll(entries, 0o755); err != nil {
		tb.Fatal(err)
	}
	db, err := bolt.Open(filepath.Join(dir, "floor.db"), 0o600, nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	if err := db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucketIfNotExists([]byte("v")); return err }); err != nil {
		tb.Fatal(err)
	}
	return &floorRig{tb: tb, entries: entries, db: db, rec: []byte(strings.Repeat("x", 300))} // about a volume record's JSON
}

// step does one round and returns how long it took.
func (f *floorRig) step() time.Duration { return f.batch(1) }

// batch does k creates as one perfect group, with nothing else in the way:
// k mkdirs and renames, one fsync of the directory, one bbolt commit of k
// records. It returns how long the group took. With k = 16 it is the
// ceiling of any group commit for 16 callers on this disk: a driver would
// have to gather all 16 callers in every group, at no CPU cost, to match
// it.
func (f *floorRig) batch(k int) time.Duration {
	b := f.tb
	ids := make([]string, k)
	for i := range ids {
		ids[i] = fmt.Sprintf("vol-%016x", f.n)
		f.n++
	}
	t0 := time.Now()
	for _, id := range ids {
		tmp := filepath.Join(f.entries, "new-"+id)
		if err := unix.Mkdir(tmp, 0o777); err != nil {
			b.Fatal(err)
		}
		if err := unix.Rename(tmp, filepath.Join(f.entries, id)); err != nil {
			b.Fatal(err)
		}
	}
	fd, err := unix.Open(f.entries, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	err = unix.Fsync(fd)
	unix.Close(fd)
	if err != nil {
		b.Fatal(err)
	}
	err = f.db.Update(func(tx *bolt.Tx) error {
		for _, id := range ids {
			if err := tx.Bucket([]byte("v")).Put([]byte(id), f.rec); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return time.Since(t0)
}

// floor times n rounds of the floor in dir and returns the median.
func floor(tb testing.TB, dir string, n int) time.Duration {
	f := newFloor(tb, dir)
	var times []time.Duration
	for range n {
		times = append(times, f.step())
	}
	return p50(times)
}

// BenchmarkFloor is the durable floor alone.
func BenchmarkFloor(b *testing.B) {
	testfs.RequireRoot(b)
	mnt := testfs.New(b, "ext4", fsSize)
	b.ResetTimer()
	d := floor(b, mnt, b.N)
	b.ReportMetric(ms(d), "p50-ms")
}

// BenchmarkBindMount is mount(2) of a bind mount and umount2.
func BenchmarkBindMount(b *testing.B) {
	testfs.RequireRoot(b)
	mnt := testfs.New(b, "ext4", fsSize)
	src, dst := filepath.Join(mnt, "src"), filepath.Join(mnt, "dst")
	for _, p := range []string{src, dst} {
		if err := os.Mkdir(p, 0o755); err != nil {
			b.Fatal(err)
		}
	}
	var times []time.Duration
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
			b.Fatal(err)
		}
		if err := unix.Unmount(dst, 0); err != nil {
			b.Fatal(err)
		}
		times = append(times, time.Since(t0))
	}
	b.ReportMetric(ms(p50(times)), "p50-ms")
}

// BenchmarkCreate measures the floor, then CreateVolume alone and with 16
// callers, on one filesystem and in one run, and reports the ratios.
//
// The three are interleaved in rounds (a floor step before every
// sequential create; a burst of 16 callers after every run of sequential
// creates), so that on a shared machine each sees the same mix of other
// load: measured one after the other, a burst of other work during one
// phase alone moved the ratio by 2–4×.
func BenchmarkCreate(b *testing.B) {
	e := newEnv(b)
	ctx := context.Background()
	n := max(b.N, 50)
	const (
		callers = 16
		rounds  = 10
	)
	seqPer := max(n/rounds, 5) // sequential creates per round
	parPer := max(seqPer/2, 4) // creates per caller per round's burst
	fr := newFloor(b, filepath.Join(e.mnt, "floor"))
	b.ResetTimer()
	var times, floors, groups []time.Duration
	var seqTotal, parTotal time.Duration
	parOps := 0
	for range rounds {
		for range seqPer {
			floors = append(floors, fr.step())
			t0 := time.Now()
			if _, err := e.ctl.CreateVolume(ctx, createReq()); err != nil {
				b.Fatal(err)
			}
			d := time.Since(t0)
			times = append(times, d)
			seqTotal += d
		}
		var wg sync.WaitGroup
		errs := make(chan error, callers)
		t0 := time.Now()
		for range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range parPer {
					if _, err := e.ctl.CreateVolume(ctx, createReq()); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		parTotal += time.Since(t0)
		parOps += callers * parPer
		for range max(parPer/4, 2) {
			groups = append(groups, fr.batch(callers))
		}
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	fl := p50(floors)
	seqP50 := p50(times)
	seqRate := float64(len(times)) / seqTotal.Seconds()
	parRate := float64(parOps) / parTotal.Seconds()
	b.ReportMetric(ms(fl), "floor-p50-ms")
	b.ReportMetric(ms(seqP50), "seq-p50-ms")
	b.ReportMetric(float64(seqP50)/float64(fl), "seq/floor")
	b.ReportMetric(seqRate, "seq-ops/s")
	b.ReportMetric(parRate, "par16-ops/s")
	b.ReportMetric(parRate/seqRate, "par16/seq")
	// Two ceilings for 16 callers on this disk, at no CPU cost, against the
	// same sequential rate:
	//  - ceiling16/seq: every group holds all 16 callers (a driver would
	//    have to wait for them, which needs a batch timer);
	//  - notimer16/seq: what a group commit without a timer can reach. An
	//    idle store commits at once and callers that arrive during a
	//    commit join the next, so 16 callers in a closed loop settle into
	//    two alternating groups of n and 16-n, whose durable work costs
	//    2·g(1) + 14·c for any n, where g(1) is the floor and
	//    c = (g(16) - g(1)) / 15 what each further member adds.
	g1, g16 := p50(floors), p50(groups)
	ceil := callers / g16.Seconds()
	per := (g16 - g1).Seconds() / (callers - 1)
	noTimer := callers / (2*g1.Seconds() + (callers-2)*per)
	b.ReportMetric(ceil, "floor16-ops/s")
	b.ReportMetric(ceil/seqRate, "ceiling16/seq")
	b.ReportMetric(noTimer/seqRate, "notimer16/seq")
}

// populate creates n volumes with 16 callers and returns their IDs.
func populate(tb testing.TB, ctl csi.ControllerClient, n int) []string {
	ctx := context.Background()
	ids := make([]string, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Pointer[error]
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || failed.Load() != nil {
					return
				}
				resp, err := ctl.CreateVolume(ctx, createReq())
				if err != nil {
					failed.Store(&err)
					return
				}
				ids[i] = resp.GetVolume().GetVolumeId()
			}
		}()
	}
	wg.Wait()
	if err := failed.Load(); err != nil {
		tb.Fatal(*err)
	}
	return ids
}

// publish bind-mounts the first k volumes of ids, as NodePublishVolume
// would, and unmounts them at cleanup.
func publish(tb testing.TB, mnt string, ids []string, k int) {
	for i, id := range ids[:k] {
		dst := filepath.Join(mnt, "targets", strconv.Itoa(i))
		if err := os.MkdirAll(dst, 0o755); err != nil {
			tb.Fatal(err)
		}
		src := filepath.Join(mnt, "pool", "volumes", id)
		if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
			tb.Fatalf("bind %s: %v", src, err)
		}
		tb.Cleanup(func() { unix.Unmount(dst, unix.MNT_DETACH) })
	}
}

// listAll follows every page of ListVolumes and counts the entries and
// the published ones.
func listAll(tb testing.TB, ctl csi.ControllerClient) (n, published int) {
	ctx := context.Background()
	token := ""
	for {
		resp, err := ctl.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: token})
		if err != nil {
			tb.Fatal(err)
		}
		for _, e := range resp.GetEntries() {
			n++
			if len(e.GetStatus().GetPublishedNodeIds()) > 0 {
				published++
			}
		}
		if token = resp.GetNextToken(); token == "" {
			return n, published
		}
	}
}

// BenchmarkList lists N volumes, 100 of them published, following every
// page. One op is one whole listing.
func BenchmarkList(b *testing.B) {
	sizes := []int{1000, 10000}
	if s := os.Getenv("CAIRN_HOTPATH_LIST"); s != "" {
		sizes = nil
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(f)
			if err != nil {
				b.Fatal(err)
			}
			sizes = append(sizes, n)
		}
	}
	for _, n := range sizes {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			e := newEnv(b)
			ids := populate(b, e.ctl, n)
			publish(b, e.mnt, ids, min(100, n))
			b.ResetTimer()
			for range b.N {
				got, pub := listAll(b, e.ctl)
				if got != n || pub != min(100, n) {
					b.Fatalf("listed %d volumes, %d published; want %d, %d", got, pub, n, min(100, n))
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/float64(n), "µs/volume")
		})
	}
}
