// Package app owns the cairn command: its flags (each with a CAIRN_*
// environment twin), opening the store and pools, start-up reconcile,
// serving gRPC, optional kubelet registration and metrics, and graceful
// shutdown on SIGTERM.
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"k8s.io/klog/v2"

	"github.com/cairn-csi/cairn/internal/backend/lvmpool"
	"github.com/cairn-csi/cairn/internal/backend/staging"
	"github.com/cairn-csi/cairn/internal/driver"
	"github.com/cairn-csi/cairn/internal/endpoint"
	"github.com/cairn-csi/cairn/internal/kubeletreg"
	"github.com/cairn-csi/cairn/internal/node"
	"github.com/cairn-csi/cairn/internal/store"
)

// Config is the parsed command line.
type Config struct {
	Endpoint                string
	NodeID                  string
	DriverName              string
	DataDir                 string
	Pools                   poolFlags
	MkfsOptions             mkfsFlags
	Mode                    string
	LogFormat               string
	LogLevel                string
	ShowVersion             bool
	MetricsAddress          string
	KubeletRegistrationPath string
	PluginRegistrationDir   string
	ControllerExpansion     bool
	SocketGroup             string
	MaxVolumesPerNode       int64
	ShutdownTimeout         time.Duration
	TLSCertFile             string
	TLSKeyFile              string
	TLSClientCAFile         string
	LVMOverProvisionRatio   float64
	LVMFullPercent          float64
}

// Version is the module version from the build info ("(devel)" in a
// plain go build).
func Version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(unknown)"
}

// envName is a flag's environment twin: --node-id is CAIRN_NODE_ID.
func envName(flagName string) string {
	return "CAIRN_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// Parse parses args (without the program name), applying environment
// twins for flags not given on the command line.
func Parse(args []string, getenv func(string) string, stderr io.Writer) (Config, error) {
	host, _ := os.Hostname()
	var c Config
	fs := flag.NewFlagSet("cairn", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.Endpoint, "endpoint", "unix:///run/cairn/csi.sock", "CSI endpoint: unix:///path, or tcp://host:port with mutual TLS")
	fs.StringVar(&c.NodeID, "node-id", host, "node ID reported to the CO (default: the host name)")
	fs.StringVar(&c.DriverName, "driver-name", "cairn.csi.dev", "CSI driver name")
	fs.StringVar(&c.DataDir, "data-dir", "/var/lib/cairn", "directory for the metadata store and the default pool")
	fs.Var(&c.Pools, "pool", "a pool as name=type:path (types: "+strings.Join(PoolTypes(), ", ")+"); repeatable; default: default=dir:<data-dir>/pools/default")
	fs.Var(&c.MkfsOptions, "mkfs-options", "trusted mkfs arguments for one pool and filesystem type, as pool:fstype=ARGS (e.g. raw:ext4=-E root_owner=1000:1000); repeatable; ';'-separated in the environment")
	fs.StringVar(&c.Mode, "mode", "all", "services to serve: controller, node or all")
	fs.StringVar(&c.LogFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&c.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.BoolVar(&c.ShowVersion, "version", false, "print the version and exit")
	fs.StringVar(&c.MetricsAddress, "metrics-address", "", "address for Prometheus /metrics and /healthz, e.g. 127.0.0.1:9808 (off when empty)")
	fs.StringVar(&c.KubeletRegistrationPath, "kubelet-registration-path", "", "the CSI socket path as kubelet sees it; when set, register with kubelet directly")
	fs.StringVar(&c.PluginRegistrationDir, "plugin-registration-dir", "/var/lib/kubelet/plugins_registry", "kubelet's plugin registration directory")
	fs.BoolVar(&c.ControllerExpansion, "controller-expansion", true, "advertise controller EXPAND_VOLUME (off: expansion happens in NodeExpandVolume)")
	fs.StringVar(&c.SocketGroup, "socket-group", "", "group that owns the Unix socket (mode 0660); default: root only (0600)")
	fs.Int64Var(&c.MaxVolumesPerNode, "max-volumes-per-node", 0, "volumes this node may hold published at once (0: no limit)")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 30*time.Second, "how long in-flight calls may run after SIGTERM")
	fs.StringVar(&c.TLSCertFile, "tls-cert-file", "", "server certificate (tcp:// endpoints)")
	fs.StringVar(&c.TLSKeyFile, "tls-key-file", "", "server key (tcp:// endpoints)")
	fs.StringVar(&c.TLSClientCAFile, "tls-client-ca-file", "", "CA that client certificates must chain to (tcp:// endpoints)")
	fs.Float64Var(&c.LVMOverProvisionRatio, "lvm-thin-overprovision-ratio", lvmpool.DefaultOverProvisionRatio, "lvm thin pools: the sum of volume sizes may reach this multiple of the thin pool's size (1: no over-provisioning)")
	fs.Float64Var(&c.LVMFullPercent, "lvm-thin-full-percent", lvmpool.DefaultFullPercent, "lvm thin pools: refuse new volumes, clones, snapshots and expansions once data or metadata use reaches this percentage")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] {
			return
		}
		v := getenv(envName(f.Name))
		if v == "" {
			return
		}
		if sep := listSeparator[f.Name]; sep != "" { // a list in the environment
			for _, p := range strings.Split(v, sep) {
				if err := f.Value.Set(strings.TrimSpace(p)); err != nil {
					envErr = errors.Join(envErr, fmt.Errorf("%s: %w", envName(f.Name), err))
				}
			}
			return
		}
		if err := f.Value.Set(v); err != nil {
			envErr = errors.Join(envErr, fmt.Errorf("%s: %w", envName(f.Name), err))
		}
	})
	return c, envErr
}

// Main runs the cairn command and returns the exit code.
func Main(args []string) int {
	c, err := Parse(args, os.Getenv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cairn:", err)
		return 2
	}
	if c.ShowVersion {
		fmt.Println("cairn", Version())
		return 0
	}
	log, err := newLogger(c.LogFormat, c.LogLevel, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cairn:", err)
		return 2
	}
	// mount-utils logs through klog; send that into the same slog handler so
	// --log-format json stays parseable.
	klog.SetSlogLogger(log)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// CAIRN_CPUPROFILE=<file> profiles the process until it stops
	// gracefully: the hot-path benchmarks (test/hotpath) profile the real
	// binary under load with it. It is no flag, because it is no feature.
	if path := os.Getenv("CAIRN_CPUPROFILE"); path != "" {
		if f, err := os.Create(path); err == nil && pprof.StartCPUProfile(f) == nil {
			defer func() { pprof.StopCPUProfile(); f.Close() }()
		}
	}
	if err := Run(ctx, c, log); err != nil {
		log.Error("cairn stopped", "err", err)
		return 1
	}
	return 0
}

func newLogger(format, level string, w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: %w", level, err)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

// Run serves until ctx is done, then shuts down gracefully: no new calls,
// in-flight calls get ShutdownTimeout, then the store closes.
func Run(ctx context.Context, c Config, log *slog.Logger) error {
	mode, err := driver.ParseMode(c.Mode)
	if err != nil {
		return err
	}
	ep, err := endpoint.Parse(c.Endpoint)
	if err != nil {
		return err
	}
	if !filepath.IsAbs(c.DataDir) {
		return fmt.Errorf("--data-dir %q must be absolute", c.DataDir)
	}
	// TLS is checked before the store and pools are opened, so that a bad
	// flag fails at once rather than after reconcile.
	var sopts []grpc.ServerOption
	if ep.Network == "tcp" {
		creds, err := endpoint.ServerCredentials(endpoint.TLSFiles{Cert: c.TLSCertFile, Key: c.TLSKeyFile, ClientCA: c.TLSClientCAFile})
		if err != nil {
			return err
		}
		sopts = append(sopts, grpc.Creds(creds))
	}
	if err := os.MkdirAll(c.DataDir, 0o700); err != nil {
		return err
	}
	pools := c.Pools
	if len(pools) == 0 {
		pools = poolFlags{{Name: "default", Type: "dir", Path: filepath.Join(c.DataDir, "pools", "default")}}
	}

	var st *store.Store
	if mode != driver.ModeNode {
		st, err = store.Open(ctx, filepath.Join(c.DataDir, "cairn.db"), 5*time.Second)
		if err != nil {
			return err
		}
		// One commit group for both layers: every pool's staged renames
		// are made durable by the store's group leader, just before the
		// group's transaction (see staging.DeferDirSyncs).
		st.SetBeforeCommit(staging.SyncPending)
		staging.DeferDirSyncs(true)
		defer func() {
			if err := st.Close(); err != nil {
				log.Error("close store", "err", err)
			} else {
				log.Info("store closed")
			}
		}()
	}
	if err := c.MkfsOptions.check(pools); err != nil {
		return err
	}
	dpools, err := openPools(ctx, pools, c.MkfsOptions, poolOptions{LVMOverProvisionRatio: c.LVMOverProvisionRatio, LVMFullPercent: c.LVMFullPercent}, log)
	if err != nil {
		return err
	}
	// The node layer: mounts, loop devices, growth, freeze markers. The
	// driver's Node service is thin handlers over it, and its Controller
	// service asks it where a volume is mounted.
	nd := node.New(node.Config{Logger: log, Loop: node.KernelLoops{}, StateDir: c.DataDir})
	d, err := driver.New(driver.Config{
		Name:                c.DriverName,
		Version:             Version(),
		NodeID:              c.NodeID,
		Mode:                mode,
		MaxVolumesPerNode:   c.MaxVolumesPerNode,
		ControllerExpansion: c.ControllerExpansion,
		Logger:              log,
		Node:                nd,
		StateDir:            c.DataDir,
	}, st, dpools, nil)
	if err != nil {
		return err
	}
	log.Info("starting", "version", Version(), "driver", c.DriverName, "node", c.NodeID, "mode", mode, "endpoint", ep.String(), "dataDir", c.DataDir)
	if err := d.Start(ctx); err != nil {
		return err
	}

	var lis net.Listener
	if ep.Network == "unix" {
		lis, err = endpoint.Listen(ep, endpoint.Options{Group: c.SocketGroup})
	} else {
		lis, err = net.Listen("tcp", ep.Address)
	}
	if err != nil {
		return err
	}
	obs, err := startObservability(ctx, c, d, log)
	if err != nil {
		lis.Close()
		return err
	}
	srv := driver.NewServer(d, sopts, obs.interceptors...)

	// Registration stops first at shutdown, so kubelet stops sending calls
	// before the CSI server refuses them.
	regCtx, stopReg := context.WithCancel(context.Background())
	regDone := make(chan struct{})
	if c.KubeletRegistrationPath != "" {
		go func() {
			defer close(regDone)
			err := kubeletreg.Serve(regCtx, kubeletreg.Config{
				DriverName:      c.DriverName,
				Endpoint:        c.KubeletRegistrationPath,
				RegistrationDir: c.PluginRegistrationDir,
				Logger:          log,
			})
			if err != nil && regCtx.Err() == nil {
				log.Error("kubelet registration stopped", "err", err)
			}
		}()
	} else {
		close(regDone)
	}
	defer func() { stopReg(); <-regDone }()

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(lis) }()
	log.Info("serving", "endpoint", ep.String())

	select {
	case err := <-serveErr:
		obs.shutdown()
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	stopReg()
	<-regDone
	log.Info("shutting down: refusing new calls, waiting for in-flight ones", "timeout", c.ShutdownTimeout)
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(c.ShutdownTimeout):
		log.Warn("in-flight calls did not finish in time; stopping them")
		srv.Stop()
	}
	obs.shutdown()
	if ep.Network == "unix" {
		os.Remove(ep.Address)
	}
	log.Info("stopped")
	return nil
}
