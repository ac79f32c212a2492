package concurrency

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	mount "k8s.io/mount-utils"

	"github.com/cairn-csi/cairn/internal/testdriver"
	"github.com/cairn-csi/cairn/internal/testfs"
)

const clients = 64

// guard bounds the whole test: a deadlock shows up as calls failing with
// DeadlineExceeded, which no check allows, instead of a hung test.
const guard = 5 * time.Minute

var mountCap = &csi.VolumeCapability{
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
}

type client struct {
	ctl  csi.ControllerClient
	node csi.NodeClient
}

// env is one cairn process on a dir pool, with 64 connections to it.
type env struct {
	proc    *testdriver.Process
	root    string
	clients []client
}

func start(tb testing.TB, conns int) *env {
	tb.Helper()
	testfs.RequireRoot(tb)
	pool := filepath.Join(testfs.New(tb, "ext4", 1<<30), "pool")
	root, err := os.MkdirTemp("", "conc-")
	if err != nil {
		tb.Fatal(err)
	}
	e := &env{root: root}
	tb.Cleanup(func() { e.unmountAll(); os.RemoveAll(root) })
	e.proc = testdriver.Start(tb, testdriver.Options{
		DataDir: filepath.Join(root, "data"),
		Pools:   []string{"default=dir:" + pool},
		Extra:   []string{"--log-level", "info"},
	})
	for range conns {
		conn, err := grpc.NewClient("unix://"+e.proc.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { conn.Close() })
		e.clients = append(e.clients, client{csi.NewControllerClient(conn), csi.NewNodeClient(conn)})
	}
	return e
}

func (e *env) staging(id string) string { return filepath.Join(e.root, "staging", id) }
func (e *env) target(id string) string  { return filepath.Join(e.root, "target", id) }

// ourMounts counts mount table entries under the test's directory.
func (e *env) ourMounts() map[string]int {
	infos, _ := mount.ParseMountInfo("/proc/self/mountinfo")
	out := map[string]int{}
	for _, mi := range infos {
		if strings.HasPrefix(mi.MountPoint, e.root+"/") {
			out[mi.MountPoint]++
		}
	}
	return out
}

func (e *env) unmountAll() {
	for range 3 {
		var mps []string
		for mp := range e.ourMounts() {
			mps = append(mps, mp)
		}
		if len(mps) == 0 {
			return
		}
		sort.Sort(sort.Reverse(sort.StringSlice(mps)))
		for _, mp := range mps {
			mount.New("").Unmount(mp)
		}
	}
}

func (e *env) listVolumes(ctx context.Context, t *testing.T) []string {
	t.Helper()
	var ids []string
	token := ""
	for {
		resp, err := e.clients[0].ctl.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: token, MaxEntries: 50})
		if err != nil {
			t.Fatalf("ListVolumes: %v", err)
		}
		for _, en := range resp.GetEntries() {
			ids = append(ids, en.GetVolume().GetVolumeId())
		}
		if token = resp.GetNextToken(); token == "" {
			return ids
		}
	}
}

// checkHealthy fails if the process died or its race detector spoke.
func (e *env) checkHealthy(t *testing.T) {
	t.Helper()
	if e.proc.Exited() {
		t.Fatalf("cairn exited during the test:\n%s", e.proc.Log())
	}
	log := e.proc.Log()
	for _, bad := range []string{"WARNING: DATA RACE", "panic:", "fatal error:"} {
		if strings.Contains(log, bad) {
			t.Fatalf("cairn's log has %q:\n%s", bad, log)
		}
	}
}

// TestSameNameCreate: 64 clients call CreateVolume with one name at the
// same moment. Exactly one volume results; every success carries its ID;
// every other answer is ABORTED.
func TestSameNameCreate(t *testing.T) {
	e := start(t, clients)
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()

	const rounds = 10
	aborted := 0
	for r := range rounds {
		name := fmt.Sprintf("same-%d", r)
		ids := make([]string, clients)
		errs := make([]error, clients)
		var ready, wg sync.WaitGroup
		gate := make(chan struct{})
		for i := range clients {
			ready.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				ready.Done()
				<-gate // all at once
				resp, err := e.clients[i].ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{
					Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20},
					VolumeCapabilities: []*csi.VolumeCapability{mountCap},
				})
				ids[i], errs[i] = resp.GetVolume().GetVolumeId(), err
			}()
		}
		ready.Wait()
		close(gate)
		wg.Wait()

		winner := ""
		for i := range clients {
			switch status.Code(errs[i]) {
			case codes.OK:
				if winner == "" {
					winner = ids[i]
				}
				if ids[i] != winner {
					t.Errorf("round %d: client %d got volume %s, another got %s: two volumes for one name", r, i, ids[i], winner)
				}
			case codes.Aborted:
				aborted++
			default:
				t.Errorf("round %d: client %d: %v; want success or ABORTED", r, i, errs[i])
			}
		}
		if winner == "" {
			t.Fatalf("round %d: no client succeeded", r)
		}
		// Once the first is done, a retry gets the same volume.
		resp, err := e.clients[0].ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{
			Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20},
			VolumeCapabilities: []*csi.VolumeCapability{mountCap},
		})
		if err != nil || resp.GetVolume().GetVolumeId() != winner {
			t.Errorf("round %d: retry after the race: %v, %v; want volume %s", r, resp.GetVolume().GetVolumeId(), err, winner)
		}
		if got := len(e.listVolumes(ctx, t)); got != r+1 {
			t.Fatalf("round %d: ListVolumes has %d volumes, want %d: one per name", r, got, r+1)
		}
	}
	t.Logf("%d rounds of %d concurrent same-name creates: %d answers ABORTED, the rest the one volume", rounds, clients, aborted)
	e.checkHealthy(t)
}

// TestOverlappingOperations: 64 clients run creates, deletes, stages,
// publishes, unpublishes and unstages on a handful of shared names at
// random. Every answer is success or one that a CO handles by retrying or
// re-evaluating (ABORTED, NOT_FOUND, FAILED_PRECONDITION); nothing
// deadlocks; and retrying every cleanup to success leaves no volume, no
// mount and nothing in the pool.
func TestOverlappingOperations(t *testing.T) {
	e := start(t, clients)
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()

	names := []string{"ov-a", "ov-b", "ov-c", "ov-d", "ov-e", "ov-f"}
	var mu sync.Mutex
	lastID := map[string]string{} // name -> the last ID a create answered
	allIDs := map[string]bool{}
	counts := map[string]map[codes.Code]int{}
	var unexpected atomic.Int32
	record := func(op string, err error) {
		c := status.Code(err)
		mu.Lock()
		defer mu.Unlock()
		if counts[op] == nil {
			counts[op] = map[codes.Code]int{}
		}
		counts[op][c]++
		switch c {
		case codes.OK, codes.Aborted, codes.NotFound, codes.FailedPrecondition:
		default:
			if unexpected.Add(1) <= 10 {
				t.Errorf("%s: %v", op, err)
			}
		}
	}
	idOf := func(name string) string {
		mu.Lock()
		defer mu.Unlock()
		return lastID[name]
	}

	const opsPerClient = 40
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := e.clients[i]
			rng := rand.New(rand.NewSource(int64(i)))
			for range opsPerClient {
				name := names[rng.Intn(len(names))]
				id := idOf(name)
				op := rng.Intn(6)
				if id == "" {
					op = 0
				}
				switch op {
				case 0:
					resp, err := c.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{
						Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20},
						VolumeCapabilities: []*csi.VolumeCapability{mountCap},
					})
					record("CreateVolume", err)
					if err == nil {
						mu.Lock()
						lastID[name] = resp.GetVolume().GetVolumeId()
						allIDs[lastID[name]] = true
						mu.Unlock()
					}
				case 1:
					_, err := c.ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
					record("DeleteVolume", err)
				case 2:
					os.MkdirAll(e.staging(id), 0o750)
					_, err := c.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: e.staging(id), VolumeCapability: mountCap})
					record("NodeStageVolume", err)
				case 3:
					_, err := c.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: e.staging(id), TargetPath: e.target(id), VolumeCapability: mountCap})
					record("NodePublishVolume", err)
				case 4:
					_, err := c.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: e.target(id)})
					record("NodeUnpublishVolume", err)
				case 5:
					_, err := c.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: e.staging(id)})
					record("NodeUnstageVolume", err)
				}
			}
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		t.Fatalf("the clients did not finish within %v: a deadlock", guard)
	}
	var summary []string
	for op, byCode := range counts {
		summary = append(summary, fmt.Sprintf("%s %v", op, byCode))
	}
	sort.Strings(summary)
	t.Logf("%d clients x %d operations on %d names: %s", clients, opsPerClient, len(names), strings.Join(summary, "; "))
	if counts["CreateVolume"][codes.OK] == 0 || counts["NodePublishVolume"][codes.OK] == 0 || counts["DeleteVolume"][codes.OK] == 0 {
		t.Errorf("some operation never succeeded: the test did not exercise what it claims (%v)", summary)
	}

	// Converge: everything any create answered, and anything listed, is
	// unpublished, unstaged and deleted, retrying as a CO would.
	for _, id := range e.listVolumes(ctx, t) {
		allIDs[id] = true
	}
	for id := range allIDs {
		retry(ctx, t, "NodeUnpublishVolume "+id, func() error {
			_, err := e.clients[0].node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: e.target(id)})
			return err
		})
		retry(ctx, t, "NodeUnstageVolume "+id, func() error {
			_, err := e.clients[0].node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: e.staging(id)})
			return err
		})
		retry(ctx, t, "DeleteVolume "+id, func() error {
			_, err := e.clients[0].ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
			return err
		})
	}
	if ids := e.listVolumes(ctx, t); len(ids) != 0 {
		t.Errorf("after cleanup ListVolumes still has %v", ids)
	}
	if m := e.ourMounts(); len(m) != 0 {
		t.Errorf("after cleanup these are still mounted: %v", m)
	}
	e.checkHealthy(t)
}

// retry calls fn until it succeeds, retrying only ABORTED.
func retry(ctx context.Context, t *testing.T, what string, fn func() error) {
	t.Helper()
	for {
		err := fn()
		if err == nil {
			return
		}
		if status.Code(err) != codes.Aborted || ctx.Err() != nil {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
