package cairnctl

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

const docPath = "../../docs/cairnctl.md"

// TestDocsExitCodes keeps the exit code table of docs/cairnctl.md equal to
// ExitCodes, from which --help is generated: scripts are written against
// the docs.
func TestDocsExitCodes(t *testing.T) {
	doc, err := os.ReadFile(docPath)
	if err != nil {
		t.Fatal(err)
	}
	_, section, found := strings.Cut(string(doc), "\n## Exit codes\n")
	if !found {
		t.Fatal("docs/cairnctl.md has no \"## Exit codes\" section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	var rows [][2]string
	for _, line := range strings.Split(section, "\n") {
		cells := strings.Split(strings.Trim(line, "| "), " | ")
		if len(cells) != 2 {
			continue
		}
		if _, err := strconv.Atoi(cells[0]); err == nil {
			rows = append(rows, [2]string{cells[0], cells[1]})
		}
	}
	if len(rows) != len(ExitCodes) {
		t.Fatalf("docs list %d exit codes, the code %d", len(rows), len(ExitCodes))
	}
	for i, e := range ExitCodes {
		if want := [2]string{strconv.Itoa(int(e.Code)), e.Meaning}; rows[i] != want {
			t.Errorf("docs row %d = %q, code has %q", i, rows[i], want)
		}
	}
}

// TestDocsEveryCommand checks that docs/cairnctl.md has a section, with an
// example, for every command.
func TestDocsEveryCommand(t *testing.T) {
	doc, err := os.ReadFile(docPath)
	if err != nil {
		t.Fatal(err)
	}
	var walk func(*cobra.Command)
	n := 0
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if sub.Hidden || sub.Name() == "help" {
				continue
			}
			if sub.Runnable() && !sub.HasSubCommands() || sub.Name() == "completion" {
				n++
				heading := "\n### " + sub.CommandPath() + "\n"
				_, section, found := strings.Cut(string(doc), heading)
				if !found {
					t.Errorf("docs/cairnctl.md has no %q section", strings.TrimSpace(heading))
					continue
				}
				section, _, _ = strings.Cut(section, "\n### ")
				if !strings.Contains(section, "```") {
					t.Errorf("section %q has no example", sub.CommandPath())
				}
				continue
			}
			walk(sub)
		}
	}
	root := (&cli{getenv: os.Getenv}).rootCmd()
	root.InitDefaultCompletionCmd() // cobra adds it at Execute time
	walk(root)
	if n < 18 {
		t.Errorf("walked %d commands; the command tree is not what this test expects", n)
	}
}
