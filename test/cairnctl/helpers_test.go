package cairnctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cairn-csi/cairn/internal/testdriver"
)

var (
	buildOnce sync.Once
	ctlPath   string
	buildErr  error
)

// TestMain removes the cairnctl binary built for this run.
func TestMain(m *testing.M) {
	code := m.Run()
	if ctlPath != "" {
		os.RemoveAll(filepath.Dir(ctlPath))
	}
	os.Exit(code)
}

// binary builds cmd/cairnctl once per test binary, with -race when the
// tests run with it, as internal/testdriver builds cairn.
// $CAIRNCTL_BINARY overrides the build.
func binary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CAIRNCTL_BINARY"); p != "" {
		return p
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "cairnctl-bin-")
		if err != nil {
			buildErr = err
			return
		}
		ctlPath = filepath.Join(dir, "cairnctl")
		args := []string{"build", "-o", ctlPath}
		if raceEnabled {
			args = append(args, "-race")
		}
		out, err := exec.Command("go", append(args, "github.com/cairn-csi/cairn/cmd/cairnctl")...).CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build cairnctl: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return ctlPath
}

// result is one cairnctl run.
type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// ctl runs cairnctl against endpoint (when not empty) with args.
func ctl(t *testing.T, endpoint string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if endpoint != "" {
		args = append([]string{"--endpoint", endpoint}, args...)
	}
	cmd := exec.CommandContext(ctx, binary(t), args...)
	cmd.Env = append(os.Environ(), "CSI_ENDPOINT=")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	code := 0
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("cairnctl %v: %v", args, err)
	}
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// ok runs cairnctl and fails the test unless it exits 0.
func ok(t *testing.T, endpoint string, args ...string) result {
	t.Helper()
	r := ctl(t, endpoint, args...)
	if r.code != 0 {
		t.Fatalf("cairnctl %s: %v", strings.Join(args, " "), r)
	}
	return r
}

// okJSON runs cairnctl with -o json and decodes its output into v.
func okJSON(t *testing.T, endpoint string, v any, args ...string) {
	t.Helper()
	r := ok(t, endpoint, append(args, "-o", "json")...)
	if err := json.Unmarshal([]byte(r.stdout), v); err != nil {
		t.Fatalf("cairnctl %s -o json: %v\n%s", strings.Join(args, " "), err, r.stdout)
	}
}

// startCairn runs a cairn with a dir pool and returns it and its endpoint.
func startCairn(t *testing.T, opts testdriver.Options) (*testdriver.Process, string) {
	t.Helper()
	tmp := t.TempDir()
	if opts.DataDir == "" {
		opts.DataDir = filepath.Join(tmp, "data")
	}
	if opts.Pools == nil {
		opts.Pools = []string{"default=dir:" + filepath.Join(tmp, "pool")}
	}
	p := testdriver.Start(t, opts)
	return p, "unix://" + p.Socket
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: NodeStageVolume and NodePublishVolume make real bind mounts")
	}
}

// table parses aligned table output into rows of whitespace-separated
// cells (cells here never contain spaces), header first.
func table(out string) [][]string {
	var rows [][]string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		rows = append(rows, strings.Fields(line))
	}
	return rows
}

// kv parses the vertical key/value layout of a single object: keys are
// upper case and may have one space ("PUBLISHED ON"); a line that starts
// with spaces continues the previous key.
func kv(out string) map[string][]string {
	m := map[string][]string{}
	last := ""
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		if strings.HasPrefix(line, " ") {
			m[last] = append(m[last], strings.TrimSpace(line))
			continue
		}
		// Columns are separated by at least two spaces.
		key, val, _ := strings.Cut(line, "  ")
		last = key
		m[key] = append(m[key], strings.TrimSpace(val))
	}
	return m
}

// mounted reports whether path is a mount point in this mount namespace.
func mounted(t *testing.T, path string) bool {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == path {
			return true
		}
	}
	return false
}

// mountsUnder lists mount points at or below dir.
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			out = append(out, f[4])
		}
	}
	return out
}
