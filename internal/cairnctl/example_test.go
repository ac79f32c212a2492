package cairnctl_test

import (
	"context"
	"fmt"
	"os"

	"github.com/cairn-csi/cairn/internal/cairnctl"
)

// Run is Main with explicit streams and environment: here, a probe of an
// endpoint where nothing listens, which scripts see as exit code 3.
func ExampleRun() {
	code := cairnctl.Run(context.Background(),
		[]string{"--endpoint", "unix:///nonexistent/csi.sock", "probe"},
		os.Stdout, os.Stdout, os.Getenv, false)
	fmt.Println("exit code:", code)
	// Output:
	// cairnctl: cannot connect to unix:///nonexistent/csi.sock: dial unix /nonexistent/csi.sock: connect: no such file or directory
	// exit code: 3
}
