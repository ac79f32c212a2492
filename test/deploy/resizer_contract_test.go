package deploy

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// TestResizerPodSatisfiesExternalResizer starts the real cairn binary with
// the arguments the chart gives the cairn container of the central resizer
// pod, and asks it what external-resizer asks at start-up
// (pkg/resizer/csi_resizer.go, NewResizerFromClient):
//
//  1. GetPluginCapabilities must list CONTROLLER_SERVICE, or it exits
//     ("CSI driver does not support controller service");
//  2. ControllerGetCapabilities must NOT list EXPAND_VOLUME, or it uses the
//     real resizer and calls ControllerExpandVolume on an instance that holds
//     no volumes;
//  3. NodeGetCapabilities must succeed and list EXPAND_VOLUME, or it exits
//     ("failed to check if plugin supports node resize" / "neither supports
//     controller resize nor node resize").
//
// Only then does it pick the trivial resizer, which leaves the expansion to
// NodeExpandVolume on the volume's node.
func TestResizerPodSatisfiesExternalResizer(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs cmd/cairn")
	}
	helm := helmBin(t)
	for _, tt := range []struct{ name, values string }{
		{name: "defaults"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pod := find(t, render(t, helm, tt.values), "Deployment", "cairn-resizer").podSpec(t)
			args := pod.container(t, "cairn").Args

			dir, err := os.MkdirTemp("", "cairn-rz")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			bin := filepath.Join(dir, "cairn")
			run(t, nil, "go", "build", "-o", bin, "github.com/cairn-csi/cairn/cmd/cairn")

			// The pod's paths and ports, moved into the temporary directory.
			sock := filepath.Join(dir, "csi.sock")
			var local []string
			for _, a := range args {
				switch {
				case strings.HasPrefix(a, "--endpoint="):
					a = "--endpoint=unix://" + sock
				case strings.HasPrefix(a, "--data-dir="):
					a = "--data-dir=" + filepath.Join(dir, "data")
				case strings.HasPrefix(a, "--metrics-address="):
					a = "--metrics-address=127.0.0.1:0"
				}
				local = append(local, a)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, local...)
			cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
			cmd.WaitDelay = 10 * time.Second
			var logs strings.Builder
			cmd.Stdout, cmd.Stderr = &logs, &logs
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				cancel()
				cmd.Wait()
				if t.Failed() {
					t.Logf("cairn %s\n%s", strings.Join(local, " "), logs.String())
				}
			})
			deadline := time.Now().Add(20 * time.Second)
			for !accepts(sock) {
				if time.Now().After(deadline) {
					t.Fatal("cairn did not start serving")
				}
				time.Sleep(50 * time.Millisecond)
			}

			conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
			defer ccancel()

			plugin, err := csi.NewIdentityClient(conn).GetPluginCapabilities(cctx, &csi.GetPluginCapabilitiesRequest{})
			if err != nil {
				t.Fatalf("GetPluginCapabilities: %v", err)
			}
			if !slices.ContainsFunc(plugin.GetCapabilities(), func(c *csi.PluginCapability) bool {
				return c.GetService().GetType() == csi.PluginCapability_Service_CONTROLLER_SERVICE
			}) {
				t.Error("no CONTROLLER_SERVICE plugin capability: external-resizer exits")
			}

			ctrl, err := csi.NewControllerClient(conn).ControllerGetCapabilities(cctx, &csi.ControllerGetCapabilitiesRequest{})
			if err != nil {
				t.Fatalf("ControllerGetCapabilities: %v (external-resizer exits)", err)
			}
			if slices.ContainsFunc(ctrl.GetCapabilities(), func(c *csi.ControllerServiceCapability) bool {
				return c.GetRpc().GetType() == csi.ControllerServiceCapability_RPC_EXPAND_VOLUME
			}) {
				t.Error("controller EXPAND_VOLUME advertised: external-resizer would call ControllerExpandVolume on the central instance")
			}

			node, err := csi.NewNodeClient(conn).NodeGetCapabilities(cctx, &csi.NodeGetCapabilitiesRequest{})
			if err != nil {
				t.Fatalf("NodeGetCapabilities: %v (external-resizer exits: it cannot tell that node expansion is supported)", err)
			}
			if !slices.ContainsFunc(node.GetCapabilities(), func(c *csi.NodeServiceCapability) bool {
				return c.GetRpc().GetType() == csi.NodeServiceCapability_RPC_EXPAND_VOLUME
			}) {
				t.Error("no node EXPAND_VOLUME: external-resizer exits (neither controller nor node resize)")
			}
		})
	}
}

// accepts reports whether a unix socket accepts connections.
func accepts(path string) bool {
	conn, err := (&net.Dialer{Timeout: time.Second}).Dial("unix", path)
	if err != nil {
		return false
	}
	conn.Close()
	return true
}
