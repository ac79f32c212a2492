// Package powercut proves that Cairn's group commit is durable: SIGKILL
// keeps the page cache, so only a power cut tells a missing fsync.
//
// TestPowerCut runs cairn inside the test VM of ../shared/vm (README there)
// with its store on one persistent disk and a dir pool on another. Sixteen
// callers (test/powercut/guest) create and delete volumes; every call is
// logged on the host through the shared directory before it starts and
// after it is acknowledged. The host kills QEMU (VM_PIDFILE) at a random
// moment, which loses everything the guest had not flushed, boots the VM
// again on the same disks and checks, after cairn's start-up reconcile:
//
//   - every acknowledged create exists (listed by ListVolumes and present
//     in the pool) unless an acknowledged delete followed;
//   - every acknowledged delete is gone from both;
//   - store and disk agree: the pool holds exactly the listed volumes,
//     with no new-* or rm-* left (reconcile left nothing behind);
//   - a volume whose create or delete was in flight may be either way.
//
// It skips, saying why, without the VM (../shared/vm/run.sh and its cache
// from setup.sh). Run it with
//
//	CAIRN_POWERCUT_CUTS=3  go test -count=1 -v -timeout 60m ./test/powercut/    # CI
//	CAIRN_POWERCUT_CUTS=30 go test -count=1 -v -timeout 6h  ./test/powercut/    # long run
//
// CAIRN_POWERCUT_BREAK=dirsync builds cairn with the pool's directory fsync
// removed, and storesync with the store's commit fsyncs removed (bbolt
// NoSync): the test must then fail, which shows that it can see a missing
// fsync. $CAIRN_POWERCUT_BINARY runs a static cairn built elsewhere (an
// older commit, to compare). $CAIRN_VM_DIR overrides where the VM scripts
// are.
package powercut

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func repoRoot(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

func vmDir(t *testing.T) string {
	if d := os.Getenv("CAIRN_VM_DIR"); d != "" {
		return d
	}
	return filepath.Join(repoRoot(t), "..", "shared", "vm")
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

func TestPowerCut(t *testing.T) {
	vm := vmDir(t)
	runSh := filepath.Join(vm, "run.sh")
	if _, err := os.Stat(runSh); err != nil {
		t.Skipf("no test VM at %s (see ../shared/vm/README.md; $CAIRN_VM_DIR): %v", vm, err)
	}
	cache := os.Getenv("VM_CACHE")
	if cache == "" {
		cache = "/var/cache/cairn-vm"
	}
	for _, f := range []string{"vmlinux", "initrd.img", "root.img"} {
		if _, err := os.Stat(filepath.Join(cache, f)); err != nil {
			t.Skipf("the VM cache is not built (run %s/setup.sh as root): %v", vm, err)
		}
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("mkfs.ext4 not found")
	}
	cuts := envInt("CAIRN_POWERCUT_CUTS", 3)
	brk := os.Getenv("CAIRN_POWERCUT_BREAK")

	// The shared dir must not be under /tmp, which is a tmpfs in the guest.
	work, err := os.MkdirTemp("/var/tmp", "cairn-powercut-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !t.Failed() {
			os.RemoveAll(work)
		} else {
			t.Logf("kept %s for inspection", work)
		}
	})
	build(t, work, brk)
	for _, d := range []string{"store.img", "pool.img"} {
		p := filepath.Join(work, d)
		run(t, "truncate", "-s", "512M", p)
		run(t, "mkfs.ext4", "-q", "-F", p)
	}

	seed := uint64(time.Now().UnixNano())
	if s, err := strconv.ParseUint(os.Getenv("CAIRN_POWERCUT_SEED"), 10, 64); err == nil {
		seed = s
	}
	t.Logf("seed %d (CAIRN_POWERCUT_SEED replays the cut moments), %d cuts, break=%q", seed, cuts, brk)
	rng := rand.New(rand.NewPCG(seed, 0))
	acks := filepath.Join(work, "acks.log")
	m := newModel()
	for cut := range cuts {
		before := lines(acks)
		pidfile := filepath.Join(work, "qemu.pid")
		os.Remove(pidfile)
		vmCmd := exec.Command(runSh, "-t", "900", "-D", filepath.Join(work, "store.img"), "-D", filepath.Join(work, "pool.img"),
			work, "./guest", "-mode", "work", "-acks", "acks.log", "-boot", strconv.Itoa(cut))
		vmCmd.Env = append(os.Environ(), "VM_PIDFILE="+pidfile)
		var vmOut strings.Builder
		vmCmd.Stdout, vmCmd.Stderr = &vmOut, &vmOut
		if err := vmCmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- vmCmd.Wait() }()
		// Cut after a random number of acknowledged calls, and at a
		// random moment within the next one.
		want := before + 20 + rng.IntN(200)
		deadline := time.Now().Add(10 * time.Minute)
		for lines(acks) < want {
			select {
			case err := <-done:
				t.Fatalf("cut %d: the VM ended before the cut (%v):\n%s", cut, err, vmOut.String())
			case <-time.After(100 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatalf("cut %d: fewer than %d acknowledged calls in 10 minutes:\n%s", cut, want-before, vmOut.String())
			}
		}
		time.Sleep(time.Duration(rng.IntN(50)) * time.Millisecond)
		pid, err := readPID(pidfile)
		if err != nil {
			t.Fatalf("cut %d: %v", cut, err)
		}
		syscall.Kill(pid, syscall.SIGKILL) // the power cut
		<-done

		m.read(t, acks)
		report := filepath.Join(work, fmt.Sprintf("check-%d.json", cut))
		out, err := exec.Command(runSh, "-t", "900", "-D", filepath.Join(work, "store.img"), "-D", filepath.Join(work, "pool.img"),
			work, "./guest", "-mode", "check", "-out", filepath.Base(report)).CombinedOutput()
		if err != nil {
			t.Fatalf("cut %d: the check boot failed: %v\n%s", cut, err, out)
		}
		var rep struct {
			Listed  map[string]string `json:"listed"`
			Entries []string          `json:"entries"`
		}
		b, err := os.ReadFile(report)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, &rep); err != nil {
			t.Fatal(err)
		}
		problems := m.check(rep.Listed, rep.Entries)
		t.Logf("cut %d: %d log lines (calls started and acknowledged) so far, %d volumes alive, %d listed, %d in flight at the cut",
			cut, lines(acks), len(m.alive), len(rep.Listed), len(m.inflightCreates)+len(m.inflightDeletes))
		if len(problems) > 0 {
			t.Fatalf("cut %d: after the power cut:\n  %s", cut, strings.Join(problems, "\n  "))
		}
		m.settle(rep.Listed)
	}
}

// model is what the acknowledgement log says must exist.
type model struct {
	offset          int               // lines of the log already read
	alive           map[string]string // id -> name, acknowledged and not deleted
	deleted         map[string]bool   // acknowledged deletes
	inflightCreates map[string]bool   // names whose create started with no ack
	inflightDeletes map[string]bool   // ids whose delete started with no ack
}

func newModel() *model {
	return &model{alive: map[string]string{}, deleted: map[string]bool{}, inflightCreates: map[string]bool{}, inflightDeletes: map[string]bool{}}
}

func (m *model) read(t *testing.T, path string) {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		n++
		if n <= m.offset {
			continue
		}
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 2 && f[0] == "SC":
			m.inflightCreates[f[1]] = true
		case len(f) == 3 && f[0] == "C":
			delete(m.inflightCreates, f[1])
			m.alive[f[2]] = f[1]
		case len(f) == 2 && f[0] == "SD":
			m.inflightDeletes[f[1]] = true
		case len(f) == 2 && f[0] == "D":
			delete(m.inflightDeletes, f[1])
			delete(m.alive, f[1])
			m.deleted[f[1]] = true
		}
	}
	m.offset = n
}

// check compares the report after a boot with the model.
func (m *model) check(listed map[string]string, entries []string) []string {
	var out []string
	onDisk := map[string]bool{}
	for _, e := range entries {
		onDisk[e] = true
		if strings.HasPrefix(e, "new-") || strings.HasPrefix(e, "rm-") {
			out = append(out, "staged leftover after reconcile: "+e)
		} else if _, ok := listed[e]; !ok {
			out = append(out, "on disk but not in the store: "+e)
		}
	}
	for id := range listed {
		if !onDisk[id] {
			out = append(out, "in the store but not on disk: "+id)
		}
	}
	for id, name := range m.alive {
		if _, ok := listed[id]; !ok && !m.inflightDeletes[id] {
			out = append(out, fmt.Sprintf("acknowledged create of %s (%s) is gone", name, id))
		}
	}
	for id := range m.deleted {
		if _, ok := listed[id]; ok {
			out = append(out, fmt.Sprintf("acknowledged delete of %s is undone", id))
		}
	}
	known := len(m.alive)
	if len(listed) > known+len(m.inflightCreates) {
		out = append(out, fmt.Sprintf("%d volumes listed, but only %d acknowledged and %d in flight", len(listed), known, len(m.inflightCreates)))
	}
	return out
}

// settle resolves the calls that were in flight at the cut from what the
// boot found: a create that survived is alive (under an ID the log never
// got, which matters only for the count), a delete that did not is not.
func (m *model) settle(listed map[string]string) {
	for id := range m.inflightDeletes {
		if _, ok := listed[id]; !ok {
			delete(m.alive, id)
			m.deleted[id] = true
		}
	}
	for id := range listed {
		if _, ok := m.alive[id]; !ok {
			m.alive[id] = "(in flight at a cut)"
		}
	}
	m.inflightCreates = map[string]bool{}
	m.inflightDeletes = map[string]bool{}
}

func lines(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	return strings.Count(string(b), "\n")
}

func readPID(path string) (int, error) {
	for range 100 {
		b, err := os.ReadFile(path)
		if err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				return pid, nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return 0, fmt.Errorf("no QEMU PID in %s", path)
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// build puts static cairn and guest binaries in work. With brk set, cairn
// is built from a copy of the module with one fsync taken out.
func build(t *testing.T, work, brk string) {
	src := repoRoot(t)
	if brk != "" {
		cp := filepath.Join(work, "src")
		run(t, "cp", "-a", src, cp)
		var file, from, to string
		switch brk {
		case "dirsync":
			file, from, to = "internal/backend/staging/dirsync.go", "err := syncDir(path)", "var err error // fsync removed by CAIRN_POWERCUT_BREAK"
		case "storesync":
			file, from, to = "internal/store/store.go", "	err = db.Update(func(tx *bolt.Tx) error {", "	db.NoSync = true // removed by CAIRN_POWERCUT_BREAK\n	err = db.Update(func(tx *bolt.Tx) error {"
		default:
			t.Fatalf("CAIRN_POWERCUT_BREAK=%q: want dirsync or storesync", brk)
		}
		p := filepath.Join(cp, file)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), from) {
			t.Fatalf("CAIRN_POWERCUT_BREAK=%s: %q not found in %s", brk, from, file)
		}
		if err := os.WriteFile(p, []byte(strings.Replace(string(b), from, to, 1)), 0o644); err != nil {
			t.Fatal(err)
		}
		src = cp
	}
	pkgs := []struct{ out, pkg string }{{"cairn", "./cmd/cairn"}, {"guest", "./test/powercut/guest"}}
	if bin := os.Getenv("CAIRN_POWERCUT_BINARY"); bin != "" {
		run(t, "cp", bin, filepath.Join(work, "cairn"))
		pkgs = pkgs[1:]
	}
	for _, b := range pkgs {
		cmd := exec.Command("go", "build", "-o", filepath.Join(work, b.out), b.pkg)
		cmd.Dir = src
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", b.pkg, err, out)
		}
	}
}
