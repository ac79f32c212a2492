package cairnctl

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cairn-csi/cairn/internal/testdriver"
)

// benchJSON is the --json-out document, as scripts read it.
type benchJSON struct {
	Driver struct {
		Name                   string   `json:"name"`
		NodeID                 string   `json:"nodeId"`
		ControllerCapabilities []string `json:"controllerCapabilities"`
	} `json:"driver"`
	Config struct {
		Volumes     int    `json:"volumes"`
		Concurrency int    `json:"concurrency"`
		DataBytes   int64  `json:"dataBytes"`
		Prefix      string `json:"prefix"`
	} `json:"config"`
	StartedAt       time.Time `json:"startedAt"`
	DurationSeconds float64   `json:"durationSeconds"`
	Phases          []struct {
		Name         string  `json:"name"`
		Ops          int     `json:"ops"`
		Errors       int     `json:"errors"`
		Concurrency  int     `json:"concurrency"`
		TotalSeconds float64 `json:"totalSeconds"`
		OpsPerSecond float64 `json:"opsPerSecond"`
		Latency      struct {
			Min  float64 `json:"minSeconds"`
			P50  float64 `json:"p50Seconds"`
			P99  float64 `json:"p99Seconds"`
			Max  float64 `json:"maxSeconds"`
			Mean float64 `json:"meanSeconds"`
		} `json:"latency"`
		Bytes    int64  `json:"bytes"`
		Verified *bool  `json:"verified"`
		Error    string `json:"firstError"`
	} `json:"phases"`
	Skipped []struct {
		Phase  string `json:"phase"`
		Reason string `json:"reason"`
	} `json:"skipped"`
	RSS struct {
		Known       bool   `json:"known"`
		PID         int    `json:"pid"`
		BeforeBytes int64  `json:"beforeBytes"`
		AfterBytes  int64  `json:"afterBytes"`
		Volumes     int    `json:"volumes"`
		Reason      string `json:"reason"`
	} `json:"rss"`
	Cleanup struct {
		Actions int      `json:"actions"`
		Errors  []string `json:"errors"`
	} `json:"cleanup"`
	Interrupted bool `json:"interrupted"`
}

// TestBench runs a small bench against a dir pool (no snapshots: those
// phases must be skipped, naming the capability) and, as root, an image
// pool (snapshot, restore and clone, with the data read back).
func TestBench(t *testing.T) {
	t.Run("dir", func(t *testing.T) { testBench(t, "dir") })
	t.Run("image", func(t *testing.T) {
		needRoot(t)
		if _, err := exec.LookPath("mkfs.ext4"); err != nil {
			t.Skip("image volumes are formatted with mkfs.ext4, which is not installed (e2fsprogs)")
		}
		if _, err := os.Stat("/dev/loop-control"); err != nil {
			t.Skipf("image volumes need loop devices: %v", err)
		}
		testBench(t, "image")
	})
}

func testBench(t *testing.T, poolType string) {
	_, ep := startCairn(t, testdriver.Options{NodeID: "node-a", Pools: []string{"default=" + poolType + ":" + filepath.Join(t.TempDir(), "pool")}})
	root := os.Geteuid() == 0
	work := filepath.Join(t.TempDir(), "work")
	out := filepath.Join(t.TempDir(), "bench.json")
	args := []string{"bench", "--volumes", "5", "--concurrency", "2", "--lifecycle-runs", "2",
		"--data-size", "1Mi", "--capacity", "4Mi", "--rss-volumes", "5", "--json-out", out, "-o", "json"}
	if root {
		args = append(args, "--work-dir", work)
	} else {
		t.Log("not root: running without --work-dir, so the lifecycle and data phases are skipped")
	}
	r := ok(t, ep, args...)

	var stdoutDoc, fileDoc benchJSON
	if err := json.Unmarshal([]byte(r.stdout), &stdoutDoc); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", err, r.stdout)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &fileDoc); err != nil {
		t.Fatalf("--json-out: %v\n%s", err, b)
	}
	// The fields docs/cairnctl.md promises are all there, always.
	var raw struct {
		Top    map[string]json.RawMessage
		Phases []map[string]json.RawMessage `json:"phases"`
	}
	json.Unmarshal(b, &raw.Top)
	json.Unmarshal(b, &raw)
	for _, k := range []string{"driver", "config", "startedAt", "durationSeconds", "phases", "skipped", "rss", "cleanup", "interrupted"} {
		if _, found := raw.Top[k]; !found {
			t.Errorf("--json-out has no %q", k)
		}
	}
	for _, p := range raw.Phases {
		for _, k := range []string{"name", "ops", "errors", "concurrency", "totalSeconds", "opsPerSecond", "latency"} {
			if _, found := p[k]; !found {
				t.Errorf("a phase has no %q: %v", k, p)
			}
		}
	}
	if stdoutDoc.Config.Prefix != fileDoc.Config.Prefix || len(stdoutDoc.Phases) != len(fileDoc.Phases) {
		t.Error("-o json and --json-out differ")
	}
	d := fileDoc
	if d.Driver.Name != "cairn.csi.dev" || d.Driver.NodeID != "node-a" || d.Config.Volumes != 5 || d.Config.DataBytes != 1<<20 {
		t.Errorf("driver %+v, config %+v", d.Driver, d.Config)
	}
	if d.StartedAt.IsZero() || d.DurationSeconds <= 0 || d.Interrupted {
		t.Errorf("startedAt %v, duration %v, interrupted %t", d.StartedAt, d.DurationSeconds, d.Interrupted)
	}

	phases := map[string]int{}
	for i, p := range d.Phases {
		phases[p.Name] = i
		if p.Errors != 0 {
			t.Errorf("%s: %d errors, first: %s", p.Name, p.Errors, p.Error)
		}
		l := p.Latency
		if p.Ops > 0 && !(0 < l.Min && l.Min <= l.P50 && l.P50 <= l.P99 && l.P99 <= l.Max && l.Min <= l.Mean && l.Mean <= l.Max) {
			t.Errorf("%s: latency figures out of order: %+v", p.Name, l)
		}
	}
	want := map[string]struct{ ops, concurrency int }{
		"create/sequential": {5, 1}, "delete/sequential": {5, 1},
		"create/concurrent": {5, 2}, "delete/concurrent": {5, 2},
	}
	if root {
		for _, step := range []string{"create", "stage", "publish", "unpublish", "unstage", "delete", "total"} {
			want["lifecycle/"+step] = struct{ ops, concurrency int }{2, 1}
		}
		want["data/write"] = struct{ ops, concurrency int }{1, 1}
	}
	for name, w := range want {
		i, found := phases[name]
		if !found {
			t.Errorf("phase %s missing", name)
			continue
		}
		if p := d.Phases[i]; p.Ops != w.ops || p.Concurrency != w.concurrency || p.OpsPerSecond <= 0 {
			t.Errorf("%s: ops %d, concurrency %d, ops/s %v; want %d, %d, > 0", name, p.Ops, p.Concurrency, p.OpsPerSecond, w.ops, w.concurrency)
		}
	}
	if i, found := phases["data/write"]; found && d.Phases[i].Bytes != 1<<20 {
		t.Errorf("data/write wrote %d bytes", d.Phases[i].Bytes)
	}

	// Snapshot, restore and clone run when the driver advertises them,
	// and are otherwise skipped with the capability named.
	skipped := map[string]string{}
	for _, s := range d.Skipped {
		skipped[s.Phase] = s.Reason
	}
	expect := func(phase, capability string) {
		_, ran := phases[phase]
		if !root {
			return
		}
		switch has := slices.Contains(d.Driver.ControllerCapabilities, capability); {
		case has && !ran:
			t.Errorf("%s did not run though the driver advertises %s (skipped: %q)", phase, capability, skipped[phase])
		case has && (d.Phases[phases[phase]].Verified != nil && !*d.Phases[phases[phase]].Verified):
			t.Errorf("%s: data not verified", phase)
		case !has && !strings.Contains(skipped[phase], capability):
			t.Errorf("%s skipped for %q, want the missing %s named", phase, skipped[phase], capability)
		}
	}
	expect("data/snapshot", "CREATE_DELETE_SNAPSHOT")
	expect("data/clone", "CLONE_VOLUME")
	if root && !strings.Contains(skipped["lifecycle/controller-publish"], "PUBLISH_UNPUBLISH_VOLUME") {
		t.Errorf("controller publish skipped for %q", skipped["lifecycle/controller-publish"])
	}

	if root && (!d.RSS.Known || d.RSS.PID <= 0 || d.RSS.AfterBytes <= 0 || d.RSS.Volumes != 5) {
		t.Errorf("rss = %+v, want it measured as root", d.RSS)
	}
	if !root && !strings.Contains(skipped["lifecycle"], "--work-dir") {
		t.Errorf("lifecycle skipped for %q, want the missing --work-dir named", skipped["lifecycle"])
	}
	if !d.RSS.Known && d.RSS.Reason == "" {
		t.Error("rss unknown without a reason")
	}
	if len(d.Cleanup.Errors) != 0 {
		t.Errorf("cleanup errors: %v", d.Cleanup.Errors)
	}
	assertNothingLeft(t, ep, work)
}

func TestBenchTable(t *testing.T) {
	_, ep := startCairn(t, testdriver.Options{})
	r := ok(t, ep, "bench", "--volumes", "2", "--concurrency", "1", "--lifecycle-runs", "0", "--data-size", "0")
	rows := table(r.stdout)
	var header []string
	names := map[string]bool{}
	for _, row := range rows {
		if len(row) > 0 && row[0] == "PHASE" {
			header = row
		}
		if len(row) > 0 {
			names[row[0]] = true
		}
	}
	if !slices.Equal(header, []string{"PHASE", "OPS", "ERRORS", "TIME", "OPS/S", "P50", "P99", "MAX", "NOTE"}) {
		t.Errorf("header = %q\n%s", header, r.stdout)
	}
	for _, want := range []string{"create/sequential", "delete/sequential", "create/concurrent", "lifecycle", "data", "cleanup"} {
		if !names[want] {
			t.Errorf("no row starting %q in:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "\x1b[") || r.stderr != "" {
		t.Errorf("progress output without a terminal: stdout %q stderr %q", r.stdout, r.stderr)
	}
}

// TestBenchInterrupted sends SIGINT mid-run: bench must stop, take back
// everything it made (volumes, stages, publishes, directories) and exit 130.
func TestBenchInterrupted(t *testing.T) {
	_, ep := startCairn(t, testdriver.Options{})
	tests := []struct {
		name  string
		root  bool
		args  []string
		ready func(t *testing.T, work string) bool
	}{
		{"during creates", false, []string{"--volumes", "100000", "--concurrency", "4"},
			func(t *testing.T, _ string) bool { return volumeCount(t, ep) >= 3 }},
		{"during lifecycles", true, []string{"--volumes", "1", "--lifecycle-runs", "100000", "--data-size", "0"},
			func(t *testing.T, work string) bool { return len(mountsUnder(t, work)) > 0 }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root {
				needRoot(t)
			}
			work := filepath.Join(t.TempDir(), "work")
			cmd := exec.Command(binary(t), append([]string{"--endpoint", ep, "bench", "--work-dir", work}, tc.args...)...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			deadline := time.Now().Add(2 * time.Minute)
			for !tc.ready(t, work) {
				if time.Now().After(deadline) {
					cmd.Process.Kill()
					t.Fatalf("bench never got going\nstdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
				}
				select {
				case err := <-done:
					t.Fatalf("bench ended before the interrupt: %v\n%s%s", err, stdout.String(), stderr.String())
				case <-time.After(20 * time.Millisecond):
				}
			}
			cmd.Process.Signal(syscall.SIGINT)
			var err error
			select {
			case err = <-done:
			case <-time.After(5 * time.Minute):
				cmd.Process.Kill()
				t.Fatal("bench did not finish its cleanup")
			}
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 130 {
				t.Errorf("exit: %v, want 130\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
			}
			if !strings.Contains(stdout.String(), "cleanup      ") || !strings.Contains(stdout.String(), ", 0 errors") {
				t.Errorf("no clean cleanup reported:\n%s", stdout.String())
			}
			assertNothingLeft(t, ep, work)
		})
	}
}

func volumeCount(t *testing.T, ep string) int {
	t.Helper()
	var vs []volumeJSON
	okJSON(t, ep, &vs, "volume", "list")
	return len(vs)
}

// assertNothingLeft checks that the driver has no volumes and that nothing
// is mounted, or left, under the bench's work directory.
func assertNothingLeft(t *testing.T, ep, work string) {
	t.Helper()
	if n := volumeCount(t, ep); n != 0 {
		t.Errorf("%d volumes left behind", n)
	}
	if m := mountsUnder(t, work); len(m) > 0 {
		t.Errorf("mounts left behind: %v", m)
	}
	entries, err := os.ReadDir(work)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("left in the work directory: %s", e.Name())
	}
}
