// Command cairnctl is a command-line client for any CSI driver: inspect it,
// manage volumes and snapshots, and benchmark it. See internal/cairnctl and
// docs/cairnctl.md.
package main

import (
	"os"

	"github.com/cairn-csi/cairn/internal/cairnctl"
)

func main() { os.Exit(cairnctl.Main(os.Args[1:])) }
