// Command guest is the in-VM half of the power-cut test (see the package
// test/powercut): it mounts the persistent disks, runs cairn on them, and
// either drives 16 callers creating and deleting volumes, logging every
// acknowledged call to the shared directory, or (-mode check) reports what
// cairn and the pool hold after a boot. It exits non-zero on any error
// other than the power cut it is waiting for.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Report is what -mode check writes: the store's view (ListVolumes), the
// pool's entries, and what start-up reconcile logged.
type Report struct {
	Listed    map[string]string `json:"listed"`  // id -> name
	Entries   []string          `json:"entries"` // names under the pool's volumes/
	Reconcile []string          `json:"reconcile"`
}

func main() {
	mode := flag.String("mode", "work", "work or check")
	cairn := flag.String("cairn", "./cairn", "the cairn binary")
	acks := flag.String("acks", "acks.log", "work: the log of acknowledged calls (append)")
	out := flag.String("out", "report.json", "check: the report")
	boot := flag.String("boot", "0", "work: a tag for this boot's volume names")
	callers := flag.Int("callers", 16, "work: concurrent callers")
	flag.Parse()
	if err := run(*mode, *cairn, *acks, *out, *boot, *callers); err != nil {
		fmt.Fprintln(os.Stderr, "guest:", err)
		os.Exit(1)
	}
}

func run(mode, cairn, acks, out, boot string, callers int) error {
	// The store on one disk, the pool on another: the pool's directory
	// fsync and the store's commit are then separate flushes, so a missing
	// one shows (on one ext4, the journal would order them anyway).
	for _, m := range []struct{ dev, dir string }{{"/dev/vdb", "/mnt/store"}, {"/dev/vdc", "/mnt/pool"}} {
		if err := os.MkdirAll(m.dir, 0o755); err != nil {
			return err
		}
		if err := syscall.Mount(m.dev, m.dir, "ext4", 0, ""); err != nil {
			return fmt.Errorf("mount %s: %w", m.dev, err)
		}
	}
	sock := "/run/cairn.sock"
	logPath := "/run/cairn.log"
	lf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	cmd := exec.Command(cairn, "--endpoint", "unix://"+sock, "--data-dir", "/mnt/store/data",
		"--pool", "default=dir:/mnt/pool/pool", "--node-id", "vm", "--log-level", "info")
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		return err
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	ctl := csi.NewControllerClient(conn)
	if err := waitReady(conn); err != nil {
		b, _ := os.ReadFile(logPath)
		return fmt.Errorf("cairn not ready: %w\n%s", err, b)
	}
	if mode == "check" {
		return check(ctl, logPath, out)
	}
	return work(ctl, acks, boot, callers)
}

func waitReady(conn *grpc.ClientConn) error {
	id := csi.NewIdentityClient(conn)
	deadline := time.Now().Add(120 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := id.Probe(ctx, &csi.ProbeRequest{})
		cancel()
		if err == nil && resp.GetReady().GetValue() {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("no ready Probe in 120s")
}

func check(ctl csi.ControllerClient, logPath, out string) error {
	rep := Report{Listed: map[string]string{}}
	token := ""
	for {
		resp, err := ctl.ListVolumes(context.Background(), &csi.ListVolumesRequest{StartingToken: token})
		if err != nil {
			return err
		}
		for _, e := range resp.GetEntries() {
			rep.Listed[e.GetVolume().GetVolumeId()] = ""
		}
		if token = resp.GetNextToken(); token == "" {
			break
		}
	}
	entries, err := os.ReadDir("/mnt/pool/pool/volumes")
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") {
			rep.Entries = append(rep.Entries, e.Name())
		}
	}
	b, _ := os.ReadFile(logPath)
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, "reconcile") {
			rep.Reconcile = append(rep.Reconcile, line)
		}
	}
	j, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Clean(out), j, 0o644)
}

// work runs callers until the power is cut. Each caller creates a volume,
// and deletes the one it made before; the log gets "start" lines before a
// call and acknowledgement lines after it returns OK.
func work(ctl csi.ControllerClient, acks, boot string, callers int) error {
	f, err := os.OpenFile(acks, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	var mu sync.Mutex
	logf := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(f, format+"\n", args...) // one write(2), straight to the host (9p, cache=none)
	}
	logf("B %s", boot)
	errs := make(chan error, callers)
	for c := range callers {
		go func() {
			rng := rand.New(rand.NewPCG(uint64(c), uint64(time.Now().UnixNano())))
			var mine []string
			for n := 0; ; n++ {
				name := fmt.Sprintf("pc-%s-%d-%d", boot, c, n)
				logf("SC %s", name)
				resp, err := ctl.CreateVolume(context.Background(), &csi.CreateVolumeRequest{
					Name:          name,
					CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20},
					VolumeCapabilities: []*csi.VolumeCapability{{
						AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
						AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
					}},
				})
				if err != nil {
					errs <- fmt.Errorf("create %s: %w", name, err)
					return
				}
				id := resp.GetVolume().GetVolumeId()
				logf("C %s %s", name, id)
				mine = append(mine, id)
				if len(mine) > 1 && rng.IntN(2) == 0 {
					victim := mine[0]
					mine = mine[1:]
					logf("SD %s", victim)
					if _, err := ctl.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: victim}); err != nil {
						errs <- fmt.Errorf("delete %s: %w", victim, err)
						return
					}
					logf("D %s", victim)
				}
			}
		}()
	}
	return <-errs
}
