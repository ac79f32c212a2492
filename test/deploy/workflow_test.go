package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestWorkflowsLint runs actionlint on .github/workflows: the release
// workflow cannot run on the CI machine (no Docker, no registry), so a
// syntax or expression error would otherwise show only on the next tag.
// actionlint comes from the module proxy:
//
//	go install github.com/rhysd/actionlint/cmd/actionlint@v1.7.12
//
// The test skips without it (found on PATH or at $ACTIONLINT).
func TestWorkflowsLint(t *testing.T) {
	bin := os.Getenv("ACTIONLINT")
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("actionlint"); err != nil {
			t.Skip("actionlint not on PATH and ACTIONLINT unset: go install github.com/rhysd/actionlint/cmd/actionlint@v1.7.12")
		}
	}
	files, err := filepath.Glob("../../.github/workflows/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no workflow in .github/workflows")
	}
	for i := range files {
		files[i], _ = filepath.Rel("../..", files[i])
	}
	// -shellcheck= -pyflakes=: lint the workflow itself, not with tools CI may lack
	cmd := exec.Command(bin, append([]string{"-shellcheck=", "-pyflakes=", "-no-color"}, files...)...)
	cmd.Dir = "../.."
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("actionlint %v: %v\n%s", files, err, out)
	}
}
