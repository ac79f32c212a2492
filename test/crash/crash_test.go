package crash

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/cairn-csi/cairn/internal/luks"
	"github.com/cairn-csi/cairn/internal/testdriver"
	"github.com/cairn-csi/cairn/internal/testfs"
	"github.com/cairn-csi/cairn/internal/testlvm"
)

// target is one pool configuration under test.
type target struct {
	name     string
	poolType string // cairn pool type
	fsType   string // testfs type holding the pool
	size     int64
	// encrypted: every volume is encrypted (fscrypt on a dir pool, LUKS2
	// on an image pool), and every call that takes the secret gets it.
	encrypted bool
	// lvm: the pool is an LVM thin pool on a throwaway VG
	// (internal/testlvm); fsType is unused. Device-mapper is only in the
	// VM lane (hack/vm-lane.sh).
	lvm bool
}

// selectedTarget reports whether target name runs: $CAIRN_CRASH_TARGETS,
// when set, is a comma-separated list (the VM lane runs only lvm-thin).
func selectedTarget(name string) bool {
	list := os.Getenv("CAIRN_CRASH_TARGETS")
	return list == "" || slices.Contains(strings.Split(list, ","), name)
}

// hasCap reports whether this process has capability c in its effective set.
func hasCap(c int) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && mask&(1<<uint(c)) != 0
		}
	}
	return false
}

func envInt(name string, def int64) int64 {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		panic(fmt.Sprintf("%s=%q: %v", name, v, err))
	}
	return n
}

// poolTypes asks the binary which pool types it knows: the --pool usage
// lists them as "(types: dir, image)".
func poolTypes(t *testing.T) map[string]bool {
	out, _ := exec.Command(testdriver.Binary(t), "--help").CombinedOutput()
	m := regexp.MustCompile(`types: ([a-z0-9, ]+)\)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("cannot find the pool types in cairn --help:\n%s", out)
	}
	types := map[string]bool{}
	for _, ty := range strings.Split(string(m[1]), ",") {
		types[strings.TrimSpace(ty)] = true
	}
	return types
}

// killPoint is a crashpoint.Hit found in the source.
type killPoint struct {
	name    string
	file    string // relative to the module root
	generic bool   // in the staging protocol (staging.go): every pool must reach it
}

// findKillPoints greps the module's internal/ tree for crashpoint.Hit, so
// that a kill point added anywhere is exercised without editing this test.
func findKillPoints(t *testing.T) []killPoint {
	// The VM lane runs the test binary away from the source tree and
	// copies internal/ to $CAIRN_SRC_ROOT/internal.
	root, err := filepath.Abs(cmp.Or(os.Getenv("CAIRN_SRC_ROOT"), "../.."))
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`crashpoint\.Hit\("([^"]+)"\)`)
	seen := map[string]int{} // name -> index in out
	var out []killPoint
	err = filepath.WalkDir(filepath.Join(root, "internal"), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		// The create and delete protocol (staging.go) is every pool's: the
		// lvm pool reuses its kill point names. The shared directory fsync
		// (dirsync.go, group:synced) belongs to pools that stage
		// directories only, so an LVM pool need not reach it.
		generic := rel == "internal/backend/staging/staging.go"
		for _, m := range re.FindAllSubmatch(src, -1) {
			name := string(m[1])
			if i, ok := seen[name]; ok {
				// A pool that does not use the staging package (lvmpool)
				// reuses its names; the point stays one every pool must reach.
				if generic && !out[i].generic {
					out[i].file, out[i].generic = rel, true
				}
				continue
			}
			seen[name] = len(out)
			out = append(out, killPoint{name: name, file: rel, generic: generic})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 {
		t.Fatal("no crashpoint.Hit calls found under internal/")
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

func TestCrash(t *testing.T) {
	testfs.RequireRoot(t)
	seed := envInt("CAIRN_CRASH_SEED", time.Now().UnixNano())
	// A run of selected targets (the VM lane's, under TCG) is short by default.
	kills := int(envInt("CAIRN_CRASH_KILLS", map[bool]int64{true: 200, false: 5}[os.Getenv("CAIRN_CRASH_TARGETS") == ""]))
	// So is its kill-point matrix: each point is killed with two of the
	// operations that reach it (a seeded choice, so that successive runs
	// cover the others), not with each. 0 is every one.
	perPoint := int(envInt("CAIRN_CRASH_POINT_OPS", map[bool]int64{true: 0, false: 2}[os.Getenv("CAIRN_CRASH_TARGETS") == ""]))
	t.Logf("seed %d (replay: CAIRN_CRASH_SEED=%d), %d random kills in all, %s", seed, seed, kills,
		map[bool]string{true: "every operation that reaches it killed at each kill point", false: fmt.Sprintf("%d operations killed at each kill point", perPoint)}[perPoint == 0])

	types := poolTypes(t)
	points := findKillPoints(t)
	var names []string
	for _, p := range points {
		names = append(names, p.name)
	}
	t.Logf("kill points: %s; pool types: %v", strings.Join(names, ", "), types)

	targets := []target{{name: "dir", poolType: "dir", fsType: "ext4", size: 512 << 20}}
	if types["image"] {
		targets = append(targets, target{name: "image", poolType: "image", fsType: "ext4", size: 1 << 30})
	} else {
		t.Log("target image: skipped, this cairn has no image pool type")
	}
	switch _, err := exec.LookPath("mkfs.btrfs"); {
	case !types["btrfs"]:
		t.Log("target btrfs: skipped, this cairn has no btrfs pool type")
	case err != nil:
		t.Log("target btrfs: skipped, mkfs.btrfs is not installed (apt-get install btrfs-progs)")
	default:
		targets = append(targets, target{name: "btrfs", poolType: "btrfs", fsType: "btrfs", size: 1 << 30})
	}
	targets = append(targets, target{name: "dir-fscrypt", poolType: "dir", fsType: "ext4-encrypt", size: 512 << 20, encrypted: true})
	// LUKS2 needs device-mapper, which only the VM lane's kernel has.
	switch err := luks.Supported(); {
	case !types["image"]:
		t.Log("target image-luks: skipped, this cairn has no image pool type")
	case err != nil && testfs.VMLane() && selectedTarget("image-luks"):
		t.Fatalf("target image-luks: %v (CAIRN_VM_LANE=1: the VM lane requires it)", err)
	case err != nil:
		t.Logf("target image-luks: skipped, %v; %s", err, testfs.VMLaneHint)
	default:
		targets = append(targets, target{name: "image-luks", poolType: "image", fsType: "ext4", size: 1 << 30, encrypted: true})
	}
	switch err := testlvm.Available(); {
	case !types["lvm"]:
		t.Log("target lvm-thin: skipped, this cairn has no lvm pool type")
	case err != nil && testfs.VMLane():
		t.Fatalf("target lvm-thin: %v (CAIRN_VM_LANE=1: the VM lane requires it)", err)
	case err != nil:
		t.Logf("target lvm-thin: skipped, %v; %s", err, testfs.VMLaneHint)
	default:
		targets = append(targets, target{name: "lvm-thin", poolType: "lvm", lvm: true})
	}
	targets = slices.DeleteFunc(targets, func(tg target) bool { return !selectedTarget(tg.name) })
	if len(targets) == 0 {
		t.Fatalf("CAIRN_CRASH_TARGETS=%s selects no target this machine can run", os.Getenv("CAIRN_CRASH_TARGETS"))
	}

	// The kills are shared out among the targets, so that the run's length
	// does not grow with the number of pool types.
	for i, tg := range targets {
		share := kills / len(targets)
		if i < kills%len(targets) {
			share++
		}
		t.Run(tg.name, func(t *testing.T) {
			start := time.Now()
			h := newHarness(t, tg, seed+int64(i))
			h.perPoint = perPoint
			h.killPoints(points)
			h.randomKills(share)
			h.finish()
			t.Logf("%s: %d kill-point deaths (%d pairs tried), %d random kills (%d with calls in flight), %d restarts, %d operations completed, %d retried to convergence, %d transient errors retried, %d data verifications, in %v (seed %d)",
				tg.name, h.stats.pointDeaths, h.stats.pointPairs, h.stats.randomKills, h.stats.inFlightKills, h.stats.restarts,
				h.stats.opsDone, h.stats.retried, h.stats.transient, h.stats.verified, time.Since(start).Round(time.Second), h.seed)
			t.Logf("%s: time spent: %s", tg.name, h.timeSpent(time.Since(start)))
		})
	}
}

// harness drives one target.
type harness struct {
	t         *testing.T
	tg        target
	seed      int64
	rng       *rand.Rand
	root      string // the harness's own directory
	poolRoot  string
	proc      *testdriver.Process
	conn      *grpc.ClientConn
	c         clients
	caps      capabilities
	armed     bool       // the running process has a kill point armed (in pointFile)
	pointFile string     // CAIRN_CRASHPOINT_FILE: the kill points armed
	mu        sync.Mutex // guards stats.transient, which verifyData's goroutines count
	env       []string   // cairn's environment on every start
	perPoint  int        // operations killed at each kill point; 0: every one that reaches it
	m         model
	stats     struct {
		pointDeaths, pointPairs, randomKills, inFlightKills, restarts, opsDone, retried, verified, transient int
	}
	// spent is where the run's time went, per phase: what to cut when the
	// run is too slow for CI.
	spent map[string]time.Duration
}

// timed adds the time since start to phase; use as defer h.timed(phase, time.Now()).
func (h *harness) timed(phase string, start time.Time) { h.spent[phase] += time.Since(start) }

// timeSpent formats spent, largest first, with the rest of total as "other".
func (h *harness) timeSpent(total time.Duration) string {
	phases := slices.Collect(maps.Keys(h.spent))
	slices.SortFunc(phases, func(a, b string) int { return cmp.Compare(h.spent[b], h.spent[a]) })
	var out []string
	for _, p := range phases {
		out = append(out, fmt.Sprintf("%s %v", p, h.spent[p].Round(time.Second)))
		total -= h.spent[p]
	}
	return strings.Join(append(out, fmt.Sprintf("other %v", total.Round(time.Second))), ", ")
}

type clients struct {
	id   csi.IdentityClient
	ctl  csi.ControllerClient
	node csi.NodeClient
}

type capabilities struct {
	snapshot, clone, expand bool
}

func newHarness(t *testing.T, tg target, seed int64) *harness {
	var poolRoot string
	if tg.lvm {
		// 1.5 GiB of thin pool: the model's volumes are small, and the
		// default over-provisioning ratio (1) must not refuse them.
		poolRoot = testlvm.NewVG(t, 2<<30, 1536<<20) + "/" + testlvm.ThinPool
	} else {
		poolRoot = filepath.Join(testfs.New(t, tg.fsType, tg.size), "pool")
	}
	root, err := os.MkdirTemp("", "crash-"+tg.name+"-")
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, tg: tg, seed: seed, rng: rand.New(rand.NewSource(seed)), root: root, poolRoot: poolRoot, spent: map[string]time.Duration{}}
	h.m.h = h
	h.pointFile = filepath.Join(root, "crashpoint")
	h.env = []string{"CAIRN_CRASHPOINT_FILE=" + h.pointFile}
	if tg.encrypted && tg.poolType == "image" {
		// PBKDF2 with few iterations: Argon2id per open, under emulation,
		// would take most of the run. The keys are derived, full-entropy.
		h.env = append(h.env, "CAIRN_LUKS_FAST_KDF=1")
	}
	for _, d := range []string{"staging", "target"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o750); err != nil {
			t.Fatal(err)
		}
	}
	// Registered after testfs, so it runs first: nothing of ours may keep
	// the pool's filesystem busy when testfs unmounts it.
	t.Cleanup(func() { h.unmountOurs(); os.RemoveAll(root) })
	h.proc = testdriver.Start(t, testdriver.Options{
		DataDir: filepath.Join(root, "data"),
		Pools:   []string{"default=" + tg.poolType + ":" + h.poolRoot},
		Env:     h.env,
	})
	t.Cleanup(func() {
		if h.conn != nil {
			h.conn.Close()
		}
	})
	h.dial()
	h.caps = h.readCapabilities()
	if h.caps.expand && tg.poolType == "image" && !hasCap(unix.CAP_SYS_RESOURCE) {
		// The image pool grows a volume's ext4 where it is mounted
		// (EXT4_IOC_RESIZE_FS), which needs CAP_SYS_RESOURCE.
		h.caps.expand = false
		t.Logf("target %s: expand left out of the mix: this process lacks CAP_SYS_RESOURCE, which growing a mounted ext4 needs", tg.name)
	}
	t.Logf("target %s (seed %d): pool %s, snapshot=%v clone=%v expand=%v", tg.name, seed, h.poolRoot, h.caps.snapshot, h.caps.clone, h.caps.expand)
	return h
}

// fatalf fails the test with the seed in the message, so that it replays.
func (h *harness) fatalf(format string, args ...any) {
	h.t.Helper()
	h.t.Fatalf("%s [target %s, seed %d: replay with CAIRN_CRASH_SEED=%d]\ncairn log tail:\n%s",
		fmt.Sprintf(format, args...), h.tg.name, h.seed, h.seed, tail(h.proc.Log(), 40))
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// dial connects to the current process. A fresh connection per process
// avoids gRPC's reconnect backoff after a kill.
func (h *harness) dial() {
	if h.conn != nil {
		h.conn.Close()
	}
	conn, err := grpc.NewClient("unix://"+h.proc.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		h.t.Fatal(err)
	}
	h.conn = conn
	h.c = clients{csi.NewIdentityClient(conn), csi.NewControllerClient(conn), csi.NewNodeClient(conn)}
}

func (h *harness) readCapabilities() capabilities {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := h.c.ctl.ControllerGetCapabilities(ctx, &csi.ControllerGetCapabilitiesRequest{})
	if err != nil {
		h.fatalf("ControllerGetCapabilities: %v", err)
	}
	var c capabilities
	for _, cp := range resp.GetCapabilities() {
		switch cp.GetRpc().GetType() {
		case csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT:
			c.snapshot = true
		case csi.ControllerServiceCapability_RPC_CLONE_VOLUME:
			c.clone = true
		case csi.ControllerServiceCapability_RPC_EXPAND_VOLUME:
			c.expand = true
		}
	}
	return c
}

// restart kills whatever runs and starts cairn again.
func (h *harness) restart() {
	h.t.Helper()
	defer h.timed("restarts", time.Now())
	h.proc.Kill()
	h.proc.Restart(true)
	h.stats.restarts++
	h.dial()
}

// poolPoints are the kill points in code that only some pools run: each is
// armed only on the targets that run it (elsewhere it would cost a restart
// per operation kind, for nothing), and each of those must reach it.
var poolPoints = map[string]func(target) bool{
	// Between opening a LUKS mapping and mounting it (node_luks.go).
	"stage:luks-opened": func(tg target) bool { return tg.encrypted && tg.poolType == "image" },
	// Between loading an fscrypt key and mounting (encryption.go).
	"stage:unlocked": func(tg target) bool { return tg.encrypted && tg.poolType == "dir" },
	// The staging protocol's directory fsync: the lvm pool stages no
	// directories.
	"group:synced": func(tg target) bool { return !tg.lvm },
}

// arm arms kill point name in the running process, through the file it
// reads at every kill point (CAIRN_CRASHPOINT_FILE): no restart, which on
// an lvm pool under emulation costs seconds of start-up reconcile.
func (h *harness) arm(name string) {
	if err := os.WriteFile(h.pointFile, []byte(name), 0o600); err != nil {
		h.t.Fatal(err)
	}
	h.armed = true
}

// disarm disarms the running process (or the next one), if armed.
func (h *harness) disarm() {
	if !h.armed {
		return
	}
	if err := os.WriteFile(h.pointFile, nil, 0o600); err != nil {
		h.t.Fatal(err)
	}
	h.armed = false
}

// killPoints arms each kill point in turn and runs each kind of operation
// that can reach it (until perPoint of them died there, when set); when the process dies there, it restarts clean,
// checks, retries the interrupted operation, and checks again.
func (h *harness) killPoints(points []killPoint) {
	reached := map[string][]opKind{}
	for _, kp := range points {
		runs, poolPoint := poolPoints[kp.name]
		if poolPoint && !runs(h.tg) {
			h.t.Logf("kill point %s (%s): not armed, the %s pool does not run its code", kp.name, kp.file, h.tg.name)
			continue
		}
		pointStart := time.Now()
		kinds := h.kindsFor(kp.name)
		if h.perPoint > 0 {
			h.rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
		}
		for _, kind := range kinds {
			if h.perPoint > 0 && len(reached[kp.name]) >= h.perPoint {
				break
			}
			h.disarm() // the last operation did not reach the point
			prepStart := time.Now()
			o := h.prepare(kind)
			h.timed("setup", prepStart)
			if o == nil {
				h.t.Logf("kill point %s: cannot set up a %s here", kp.name, kind)
				continue
			}
			h.stats.pointPairs++
			h.arm(kp.name)
			logStart := len(h.proc.Log())
			died := false
			for attempt := 0; ; attempt++ {
				err := h.runOp(o)
				if err == nil {
					h.m.apply(o)
					break
				}
				h.proc.Wait(2 * time.Second) // a SIGKILLed process is reaped at once
				if h.proc.Exited() {
					if !strings.Contains(h.proc.Log()[logStart:], "crashpoint: reached "+kp.name) {
						h.fatalf("kill point %s, %s: cairn exited without reaching the point (call error: %v)", kp.name, kind, err)
					}
					died = true
					break
				}
				if !retryable(err) || attempt == 20 {
					h.fatalf("kill point %s, %s: the call failed and cairn is still running: %v", kp.name, kind, err)
				}
				h.transient(o.String(), err)
			}
			if !died {
				continue
			}
			h.stats.pointDeaths++
			reached[kp.name] = append(reached[kp.name], kind)
			h.disarm()
			h.restart()
			h.afterCrash([]*op{o})
		}
		// A group point is also armed under concurrent creates and
		// deletes, so that the process dies with several callers in one
		// commit group: none of them may have been answered, and each
		// must converge like a single interrupted call.
		if strings.HasPrefix(kp.name, "group:") && h.groupKill(kp) {
			reached[kp.name] = append(reached[kp.name], "concurrent batch")
		}
		if len(reached[kp.name]) == 0 {
			if kp.generic || poolPoint {
				h.fatalf("kill point %s (%s) was not reached by any operation on the %s pool", kp.name, kp.file, h.tg.name)
			}
			h.t.Logf("kill point %s (%s): not reached by the %s pool", kp.name, kp.file, h.tg.name)
			continue
		}
		h.t.Logf("kill point %s: reached by %v, in %v", kp.name, reached[kp.name], time.Since(pointStart).Round(time.Second))
	}
	h.disarm()
}

// groupKill runs up to four creates and deletes at once with kp armed,
// so that they share commit groups, and reports whether cairn died there.
// Whatever the batch left unfinished is checked and retried as after any
// crash.
func (h *harness) groupKill(kp killPoint) bool {
	h.disarm()
	for h.m.aliveVolumes() < 2 { // something to delete
		if !h.mustRun(h.m.pick(h.rng, opCreate, nil)) {
			break
		}
	}
	for h.m.aliveVolumes() > maxVolumes-2 { // room to create
		if !h.mustRun(h.m.pick(h.rng, opDelete, nil)) {
			break
		}
	}
	busy := map[any]bool{}
	var batch []*op
	for _, kind := range []opKind{opDelete, opDelete, opCreate, opCreate} {
		o := h.m.pick(h.rng, kind, busy)
		if o == nil {
			continue
		}
		for _, k := range o.keys() {
			busy[k] = true
		}
		if o.vol != nil && o.vol.state == planned {
			h.m.planned++
		}
		batch = append(batch, o)
	}
	h.m.planned = 0
	if len(batch) < 2 {
		h.t.Logf("kill point %s: no concurrent batch possible here", kp.name)
		return false
	}
	h.arm(kp.name)
	logStart := len(h.proc.Log())
	var wg sync.WaitGroup
	for _, o := range batch {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o.err = h.runOp(o)
		}()
	}
	wg.Wait()
	h.proc.Wait(2 * time.Second)
	died := h.proc.Exited()
	if died && !strings.Contains(h.proc.Log()[logStart:], "crashpoint: reached "+kp.name) {
		h.fatalf("kill point %s, concurrent batch: cairn exited without reaching the point", kp.name)
	}
	var pending []*op
	for _, o := range batch {
		switch {
		case o.err == nil:
			h.m.apply(o)
		case !died && !retryable(o.err):
			h.fatalf("kill point %s, concurrent %s failed and cairn is still running: %v", kp.name, o, o.err)
		default:
			pending = append(pending, o)
		}
	}
	h.disarm()
	if died {
		h.restart()
	}
	h.afterCrash(pending)
	if died {
		h.stats.pointDeaths++
	}
	return died
}

// kindsFor lists the operations worth trying at a kill point. A point's
// prefix names the call it is in: creates reach create:*, deletes
// delete:*, and NodeStageVolume stage:*, which the harness's creates,
// restores and clones call too (to write or check the data). Any other
// point (group:*, the store's commit) is tried with every operation.
func (h *harness) kindsFor(point string) []opKind {
	creating := []opKind{opCreate, opSnapshot, opRestore, opClone}
	deleting := []opKind{opDelete, opDeleteSnapshot}
	var kinds []opKind
	switch {
	case strings.HasPrefix(point, "create:"):
		kinds = creating
	case strings.HasPrefix(point, "delete:"):
		kinds = deleting
	case strings.HasPrefix(point, "stage:"):
		kinds = []opKind{opCreate, opRestore, opClone, opStage}
	default:
		kinds = append(append(append([]opKind{}, creating...), deleting...), opExpand, opStage, opPublish, opUnpublish, opUnstage)
	}
	return slices.DeleteFunc(kinds, func(k opKind) bool { return !h.supported(k) })
}

// prepare makes the preconditions of an operation of kind (a volume to
// delete, a snapshot to restore) with the unarmed process, and returns it.
func (h *harness) prepare(kind opKind) *op {
	h.disarm() // the last operation did not reach the point
	for range 4 {
		if o := h.m.pick(h.rng, kind, nil); o != nil {
			if o.src != nil && !o.src.pub {
				// Copy a volume in use: a pool that freezes the source's
				// filesystem around the copy dies with it frozen.
				if !o.src.staged {
					h.mustRun(&op{kind: opStage, vol: o.src})
				}
				h.mustRun(&op{kind: opPublish, vol: o.src})
			}
			return o
		}
		// Full: make room for a new volume or snapshot.
		switch kind {
		case opCreate, opClone, opRestore:
			if h.m.aliveVolumes() >= maxVolumes {
				h.mustRun(h.m.pick(h.rng, opDelete, nil))
				continue
			}
		case opSnapshot:
			if h.m.aliveSnapshots() >= maxSnapshots {
				h.mustRun(h.m.pick(h.rng, opDeleteSnapshot, nil))
				continue
			}
		}
		// Make what is missing: a volume, a snapshot, a staged or
		// published volume.
		var need opKind
		switch kind {
		case opSnapshot, opClone, opExpand, opStage, opDelete:
			need = opCreate
		case opRestore, opDeleteSnapshot:
			need = opSnapshot
			if h.m.pick(h.rng, opSnapshot, nil) == nil {
				need = opCreate
			}
		case opPublish:
			need = opStage
		case opUnpublish:
			need = opPublish
		case opUnstage:
			need = opStage
		default:
			return nil
		}
		if pre := h.m.pick(h.rng, need, nil); pre == nil || !h.mustRun(pre) {
			h.mustRun(h.m.pick(h.rng, opCreate, nil))
		}
	}
	return h.m.pick(h.rng, kind, nil)
}

// mustRun runs o to success with the process as it is.
func (h *harness) mustRun(o *op) bool {
	if o == nil {
		return false
	}
	h.retry(o)
	h.m.apply(o)
	return true
}

// randomKills runs batches of operations and kills cairn while they are
// in flight, kills times.
func (h *harness) randomKills(kills int) {
	// typical is a moving average of how long a batch takes when nothing
	// kills it; kills land uniformly within it, so at every stage of the
	// calls.
	typical := 50 * time.Millisecond
	for k := 0; k < kills; k++ {
		batch := h.m.batch(h.rng, 1+h.rng.Intn(4))
		var wg sync.WaitGroup
		var killed atomic.Bool
		var inFlight atomic.Int32
		start := time.Now()
		ends := make([]time.Duration, len(batch))
		for i, o := range batch {
			wg.Add(1)
			inFlight.Add(1)
			go func() {
				defer wg.Done()
				defer inFlight.Add(-1)
				o.err = h.runOp(o)
				o.failedBeforeKill = o.err != nil && !killed.Load()
				ends[i] = time.Since(start)
			}()
		}
		time.Sleep(time.Duration(h.rng.Int63n(int64(typical) + 1)))
		killed.Store(true)
		if inFlight.Load() > 0 {
			h.stats.inFlightKills++
		}
		h.proc.Kill()
		wg.Wait()
		h.stats.randomKills++

		var pending []*op
		for _, o := range batch {
			switch {
			case o.err == nil:
				h.m.apply(o)
			case o.failedBeforeKill && !retryable(o.err):
				h.fatalf("%s failed before the kill: %v", o, o.err)
			default:
				if o.failedBeforeKill {
					h.transient(o.String(), o.err)
				}
				pending = append(pending, o)
			}
		}
		if len(pending) == 0 { // a whole batch's duration: learn from it
			typical = (3*typical + slices.Max(ends)) / 4
		}
		restarted := time.Now()
		h.proc.Restart(true)
		h.stats.restarts++
		h.dial()
		h.timed("restarts", restarted)
		h.afterCrash(pending)
		if (k+1)%50 == 0 {
			h.t.Logf("%d/%d random kills (%d with calls in flight), %d volumes, %d snapshots, typical batch %v",
				k+1, kills, h.stats.inFlightKills, h.m.aliveVolumes(), h.m.aliveSnapshots(), typical.Round(time.Millisecond))
		}
	}
}

// afterCrash is what runs after every restart: the loose checks, then the
// interrupted operations retried to success, then the exact checks and the
// data.
func (h *harness) afterCrash(pending []*op) {
	start := time.Now()
	h.check(pending)
	h.timed("checks", start)
	start = time.Now()
	for _, o := range pending {
		h.retry(o)
		h.m.apply(o)
		h.stats.retried++
	}
	h.timed("retries", start)
	start = time.Now()
	h.check(nil)
	h.timed("checks", start)
	start = time.Now()
	h.verifyData()
	h.timed("data verification", start)
}

// retry runs o again, as an orchestrator would after a timeout, until it
// succeeds. Only "try again" answers are retried.
func (h *harness) retry(o *op) {
	h.eventually(o.String(), func() error { return h.runOp(o) })
}

// eventually runs fn until it succeeds, as an orchestrator retries a call,
// and fails the test when an answer cannot change or fn never succeeds.
func (h *harness) eventually(what string, fn func() error) {
	h.t.Helper()
	if err := h.converge(what, fn); err != nil {
		h.fatalf("%v", err)
	}
}

// converge is eventually for any goroutine: it returns the failure
// instead of failing the test.
func (h *harness) converge(what string, fn func() error) error {
	var err error
	for attempt := 0; attempt < 100; attempt++ {
		if err = fn(); err == nil {
			return nil
		}
		if !retryable(err) {
			return fmt.Errorf("%s did not converge: %w", what, err)
		}
		if status.Code(err) != codes.Unavailable && status.Code(err) != codes.Aborted {
			h.transient(what, err)
		}
		time.Sleep(time.Duration(min(attempt+1, 10)) * 20 * time.Millisecond)
	}
	return fmt.Errorf("%s still failing after 100 attempts: %w", what, err)
}

// transient records an error a retry got past: not a failure (an
// orchestrator retries), but worth seeing, so each is logged. Safe for
// concurrent use.
func (h *harness) transient(what string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stats.transient++
	if h.stats.transient <= 20 {
		h.t.Logf("transient error, retried: %s: %v", what, err)
	}
}

// finish tears everything down through the CSI API, checks that the pool
// is empty, and stops cairn gracefully.
func (h *harness) finish() {
	for _, v := range h.m.vols {
		if v.state == alive {
			h.mustRun(&op{kind: opDelete, vol: v})
		}
	}
	for _, s := range h.m.snaps {
		if s.state == alive {
			h.mustRun(&op{kind: opDeleteSnapshot, snap: s})
		}
	}
	h.check(nil)
	for _, d := range []string{"volumes", "snapshots"} {
		if h.tg.lvm {
			if ids := h.onDisk(d); len(ids) > 0 {
				h.fatalf("lvm pool %s still has %s LVs %v after every volume and snapshot was deleted", h.poolRoot, d, ids)
			}
			continue
		}
		entries, _ := os.ReadDir(filepath.Join(h.poolRoot, d))
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), ".") {
				h.fatalf("pool %s/ still holds %s after every volume and snapshot was deleted", d, e.Name())
			}
		}
	}
	if err := h.proc.Stop(30 * time.Second); err != nil {
		h.fatalf("cairn did not stop cleanly on SIGTERM: %v", err)
	}
	log := h.proc.Log()
	for _, bad := range []string{"WARNING: DATA RACE", "panic:", "fatal error:"} {
		if strings.Contains(log, bad) {
			h.fatalf("cairn's log has %q", bad)
		}
	}
}
