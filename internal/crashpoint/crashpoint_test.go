package crashpoint

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestHelperProcess is the child of TestFile: it passes two kill points,
// saying so after each. Run directly, it does nothing.
func TestHelperProcess(t *testing.T) {
	if os.Getenv("CRASHPOINT_HELPER") != "1" {
		return
	}
	for _, p := range []string{"test:one", "test:two"} {
		Hit(p)
		os.Stdout.WriteString("passed " + p + "\n")
	}
	os.Exit(0)
}

// TestFile: CAIRN_CRASHPOINT_FILE arms the points the file lists when they
// are reached, and a missing or empty file arms nothing.
func TestFile(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name    string
		content *string // nil: no file
		passed  []string
		killed  bool
	}{
		{"missing", nil, []string{"test:one", "test:two"}, false},
		{"empty", ptr(""), []string{"test:one", "test:two"}, false},
		{"second", ptr("test:two\n"), []string{"test:one"}, true},
		{"prefix", ptr("other:x, test:*"), nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(dir, tc.name)
			if tc.content != nil {
				if err := os.WriteFile(file, []byte(*tc.content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
			cmd.Env = append(os.Environ(), "CRASHPOINT_HELPER=1", "CAIRN_CRASHPOINT_FILE="+file)
			out, err := cmd.Output()
			var ee *exec.ExitError
			killed := errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL
			if !killed && err != nil {
				t.Fatalf("helper: %v", err)
			}
			var passed []string
			for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				if p, ok := strings.CutPrefix(l, "passed "); ok {
					passed = append(passed, p)
				}
			}
			if killed != tc.killed || strings.Join(passed, ",") != strings.Join(tc.passed, ",") {
				t.Fatalf("killed=%v, passed %v; want killed=%v, passed %v", killed, passed, tc.killed, tc.passed)
			}
		})
	}
}

func ptr(s string) *string { return &s }
