// Package crashpoint owns Cairn's deterministic kill points: named steps in
// the crash-safety protocol where a test can make the process die, to prove
// that restart and reconcile converge from exactly there.
//
// It is inert unless the environment asks for it:
//
//	CAIRN_CRASHPOINT=create:renamed          die when that step is reached
//	CAIRN_CRASHPOINT=create:renamed,delete:* several, or a prefix with '*'
//	CAIRN_CRASHPOINT_FILE=/path              the same list, read from the file at every step
//	CAIRN_CRASHPOINT_ACTION=pause            stop there instead (the test kills)
//
// The file lets a test arm and disarm a running process (write the list,
// truncate it) instead of restarting it for each point: a restart costs a
// full start-up reconcile, seconds on an lvm pool under emulation. A
// missing or empty file arms nothing.
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
	file   = os.Getenv("CAIRN_CRASHPOINT_FILE")
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

// armed returns the points armed now.
func armed() []string {
	if file == "" {
		return points
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return points
	}
	return append(parse(string(b)), points...)
}

// Hit marks that the process reached step name. If the step is armed, the
// process dies (or pauses) here.
func Hit(name string) {
	if len(points) == 0 && file == "" {
		return
	}
	for _, p := range armed() {
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
