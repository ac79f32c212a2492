// Package crashpoint owns Cairn's deterministic kill points: named steps in
// the crash-safety protocol where a test can make the process die, to prove
// that restart and reconcile converge from exactly there.
//
// It is inert unless the environment asks for it:
//
//	CAIRN_CRASHPOINT=create:renamed          die when that step is reached
//	CAIRN_CRASHPOINT=create:renamed,delete:* several, or a prefix with '*'
//	CAIRN_CRASHPOINT_ACTION=pause            stop there instead (the test kills)
//
// The default action is SIGKILL to itself: no deferred function, no flush,
// exactly like a power cut for the process.
package crashpoint

import (
	"os"
	"strings"
	"syscall"
)

var (
	points = parse(os.Getenv("CAIRN_CRASHPOINT"))
	action = os.Getenv("CAIRN_CRASHPOINT_ACTION")
)

func parse(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// Hit marks that the process reached step name. If the step is armed, the
// process dies (or pauses) here.
func Hit(name string) {
	if len(points) == 0 {
		return
	}
	for _, p := range points {
		if p == name || (strings.HasSuffix(p, "*") && strings.HasPrefix(name, strings.TrimSuffix(p, "*"))) {
			os.Stderr.WriteString("crashpoint: reached " + name + "\n")
			if action == "pause" {
				select {} // the test kills us here
			}
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
	}
}
