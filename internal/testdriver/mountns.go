package testdriver

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
)

// MainInPrivateMounts is a TestMain that runs the package's tests in a
// private mount namespace of their own, when it can (root and unshare(1)).
//
// Mount namespaces copy the mounts that exist when they are made: a
// container, kubelet or test elsewhere on the machine that unshares while
// a volume of ours is mounted keeps that filesystem, and so its loop
// device, busy for as long as it lives, and an unstage could never detach
// it. In a private namespace our mounts are invisible to such copies, and
// nothing of ours leaks into them either. name labels messages.
func MainInPrivateMounts(m *testing.M, name string) {
	const marker = "CAIRN_TEST_PRIVATE_MOUNTS"
	if os.Geteuid() != 0 || os.Getenv(marker) != "" {
		os.Exit(m.Run())
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		fmt.Fprintln(os.Stderr, name+": unshare(1) not found; running in the host's mount namespace")
		os.Exit(m.Run())
	}
	cmd := exec.Command(unshare, append([]string{"--mount", "--propagation", "private", "--", os.Args[0]}, os.Args[1:]...)...)
	cmd.Env = append(os.Environ(), marker+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	err = cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		os.Exit(0)
	case errors.As(err, &exit) && exit.ExitCode() >= 0:
		os.Exit(exit.ExitCode())
	default:
		fmt.Fprintln(os.Stderr, name+": run in a private mount namespace:", err)
		os.Exit(2)
	}
}
