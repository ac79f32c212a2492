package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

const (
	driverName  = "cairn.csi.dev"
	topologyKey = "topology.cairn.csi.dev/node"
	// socket is cairn's CSI endpoint, where kubelet expects a driver named
	// driverName. kubelet's root directory is the same directory inside
	// the node namespace and on the host, so the test dials it directly.
	socket = "/var/lib/kubelet/plugins/" + driverName + "/csi.sock"
)

// nodeCairn is a cairn process inside the node namespace of the local
// cluster, started through node-exec.sh as the k8s-local README shows.
type nodeCairn struct {
	nodeExec  string // path of node-exec.sh
	bin       string
	args      []string
	dataDir   string
	logPath   string
	healthURL string

	cmd  *exec.Cmd     // bash node-exec.sh … (nsenter, which waits for cairn)
	done chan struct{} // closed when cmd has exited
	pid  int           // cairn's PID as the host sees it
	conn *grpc.ClientConn
}

func newNodeCairn(nodeExec, bin, nodeID, dataDir string, pools []string) (*nodeCairn, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	metrics := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	args := []string{
		"--endpoint", "unix://" + socket,
		"--kubelet-registration-path", socket,
		"--node-id", nodeID,
		"--data-dir", dataDir,
		"--metrics-address", metrics,
		"--log-level", "debug",
		"--shutdown-timeout", "10s",
	}
	for _, p := range pools {
		args = append(args, "--pool", p)
	}
	return &nodeCairn{
		nodeExec:  nodeExec,
		bin:       bin,
		args:      args,
		dataDir:   dataDir,
		logPath:   filepath.Join(filepath.Dir(dataDir), filepath.Base(dataDir)+".log"),
		healthURL: "http://" + metrics + "/healthz",
	}, nil
}

// freePort asks the kernel for a free TCP port on 127.0.0.1. The node
// namespace shares the host's network, so cairn can listen on it there.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// start runs cairn and waits until it answers Probe with ready on its
// socket and /healthz says 200. The log is appended to logPath.
func (c *nodeCairn) start(ctx context.Context) error {
	lf, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	args := append([]string{c.nodeExec, "setsid", c.bin}, c.args...)
	cmd := exec.Command("bash", args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	// Its own process group, so that a ^C of go test does not reach it
	// before the test's cleanup does (setsid moves cairn out of it anyway).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return err
	}
	c.cmd, c.done = cmd, make(chan struct{})
	go func(done chan struct{}) { cmd.Wait(); lf.Close(); close(done) }(c.done)

	// nsenter forks into the namespace and setsid execs cairn: find it by
	// its command line, which names this run's data directory.
	err = waitFor(ctx, 20*time.Second, "cairn process to appear", func(context.Context) (bool, error) {
		if c.exited() {
			return false, stop(fmt.Errorf("node-exec.sh exited: %v", cmd.ProcessState))
		}
		pid, err := findProcess(c.bin, c.dataDir)
		c.pid = pid
		return pid > 0, err
	})
	if err != nil {
		return err
	}
	if c.conn != nil {
		c.conn.Close()
	}
	// A new connection per process: a reused one would wait out gRPC's
	// reconnect backoff after a restart.
	c.conn, err = grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	return waitFor(ctx, 60*time.Second, "cairn ready (Probe on "+socket+" and "+c.healthURL+")", func(ctx context.Context) (bool, error) {
		if c.exited() {
			return false, stop(fmt.Errorf("cairn exited: %v", c.cmd.ProcessState))
		}
		pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		resp, err := csi.NewIdentityClient(c.conn).Probe(pctx, &csi.ProbeRequest{})
		if err != nil {
			return false, fmt.Errorf("probe: %w", err)
		}
		if !resp.GetReady().GetValue() {
			return false, fmt.Errorf("probe: not ready")
		}
		req, _ := http.NewRequestWithContext(pctx, http.MethodGet, c.healthURL, nil)
		hr, err := http.DefaultClient.Do(req)
		if err != nil {
			return false, err
		}
		hr.Body.Close()
		if hr.StatusCode != http.StatusOK {
			return false, fmt.Errorf("/healthz: %s", hr.Status)
		}
		return true, nil
	})
}

// findProcess returns the host PID of the process running bin whose
// command line contains marker, or 0.
func findProcess(bin, marker string) (int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		argv := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if argv[0] == bin && slices.Contains(argv, marker) {
			return pid, nil
		}
	}
	return 0, nil
}

func (c *nodeCairn) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// running reports whether cairn was started and has not exited.
func (c *nodeCairn) running() bool { return c.cmd != nil && !c.exited() }

// signal sends sig to cairn and waits up to timeout for it to exit.
func (c *nodeCairn) signal(sig syscall.Signal, timeout time.Duration) error {
	if !c.running() {
		return nil
	}
	if err := syscall.Kill(c.pid, sig); err != nil {
		return fmt.Errorf("kill -%d %d: %w", sig, c.pid, err)
	}
	select {
	case <-c.done:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("cairn (pid %d) still running %v after signal %v", c.pid, timeout, sig)
	}
}

// stop ends cairn gracefully (SIGTERM: it deregisters from kubelet and
// removes its sockets), or with SIGKILL when that takes too long.
func (c *nodeCairn) stop() error {
	err := c.signal(syscall.SIGTERM, 30*time.Second)
	if err != nil {
		if kerr := c.signal(syscall.SIGKILL, 10*time.Second); kerr != nil {
			return fmt.Errorf("%v; then %v", err, kerr)
		}
	}
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
	return err
}

func (c *nodeCairn) controller() csi.ControllerClient { return csi.NewControllerClient(c.conn) }

// log returns cairn's log so far (all runs).
func (c *nodeCairn) log() string {
	b, _ := os.ReadFile(c.logPath)
	return string(b)
}

// logTail is the end of the log, for failure messages.
func (c *nodeCairn) logTail(n int) string {
	return fmt.Sprintf("cairn log (%s), last %d lines:\n%s", c.logPath, n, tail(c.log(), n))
}

// poolTypes returns the pool types bin knows, from its --help text
// ("... (types: dir, image); repeatable ...").
func poolTypes(ctx context.Context, bin string) ([]string, error) {
	out, err := exec.CommandContext(ctx, bin, "--help").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%s --help: %v\n%s", bin, err, out)
	}
	m := regexp.MustCompile(`\(types: ([a-z, ]+)\)`).FindSubmatch(out)
	if m == nil {
		return nil, fmt.Errorf("%s --help names no pool types:\n%s", bin, out)
	}
	return strings.Split(strings.ReplaceAll(string(m[1]), " ", ""), ","), nil
}
