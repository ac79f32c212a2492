package cairnctl

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/cairn-csi/cairn/internal/testdriver"
)

// TestOperationsDocListsEveryFlag keeps docs/operations.md's flag table in
// step with the cairn binary: every flag --help prints has a row, with its
// CAIRN_* twin.
func TestOperationsDocListsEveryFlag(t *testing.T) {
	doc, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command(testdriver.Binary(t), "--help").CombinedOutput() // flag's -help exits 0 or 2 by version
	flags := regexp.MustCompile(`(?m)^  -([a-z0-9-]+)`).FindAllStringSubmatch(string(out), -1)
	if len(flags) < 10 {
		t.Fatalf("cairn --help listed %d flags:\n%s", len(flags), out)
	}
	for _, f := range flags {
		name := f[1]
		env := "CAIRN_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
		row := regexp.MustCompile("(?m)^\\| `--" + regexp.QuoteMeta(name) + "[ `].*\\| `" + env + "` \\|")
		if !row.Match(doc) {
			t.Errorf("docs/operations.md has no row for --%s with %s", name, env)
		}
	}
}
