package procinfo_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/cairn-csi/cairn/internal/cairnctl/procinfo"
)

// SocketOwners finds the process listening on a Unix socket, and RSS reads
// its memory: here, this very process.
func ExampleSocketOwners() {
	dir, _ := os.MkdirTemp("", "procinfo")
	defer os.RemoveAll(dir)
	l, err := net.Listen("unix", filepath.Join(dir, "csi.sock"))
	if err != nil {
		panic(err)
	}
	defer l.Close()

	pids, err := procinfo.SocketOwners("/proc", filepath.Join(dir, "csi.sock"))
	fmt.Println(pids[0] == os.Getpid(), err)
	rss, err := procinfo.RSS("/proc", pids[0])
	fmt.Println(rss > 0, err)
	// Output:
	// true <nil>
	// true <nil>
}
