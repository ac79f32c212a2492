package hotpath

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/cairn-csi/cairn/internal/cairnctl/procinfo"
)

// TestScale is the long run at $CAIRN_HOTPATH_SCALE volumes (e.g. 100000):
// the create p50 of the first and of the last 1,000 (one caller, so that
// they compare), the driver's RSS with every volume, the time from a
// restart to serving, and `cairnctl volume list` of all of them. It
// asserts only what is correct or not (every volume listed, the list
// succeeds); the figures are logged for the README's long-runs table.
func TestScale(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("CAIRN_HOTPATH_SCALE"))
	if n < 2000 {
		t.Skip("set CAIRN_HOTPATH_SCALE to a volume count of 2000 or more (e.g. 100000)")
	}
	e := newEnv(t)
	ctx := context.Background()
	seqP50 := func(k int) time.Duration {
		var times []time.Duration
		for range k {
			t0 := time.Now()
			if _, err := e.ctl.CreateVolume(ctx, createReq()); err != nil {
				t.Fatal(err)
			}
			times = append(times, time.Since(t0))
		}
		return p50(times)
	}
	first := seqP50(1000)
	t0 := time.Now()
	populate(t, e.ctl, n-2000)
	t.Logf("populated %d volumes with 16 callers in %v", n-2000, time.Since(t0).Round(time.Second))
	last := seqP50(1000)
	t.Logf("create p50: first 1,000 %v, last 1,000 %v: ratio %.2f (target <= 1.5)", first, last, float64(last)/float64(first))

	pids, err := procinfo.SocketOwners("/proc", e.proc.Socket)
	if err != nil {
		t.Fatal(err)
	}
	rss, err := procinfo.RSS("/proc", pids[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("driver RSS with %d volumes: %.1f MiB (target <= 64 MiB)", n, float64(rss)/(1<<20))

	if err := e.proc.Stop(60 * time.Second); err != nil {
		t.Fatal(err)
	}
	t0 = time.Now()
	e.proc.Restart(true)
	t.Logf("restart to serving (Probe ready) with %d volumes: %v (target <= 3s)", n, time.Since(t0).Round(time.Millisecond))

	ctl := filepath.Join(t.TempDir(), "cairnctl")
	if out, err := exec.Command("go", "build", "-o", ctl, "github.com/cairn-csi/cairn/cmd/cairnctl").CombinedOutput(); err != nil {
		t.Fatalf("go build cairnctl: %v\n%s", err, out)
	}
	t0 = time.Now()
	out, err := exec.Command(ctl, "--endpoint", "unix://"+e.proc.Socket, "volume", "list").Output()
	if err != nil {
		t.Fatalf("cairnctl volume list: %v", err)
	}
	rows := strings.Count(string(out), "\n") - 1 // the header
	t.Logf("cairnctl volume list: %d volumes in %v", rows, time.Since(t0).Round(time.Millisecond))
	if rows != n {
		t.Fatalf("cairnctl volume list printed %d volumes, want %d", rows, n)
	}
	got, _ := listAll(t, csi.NewControllerClient(e.proc.Dial()))
	if got != n {
		t.Fatalf("ListVolumes listed %d, want %d", got, n)
	}
}
