// Command cairn is the Cairn CSI driver: one binary serving the CSI
// Identity, Controller and Node services on a Unix socket. See internal/app.
package main

import (
	"os"

	"github.com/cairn-csi/cairn/internal/app"
)

func main() { os.Exit(app.Main(os.Args[1:])) }
