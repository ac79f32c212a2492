// Command testsum reads `go test -json` (test2json) events on stdin and
// prints a short report and a count. Both test lanes use it: hack/test.sh
// for the host lane, hack/vm-lane.sh for the tests run in the VM.
//
//	go test -json ./... | go run ./hack/testsum -label host-lane
//
// It prints the output of every failed test and of every package that
// failed outside a test (build errors, panics in TestMain), one line per
// skipped test with its reason, and an "ok"/"FAIL" line per package. The
// last line is "<label>: N passed, N failed, N skipped", counting tests
// and subtests. It exits 1 if any test or package failed, or if the input
// had no test at all.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
)

type event struct {
	Action     string
	Package    string
	Test       string
	Output     string
	Elapsed    float64
	ImportPath string
}

func main() {
	label := flag.String("label", "tests", "name of the lane in the summary line")
	verbose := flag.Bool("v", false, "print every test's output, not only failures'")
	skipsFile := flag.String("skips", "", "also write the skipped tests and their reasons to this file")
	list := flag.Bool("list", false, "list every test that passed, too")
	flag.Parse()

	output := map[string][]string{} // package + "\x00" + test -> output lines
	var passed, failed, skipped int
	var skips, failures, passes []string
	pkgFailed := 0
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if err := json.Unmarshal(line, &e); err != nil || e.Action == "" {
			// Not an event (e.g. a line from a tool around go test): pass it on.
			fmt.Println(string(line))
			continue
		}
		key := e.Package + "\x00" + e.Test
		switch e.Action {
		case "build-output":
			fmt.Print(e.Output)
		case "output":
			if *verbose {
				fmt.Print(e.Output)
			}
			output[key] = append(output[key], e.Output)
		case "pass", "fail", "skip":
			if e.Test == "" { // the package
				switch e.Action {
				case "fail":
					pkgFailed++
					if !*verbose {
						fmt.Print(strings.Join(output[key], ""))
					}
					fmt.Printf("FAIL\t%s\t%.1fs\n", e.Package, e.Elapsed)
				case "pass":
					if e.Elapsed > 0 {
						fmt.Printf("ok  \t%s\t%.1fs\n", e.Package, e.Elapsed)
					} else {
						fmt.Printf("ok  \t%s\n", e.Package)
					}
				case "skip":
					fmt.Printf("?   \t%s\t[no test files]\n", e.Package)
				}
				delete(output, key)
				continue
			}
			name := e.Package + " " + e.Test
			switch e.Action {
			case "pass":
				passed++
				passes = append(passes, fmt.Sprintf("%s (%.1fs)", name, e.Elapsed))
			case "fail":
				failed++
				failures = append(failures, name)
				if !*verbose {
					fmt.Printf("--- FAIL: %s (%s)\n%s", e.Test, e.Package, strings.Join(output[key], ""))
				}
			case "skip":
				skipped++
				skips = append(skips, name+": "+skipReason(output[key]))
			}
			delete(output, key)
		}
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "testsum:", err)
		os.Exit(2)
	}
	if *list && len(passes) > 0 {
		fmt.Printf("%s: %d passed:\n", *label, len(passes))
		for _, p := range passes {
			fmt.Println("  PASS " + p)
		}
	}
	if len(skips) > 0 {
		sort.Strings(skips)
		fmt.Printf("%s: %d skipped:\n", *label, len(skips))
		for _, s := range skips {
			fmt.Println("  SKIP " + s)
		}
		if *skipsFile != "" {
			os.WriteFile(*skipsFile, []byte(strings.Join(skips, "\n")+"\n"), 0o644)
		}
	}
	if len(failures) > 0 {
		fmt.Printf("%s: %d failed:\n", *label, len(failures))
		for _, f := range failures {
			fmt.Println("  FAIL " + f)
		}
	}
	fmt.Printf("%s: %d passed, %d failed, %d skipped\n", *label, passed, failed, skipped)
	switch {
	case failed > 0 || pkgFailed > 0:
		os.Exit(1)
	case passed+skipped == 0:
		fmt.Printf("%s: no tests ran\n", *label)
		os.Exit(1)
	}
}

// skipReason is the message t.Skip printed: the output lines between the
// "=== RUN" and "--- SKIP" lines, trimmed to one line.
func skipReason(lines []string) string {
	var msg []string
	for _, l := range lines {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- SKIP") {
			continue
		}
		msg = append(msg, t)
	}
	s := strings.Join(msg, " ")
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}
