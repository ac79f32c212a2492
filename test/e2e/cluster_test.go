package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/discovery"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	storagev1client "k8s.io/client-go/kubernetes/typed/storage/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// cluster is the Kubernetes cluster the tests run against.
type cluster struct {
	kubeconfig string // the KUBECONFIG value, for the commands the tests run
	cfg        *rest.Config
	core       corev1client.CoreV1Interface
	storage    storagev1client.StorageV1Interface
	disc       discovery.DiscoveryInterface
	version    string // the API server's gitVersion, e.g. v1.34.4
	kubectl    string // path of kubectl
}

var (
	clusterOnce sync.Once
	theCluster  *cluster
	clusterSkip string // why there is no cluster
	clusterErr  error  // a cluster is there, but something the tests need is not
)

// needCluster returns the cluster from KUBECONFIG, or skips the test with
// the reason when KUBECONFIG is unset or its API server does not answer.
func needCluster(t *testing.T) *cluster {
	t.Helper()
	clusterOnce.Do(func() { theCluster, clusterSkip, clusterErr = connect() })
	if clusterSkip != "" {
		t.Skip(clusterSkip)
	}
	if clusterErr != nil {
		t.Fatal(clusterErr)
	}
	return theCluster
}

func connect() (*cluster, string, error) {
	kc := os.Getenv("KUBECONFIG")
	if kc == "" {
		return nil, "KUBECONFIG is unset: these tests need a Kubernetes cluster (bash test/e2e/run.sh starts a local one and runs them)", nil
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules() // reads KUBECONFIG, a list of files
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Sprintf("KUBECONFIG=%s is not usable: %v", kc, err), nil
	}
	cfg.Timeout = 30 * time.Second
	cfg.QPS, cfg.Burst = 50, 100

	probe := rest.CopyConfig(cfg)
	probe.Timeout = 10 * time.Second
	pd, err := discovery.NewDiscoveryClientForConfig(probe)
	if err != nil {
		return nil, fmt.Sprintf("KUBECONFIG=%s: %v", kc, err), nil
	}
	v, err := pd.ServerVersion()
	if err != nil {
		return nil, fmt.Sprintf("API server of KUBECONFIG=%s (%s) is unreachable: %v", kc, cfg.Host, err), nil
	}

	c := &cluster{kubeconfig: kc, cfg: cfg, version: v.GitVersion}
	if c.core, err = corev1client.NewForConfig(cfg); err != nil {
		return nil, "", err
	}
	if c.storage, err = storagev1client.NewForConfig(cfg); err != nil {
		return nil, "", err
	}
	if c.disc, err = discovery.NewDiscoveryClientForConfig(cfg); err != nil {
		return nil, "", err
	}
	c.kubectl, err = exec.LookPath("kubectl")
	if err != nil {
		alt := filepath.Join(k8sLocalRoot(), "bin", "kubectl")
		if _, serr := os.Stat(alt); serr != nil {
			return nil, "", fmt.Errorf("the cluster at %s answers, but kubectl is neither on PATH nor at %s: the tests use it for exec, describe and server-side dry runs", cfg.Host, alt)
		}
		c.kubectl = alt
	}
	return c, "", nil
}

// k8sLocalRoot is the cache and state directory of ../shared/k8s-local.
func k8sLocalRoot() string {
	if r := os.Getenv("K8S_LOCAL_ROOT"); r != "" {
		return r
	}
	return "/var/cache/k8s-local"
}

// k8sLocalDir finds the scripts of the local cluster: $K8S_LOCAL_DIR, else
// ../shared/k8s-local next to the repository. It skips the test when they
// are not there.
func k8sLocalDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("K8S_LOCAL_DIR")
	if dir == "" {
		// go test runs in test/e2e; the repository's parent holds shared/.
		dir = filepath.Join("..", "..", "..", "shared", "k8s-local")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(abs, "node-exec.sh")); err != nil {
		t.Skipf("no k8s-local scripts at %s (set K8S_LOCAL_DIR): this test runs cairn inside the node namespace with node-exec.sh", abs)
	}
	return abs
}

// kubectl runs kubectl with ctx and returns its stdout; the error carries
// stderr.
func (c *cluster) kubectlRun(ctx context.Context, stdin []byte, args ...string) (string, error) {
	return runCmd(ctx, stdin, []string{"KUBECONFIG=" + c.kubeconfig}, c.kubectl, args...)
}

// runCmd runs name with args and returns stdout. On failure the error has
// the command, its exit status and stderr.
func runCmd(ctx context.Context, stdin []byte, env []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w\nstdout: %s\nstderr: %s", filepath.Base(name), strings.Join(args, " "), err,
			tail(stdout.String(), 40), tail(stderr.String(), 40))
	}
	return stdout.String(), nil
}

// errTimeout marks a wait that ran out of time.
var errTimeout = errors.New("timed out")

// waitFor polls cond every interval until it returns true, returns an
// error, or timeout passes. The timeout error includes the last reason
// cond gave (its error return while it also returned false is a reason,
// not a failure: use stop() to fail at once).
func waitFor(ctx context.Context, timeout time.Duration, what string, cond func(ctx context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		ok, err := cond(ctx)
		var s stopError
		if errors.As(err, &s) {
			return fmt.Errorf("%s: %w", what, s.err)
		}
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("%s: %w after %v; last: %v", what, errTimeout, timeout, last)
			}
			return fmt.Errorf("%s: %w after %v", what, errTimeout, timeout)
		case <-time.After(time.Second):
		}
	}
}

// stopError ends a waitFor at once.
type stopError struct{ err error }

func (s stopError) Error() string { return s.err.Error() }

func stop(err error) error { return stopError{err} }

// tail returns the last n lines of s.
func tail(s string, n int) string {
	s = strings.TrimRight(s, "\n")
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("[... %d lines before]", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}
