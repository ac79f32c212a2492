// Package testdriver owns running the real cairn binary in tests: building
// it once per test binary, starting it on a temporary socket with its log
// captured, waiting until Probe says ready, and stopping it gracefully or
// with SIGKILL. Tests that claim to exercise "the driver" use this, never an
// in-process server, so that flags, start-up reconcile and signals are real.
package testdriver

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// Binary builds cmd/cairn once per test binary (with -race when the tests
// run with it) and returns its path. $CAIRN_BINARY overrides the build.
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("CAIRN_BINARY"); p != "" {
		return p
	}
	buildOnce.Do(func() {
		removeStaleBuilds()
		dir := filepath.Join(os.TempDir(), fmt.Sprintf("cairn-bin-%d", os.Getpid()))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "cairn")
		args := []string{"build", "-o", binPath}
		if raceEnabled {
			args = append(args, "-race")
		}
		args = append(args, "github.com/cairn-csi/cairn/cmd/cairn")
		cmd := exec.Command("go", args...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build cairn: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// removeStaleBuilds removes the build directories of test binaries that
// have exited: a package has no hook to clean up after its last test, so
// each build cleans up after the ones before it.
func removeStaleBuilds() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "cairn-bin-*"))
	for _, d := range dirs {
		pid, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(d), "cairn-bin-"))
		if err != nil {
			continue
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			os.RemoveAll(d)
		}
	}
}

// Process is a running cairn.
type Process struct {
	t        testing.TB
	Bin      string
	Args     []string
	Env      []string
	Socket   string // the Unix socket path
	LogPath  string
	cmd      *exec.Cmd
	logFile  *os.File
	waitDone chan error
}

// Options for Start.
type Options struct {
	DataDir string   // required
	Mode    string   // default all
	Pools   []string // --pool values
	Socket  string   // default <DataDir>/../csi-<mode>.sock
	Extra   []string // more flags
	Env     []string // extra environment (KEY=VALUE)
	NodeID  string   // default "test-node"
	LogPath string   // default next to the socket
	// NoWait skips waiting for readiness (crash tests whose process dies
	// on purpose).
	NoWait bool
}

// Start runs cairn with opts and waits until it is ready. It is stopped
// (SIGKILL) at the end of the test if still running.
func Start(t testing.TB, opts Options) *Process {
	t.Helper()
	if opts.Mode == "" {
		opts.Mode = "all"
	}
	if opts.NodeID == "" {
		opts.NodeID = "test-node"
	}
	if opts.Socket == "" {
		opts.Socket = filepath.Join(filepath.Dir(opts.DataDir), "csi-"+opts.Mode+".sock")
	}
	if opts.LogPath == "" {
		opts.LogPath = strings.TrimSuffix(opts.Socket, ".sock") + ".log"
	}
	args := []string{
		"--endpoint", "unix://" + opts.Socket,
		"--data-dir", opts.DataDir,
		"--mode", opts.Mode,
		"--node-id", opts.NodeID,
		"--log-level", "debug",
		"--shutdown-timeout", "10s",
	}
	for _, p := range opts.Pools {
		args = append(args, "--pool", p)
	}
	args = append(args, opts.Extra...)
	p := &Process{t: t, Bin: Binary(t), Args: args, Env: opts.Env, Socket: opts.Socket, LogPath: opts.LogPath}
	p.start(!opts.NoWait)
	t.Cleanup(func() { p.Kill() })
	return p
}

func (p *Process) start(wait bool) {
	p.t.Helper()
	lf, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		p.t.Fatal(err)
	}
	p.logFile = lf
	cmd := exec.Command(p.Bin, p.Args...)
	cmd.Env = append(os.Environ(), p.Env...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	p.cmd = cmd
	p.waitDone = make(chan error, 1)
	go func() { p.waitDone <- cmd.Wait(); lf.Close() }()
	if wait {
		if err := p.WaitReady(60 * time.Second); err != nil {
			p.t.Fatalf("cairn did not become ready: %v\nlog:\n%s", err, p.Log())
		}
	}
}

// Restart starts the same command again after the process has exited.
func (p *Process) Restart(wait bool) {
	p.t.Helper()
	p.start(wait)
}

// Dial connects to the driver's socket.
func (p *Process) Dial() *grpc.ClientConn {
	p.t.Helper()
	conn, err := grpc.NewClient("unix://"+p.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		p.t.Fatal(err)
	}
	p.t.Cleanup(func() { conn.Close() })
	return conn
}

// WaitReady polls Probe until it reports ready, the process exits, or the
// timeout passes.
func (p *Process) WaitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case err := <-p.waitDone:
			p.waitDone <- err
			return fmt.Errorf("process exited: %v", err)
		default:
		}
		if _, err := os.Stat(p.Socket); err == nil {
			conn, err := grpc.NewClient("unix://"+p.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err == nil {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				resp, perr := csi.NewIdentityClient(conn).Probe(ctx, &csi.ProbeRequest{})
				cancel()
				conn.Close()
				if perr == nil && resp.GetReady().GetValue() {
					return nil
				}
				last = perr
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("timed out after %v (last probe error: %v)", timeout, last)
}

// Kill sends SIGKILL and waits for the process to exit. Safe to call twice.
func (p *Process) Kill() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	p.Wait(30 * time.Second)
}

// Stop sends SIGTERM and waits up to timeout for a graceful exit, which it
// returns.
func (p *Process) Stop(timeout time.Duration) error {
	if p.cmd == nil || p.cmd.Process == nil {
		return nil
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	return p.Wait(timeout)
}

// Wait waits for the process to exit and returns its exit error.
func (p *Process) Wait(timeout time.Duration) error {
	select {
	case err := <-p.waitDone:
		p.waitDone <- err
		return err
	case <-time.After(timeout):
		return fmt.Errorf("process %d did not exit within %v", p.cmd.Process.Pid, timeout)
	}
}

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case err := <-p.waitDone:
		p.waitDone <- err
		return true
	default:
		return false
	}
}

// Log returns everything the process has logged so far.
func (p *Process) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(bytes.ToValidUTF8(b, []byte("?")))
}
