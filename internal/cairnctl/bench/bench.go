// Package bench owns cairnctl's benchmark of a CSI driver, any CSI driver:
// CreateVolume throughput and latency, sequential and with concurrent
// callers; the full lifecycle a CO drives (create, controller publish,
// stage, publish and back), adapted to the capabilities the driver
// advertises; the time to snapshot, restore and clone a volume holding
// data written through a real publish; and the driver's memory after
// creating many volumes.
//
// Whatever the bench creates it takes back, in reverse order, even when a
// call fails or the context is cancelled (Ctrl-C): see undoStack.
package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-csi/cairn/internal/cairnctl/procinfo"
)

// Clients are the driver's services. Node may be served by another
// process than Controller (a split deployment).
type Clients struct {
	Identity   csi.IdentityClient
	Controller csi.ControllerClient
	Node       csi.NodeClient
}

// Config is one bench run.
type Config struct {
	Volumes       int   // volumes per throughput phase
	Concurrency   int   // callers in the concurrent phases (1 skips them)
	LifecycleRuns int   // full lifecycles to time
	CapacityBytes int64 // size of each volume
	DataBytes     int64 // data written before snapshot, restore and clone (0 skips them)

	Parameters map[string]string // CreateVolume parameters
	Secrets    map[string]string // secrets for every call that takes them
	AccessType string            // "mount" (default) or "block"
	FsType     string
	MountFlags []string

	// WorkDir holds the staging and target paths; without it the lifecycle
	// and data phases are skipped.
	WorkDir string
	// Prefix starts every volume and snapshot name (default
	// "cairnctl-bench-<random>"), so that a run never collides with
	// another run's, or with anything else.
	Prefix string
	// CallTimeout bounds each call (default 1m).
	CallTimeout time.Duration
	// DataTimeout bounds each call of the data phases, which copy
	// DataBytes (snapshot, restore, clone) and may take far longer than
	// a small call on a slow driver (default 10m).
	DataTimeout time.Duration
	// RSSVolumes is how many volumes exist when the driver's memory is
	// read; it is also read at half that, for the growth per volume. 0
	// skips the measurement.
	RSSVolumes int
	// DropCaches drops the page cache (as root) before restored and
	// cloned volumes are read back, so that the reads come from disk.
	DropCaches bool

	// DriverPID is the driver process to measure; 0 looks up the process
	// listening on SocketPath. ProcRoot defaults to /proc.
	DriverPID  int
	SocketPath string
	ProcRoot   string

	// Progress, when set, gets a progress bar for long phases (a terminal).
	Progress io.Writer
}

func (c Config) withDefaults() (Config, error) {
	if c.Volumes <= 0 {
		return c, errors.New("volumes must be positive")
	}
	if c.Concurrency <= 0 {
		return c, errors.New("concurrency must be positive")
	}
	if c.LifecycleRuns < 0 || c.DataBytes < 0 || c.CapacityBytes < 0 {
		return c, errors.New("lifecycle runs, data size and capacity must not be negative")
	}
	switch c.AccessType {
	case "":
		c.AccessType = "mount"
	case "mount", "block":
	default:
		return c, fmt.Errorf("access type %q: want mount or block", c.AccessType)
	}
	if c.Prefix == "" {
		b := make([]byte, 4)
		rand.Read(b)
		c.Prefix = "cairnctl-bench-" + hex.EncodeToString(b)
	}
	if c.CallTimeout <= 0 {
		c.CallTimeout = time.Minute
	}
	if c.DataTimeout <= 0 {
		c.DataTimeout = 10 * time.Minute
	}
	if c.RSSVolumes < 0 {
		return c, errors.New("rss volumes must not be negative")
	}
	if c.ProcRoot == "" {
		c.ProcRoot = "/proc"
	}
	if c.WorkDir != "" {
		abs, err := filepath.Abs(c.WorkDir)
		if err != nil {
			return c, err
		}
		c.WorkDir = abs
	}
	return c, nil
}

// Result is a bench run's report; it is also the --json-out document.
type Result struct {
	Driver          DriverInfo `json:"driver"`
	Config          ConfigView `json:"config"`
	StartedAt       time.Time  `json:"startedAt"`
	DurationSeconds float64    `json:"durationSeconds"`
	Phases          []Phase    `json:"phases"`
	Skipped         []Skip     `json:"skipped"`
	// Warnings are what a reader must know before trusting the figures
	// (phases left out for want of a flag); the table prints them first.
	Warnings []string `json:"warnings"`
	// Ratios relate the driver's figures to the floor phases and to each
	// other (create/concurrent ÷ create/sequential), when both were
	// measured.
	Ratios  map[string]float64 `json:"ratios"`
	RSS     RSS                `json:"rss"`
	Cleanup Cleanup            `json:"cleanup"`
	// Interrupted is true when the run was cancelled; Phases then holds
	// what had finished.
	Interrupted bool `json:"interrupted"`
}

// DriverInfo is what the driver said about itself.
type DriverInfo struct {
	Name                   string   `json:"name"`
	VendorVersion          string   `json:"vendorVersion"`
	NodeID                 string   `json:"nodeId,omitempty"`
	ControllerCapabilities []string `json:"controllerCapabilities"`
	NodeCapabilities       []string `json:"nodeCapabilities"`
}

// ConfigView is the run's configuration as reported.
type ConfigView struct {
	Volumes       int    `json:"volumes"`
	Concurrency   int    `json:"concurrency"`
	LifecycleRuns int    `json:"lifecycleRuns"`
	CapacityBytes int64  `json:"capacityBytes"`
	DataBytes     int64  `json:"dataBytes"`
	AccessType    string `json:"accessType"`
	FsType        string `json:"fsType,omitempty"`
	Prefix        string `json:"prefix"`
	WorkDir       string `json:"workDir,omitempty"`
	RSSVolumes    int    `json:"rssVolumes"`
	DropCaches    bool   `json:"dropCaches"`
	DataTimeout   string `json:"dataTimeout"`
}

// Phase is one measured phase.
type Phase struct {
	Name string `json:"name"`
	// Ops counts successful calls; Errors failed ones.
	Ops          int     `json:"ops"`
	Errors       int     `json:"errors"`
	Concurrency  int     `json:"concurrency"`
	TotalSeconds float64 `json:"totalSeconds"`
	OpsPerSecond float64 `json:"opsPerSecond"`
	Latency      Latency `json:"latency"`
	// Bytes is the data the phase wrote, read or copied.
	Bytes          int64   `json:"bytes,omitempty"`
	BytesPerSecond float64 `json:"bytesPerSecond,omitempty"`
	// Verified is set for restore and clone: whether the new volume held
	// exactly the source's data.
	Verified   *bool  `json:"verified,omitempty"`
	Note       string `json:"note,omitempty"`
	FirstError string `json:"firstError,omitempty"`
}

// Skip is a phase the bench did not run, and why.
type Skip struct {
	Phase  string `json:"phase"`
	Reason string `json:"reason"`
}

// RSS is the driver's resident memory with none of the bench's volumes
// (after the throughput phases, so that start-up growth is behind it), at
// half of RSSVolumes and at RSSVolumes volumes. BytesPerVolume is the slope
// between the last two readings: what one more volume costs, without the
// one-off growth of the first calls.
type RSS struct {
	Known          bool    `json:"known"`
	PID            int     `json:"pid,omitempty"`
	BeforeBytes    int64   `json:"beforeBytes,omitempty"`
	MidBytes       int64   `json:"midBytes,omitempty"`
	AfterBytes     int64   `json:"afterBytes,omitempty"`
	MidVolumes     int     `json:"midVolumes,omitempty"`
	Volumes        int     `json:"volumes,omitempty"` // volumes that existed at AfterBytes
	BytesPerVolume float64 `json:"bytesPerVolume,omitempty"`
	Reason         string  `json:"reason,omitempty"` // why it is unknown
}

// Cleanup is what taking everything back took.
type Cleanup struct {
	Actions int      `json:"actions"`
	Errors  []string `json:"errors"`
}

// Run runs the bench. It returns the result even when it fails or is
// cancelled part-way (with what had been measured) and always after
// cleaning up; the error is the reason it stopped early, if it did.
func Run(ctx context.Context, cl Clients, cfg Config) (*Result, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	r := &runner{cl: cl, cfg: cfg, res: &Result{
		StartedAt: time.Now().UTC(),
		Phases:    []Phase{},
		Skipped:   []Skip{},
		Warnings:  []string{},
		Ratios:    map[string]float64{},
		Cleanup:   Cleanup{Errors: []string{}},
		RSS:       RSS{Reason: "not measured: the bench stopped before the create phases"},
		Config: ConfigView{Volumes: cfg.Volumes, Concurrency: cfg.Concurrency, LifecycleRuns: cfg.LifecycleRuns,
			CapacityBytes: cfg.CapacityBytes, DataBytes: cfg.DataBytes, AccessType: cfg.AccessType, FsType: cfg.FsType,
			Prefix: cfg.Prefix, WorkDir: cfg.WorkDir, RSSVolumes: cfg.RSSVolumes, DropCaches: cfg.DropCaches,
			DataTimeout: cfg.DataTimeout.String()},
	}}
	if cfg.WorkDir == "" {
		r.res.Warnings = append(r.res.Warnings, "no --work-dir: the lifecycle and data phases were not run, so stage, publish, snapshot, restore and clone are not measured; give --work-dir (as root) to measure them")
	}
	start := time.Now()
	runErr := r.run(ctx)

	// Clean up even after Ctrl-C: with a context of its own, since ctx is
	// cancelled, but bounded so that a hung driver cannot hold us forever.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout(cfg))
	defer cancel()
	n, errs := r.undo.unwindTo(cctx, 0)
	r.res.Cleanup.Actions += n
	for _, e := range errs {
		r.res.Cleanup.Errors = append(r.res.Cleanup.Errors, e.Error())
	}
	r.res.DurationSeconds = time.Since(start).Seconds()
	r.res.Ratios = r.res.ratios()
	if ctx.Err() != nil {
		r.res.Interrupted = true
		if runErr == nil {
			runErr = ctx.Err()
		}
	}
	return r.res, runErr
}

// cleanupTimeout allows every call of the largest phase to take a while.
func cleanupTimeout(cfg Config) time.Duration {
	return max(5*time.Minute, 4*max(cfg.CallTimeout, cfg.DataTimeout))
}

// OK reports whether every call succeeded and the cleanup left nothing.
func (r *Result) OK() bool {
	for _, p := range r.Phases {
		if p.Errors > 0 || (p.Verified != nil && !*p.Verified) {
			return false
		}
	}
	return len(r.Cleanup.Errors) == 0 && !r.Interrupted
}

type runner struct {
	cl   Clients
	cfg  Config
	res  *Result
	undo undoStack

	ctlCaps      map[csi.ControllerServiceCapability_RPC_Type]bool
	nodeCaps     map[csi.NodeServiceCapability_RPC_Type]bool
	nodeServed   bool
	nodeID       string
	nodeTopology *csi.Topology
	topoAware    bool      // VOLUME_ACCESSIBILITY_CONSTRAINTS
	floor        *floorRig // with --work-dir, until the sequential creates are done
}

func (r *runner) run(ctx context.Context) error {
	if err := r.discover(ctx); err != nil {
		return err
	}
	defer r.finishFloor(ctx)
	steps := []func(context.Context) error{r.floorPhases, r.throughputPhases, r.rssPhase, r.lifecyclePhase, r.dataPhases}
	for _, step := range steps {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := step(ctx); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// discover learns what the driver serves. Controller CREATE_DELETE_VOLUME
// is required; everything else only decides which phases run.
func (r *runner) discover(ctx context.Context) error {
	pi, err := callRPC(ctx, r, r.cl.Identity.GetPluginInfo, &csi.GetPluginInfoRequest{})
	if err != nil {
		return fmt.Errorf("GetPluginInfo: %w", err)
	}
	r.res.Driver.Name, r.res.Driver.VendorVersion = pi.GetName(), pi.GetVendorVersion()
	pc, err := callRPC(ctx, r, r.cl.Identity.GetPluginCapabilities, &csi.GetPluginCapabilitiesRequest{})
	if err != nil {
		return fmt.Errorf("GetPluginCapabilities: %w", err)
	}
	for _, c := range pc.GetCapabilities() {
		if c.GetService().GetType() == csi.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS {
			r.topoAware = true
		}
	}
	cc, err := callRPC(ctx, r, r.cl.Controller.ControllerGetCapabilities, &csi.ControllerGetCapabilitiesRequest{})
	if err != nil {
		return fmt.Errorf("ControllerGetCapabilities (the bench needs the controller service): %w", err)
	}
	r.ctlCaps = map[csi.ControllerServiceCapability_RPC_Type]bool{}
	r.res.Driver.ControllerCapabilities = []string{}
	for _, c := range cc.GetCapabilities() {
		r.ctlCaps[c.GetRpc().GetType()] = true
		r.res.Driver.ControllerCapabilities = append(r.res.Driver.ControllerCapabilities, c.GetRpc().GetType().String())
	}
	sort.Strings(r.res.Driver.ControllerCapabilities)
	if !r.ctlCaps[csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME] {
		return errors.New("the driver does not advertise CREATE_DELETE_VOLUME: there is nothing to benchmark")
	}
	r.nodeCaps = map[csi.NodeServiceCapability_RPC_Type]bool{}
	r.res.Driver.NodeCapabilities = []string{}
	nc, err := callRPC(ctx, r, r.cl.Node.NodeGetCapabilities, &csi.NodeGetCapabilitiesRequest{})
	switch {
	case status.Code(err) == codes.Unimplemented:
		return nil // a controller-only endpoint: the node phases are skipped
	case err != nil:
		return fmt.Errorf("NodeGetCapabilities: %w", err)
	}
	r.nodeServed = true
	for _, c := range nc.GetCapabilities() {
		r.nodeCaps[c.GetRpc().GetType()] = true
		r.res.Driver.NodeCapabilities = append(r.res.Driver.NodeCapabilities, c.GetRpc().GetType().String())
	}
	sort.Strings(r.res.Driver.NodeCapabilities)
	ni, err := callRPC(ctx, r, r.cl.Node.NodeGetInfo, &csi.NodeGetInfoRequest{})
	if err != nil {
		return fmt.Errorf("NodeGetInfo: %w", err)
	}
	r.nodeID, r.nodeTopology = ni.GetNodeId(), ni.GetAccessibleTopology()
	r.res.Driver.NodeID = r.nodeID
	return nil
}

func (r *runner) skip(phase, reason string) {
	r.res.Skipped = append(r.res.Skipped, Skip{Phase: phase, Reason: reason})
}

// callTimeout is a timeout for the calls made under a context, and the
// flag that sets it, so that a call that runs out of it says which flag
// to raise.
type callTimeout struct {
	d    time.Duration
	flag string
}

type callTimeoutKey struct{}

func withCallTimeout(ctx context.Context, t callTimeout) context.Context {
	return context.WithValue(ctx, callTimeoutKey{}, t)
}

// timeoutOf is the call timeout in force under ctx.
func (r *runner) timeoutOf(ctx context.Context) callTimeout {
	if t, ok := ctx.Value(callTimeoutKey{}).(callTimeout); ok {
		return t
	}
	return callTimeout{r.cfg.CallTimeout, "--timeout"}
}

// callRPC makes one call with the call timeout in force under ctx. A call
// that runs out of it fails with DEADLINE_EXCEEDED naming the flag.
func callRPC[Req, Resp any](ctx context.Context, r *runner, fn func(context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	t := r.timeoutOf(ctx)
	cctx, cancel := context.WithTimeout(ctx, t.d)
	defer cancel()
	resp, err := fn(cctx, req)
	// Not cctx.Err(): the server cancels the stream at the deadline it was
	// sent, and its RST_STREAM can arrive before this side's timer has
	// cancelled cctx, so the call's own timeout is the one that ran out
	// whenever the caller's context still has time.
	if err != nil && ctx.Err() == nil && status.Code(err) == codes.DeadlineExceeded {
		err = status.Errorf(codes.DeadlineExceeded, "no answer within %s %s (raise it for a slow driver): %s", t.flag, t.d, status.Convert(err).Message())
	}
	return resp, err
}

// capability is the VolumeCapability every bench volume uses.
func (r *runner) capability() *csi.VolumeCapability {
	vc := &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	if r.cfg.AccessType == "block" {
		vc.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
	} else {
		vc.AccessType = &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: r.cfg.FsType, MountFlags: r.cfg.MountFlags}}
	}
	return vc
}

// createRequest is a CreateVolume as a CO would send it for a pod on this
// node: with the node's topology as requisite and preferred, when the
// driver is topology-aware (a WaitForFirstConsumer StorageClass).
func (r *runner) createRequest(name string, capacity int64, src *csi.VolumeContentSource) *csi.CreateVolumeRequest {
	req := &csi.CreateVolumeRequest{
		Name:                name,
		VolumeCapabilities:  []*csi.VolumeCapability{r.capability()},
		Parameters:          r.cfg.Parameters,
		Secrets:             r.cfg.Secrets,
		VolumeContentSource: src,
	}
	if capacity > 0 {
		req.CapacityRange = &csi.CapacityRange{RequiredBytes: capacity}
	}
	if r.topoAware && r.nodeTopology != nil {
		req.AccessibilityRequirements = &csi.TopologyRequirement{
			Requisite: []*csi.Topology{r.nodeTopology}, Preferred: []*csi.Topology{r.nodeTopology}}
	}
	return req
}

// measureRSS reads the driver's RSS, finding the process first if needed.
func (r *runner) measureRSS() (int64, error) {
	if r.res.RSS.PID == 0 {
		pid := r.cfg.DriverPID
		if pid == 0 {
			if r.cfg.SocketPath == "" {
				return 0, errors.New("the endpoint is not a Unix socket; give --driver-pid")
			}
			pids, err := procinfo.SocketOwners(r.cfg.ProcRoot, r.cfg.SocketPath)
			if err != nil {
				return 0, err
			}
			pid = pids[0]
		}
		r.res.RSS.PID = pid
	}
	return procinfo.RSS(r.cfg.ProcRoot, r.res.RSS.PID)
}

// volumeDir is where one volume's staging and target paths live.
func (r *runner) volumeDir(name string) string {
	return filepath.Join(r.cfg.WorkDir, r.cfg.Prefix, name)
}

// makeDir creates dir (and the bench's own parents) and pushes its
// removal. Removal is os.Remove, never RemoveAll: if anything is left in
// it (a mount the driver failed to take down), it stays for a human.
func (r *runner) makeDir(dir string) error {
	var missing []string
	for d := dir; d != r.cfg.WorkDir && d != "/" && d != "."; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); err == nil {
			break
		}
		missing = append(missing, d)
	}
	slices.Reverse(missing)
	for _, d := range missing {
		r.undo.push("remove "+d, func(context.Context) error { return removeIfExists(d) })
		if err := os.Mkdir(d, 0o750); err != nil {
			return err
		}
	}
	return nil
}

// removeIfExists removes an empty directory or a file; a missing one is
// fine.
func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
