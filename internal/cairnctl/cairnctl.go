package cairnctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
)

// DefaultEndpoint is Cairn's default socket.
const DefaultEndpoint = "unix:///run/cairn/csi.sock"

// EndpointEnv names the environment variable that replaces the default
// endpoint: the variable CSI sidecars and csc use.
const EndpointEnv = "CSI_ENDPOINT"

// cli is one invocation: its streams, global flags and, once a command
// needs it, the connection.
type cli struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	// stdoutTTY says whether stdout is a terminal (bench's progress bar).
	stdoutTTY bool

	endpoint           string
	controllerEndpoint string
	conn               connOptions
	output             *enumFlag
}

// Main runs cairnctl with the process's arguments, streams and
// environment, and returns the exit code. SIGINT and SIGTERM cancel the
// running command (bench then cleans up); a second signal kills at once.
func Main(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		stop() // the next signal gets the default action: exit now
	}()
	return int(Run(ctx, args, os.Stdout, os.Stderr, os.Getenv, isTerminal(os.Stdout) && isTerminal(os.Stderr)))
}

// Run runs cairnctl with explicit streams and environment; Main is Run
// with the process's. stdoutTTY turns on progress output.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string, stdoutTTY bool) ExitCode {
	c := &cli{stdout: stdout, stderr: stderr, getenv: getenv, stdoutTTY: stdoutTTY}
	root := c.rootCmd()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return ExitOK
	}
	var re runtimeError
	if !errors.As(err, &re) && !errors.As(err, new(usageError)) && !errors.As(err, new(connectError)) {
		// Anything not from a command's own action is cobra refusing the
		// command line: an unknown command, a wrong number of arguments.
		err = usageError{err}
	}
	fmt.Fprintf(stderr, "cairnctl: %v\n", err)
	code := exitCodeOf(err)
	if code == ExitUsage && cmd != nil {
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
	}
	if ctx.Err() != nil && code != ExitUsage {
		return ExitInterrupted
	}
	return code
}

// runtimeError marks an error from a command's action, so that Run does
// not take it for a usage error.
type runtimeError struct{ err error }

func (e runtimeError) Error() string { return e.err.Error() }
func (e runtimeError) Unwrap() error { return e.err }

func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(unknown)"
}

func (c *cli) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "cairnctl",
		Short: "A command-line client for any CSI driver",
		Long: `cairnctl talks to a CSI driver's gRPC endpoint directly: inspect it, create,
stage, publish, expand, snapshot and delete volumes, and benchmark it.
It works with any CSI driver, not only Cairn.

The endpoint is --endpoint, else $` + EndpointEnv + `, else ` + DefaultEndpoint + `.

Exit codes:
` + exitCodeHelp(),
		Version:       version(),
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	pf := root.PersistentFlags()
	pf.StringVar(&c.endpoint, "endpoint", DefaultEndpoint, "CSI endpoint: unix:///path or tcp://host:port")
	pf.StringVar(&c.controllerEndpoint, "controller-endpoint", "", "endpoint of the controller service when it runs apart from the node service (default: --endpoint)")
	pf.StringVar(&c.conn.TLSCert, "tls-cert", "", "client certificate (PEM) for mutual TLS")
	pf.StringVar(&c.conn.TLSKey, "tls-key", "", "client key (PEM) for mutual TLS")
	pf.StringVar(&c.conn.TLSCA, "tls-ca", "", "CA (PEM) that the server's certificate must chain to (default: the system's)")
	pf.BoolVar(&c.conn.Insecure, "insecure", false, "plaintext gRPC on a tcp:// endpoint (tcp:// uses TLS otherwise)")
	pf.DurationVar(&c.conn.Timeout, "timeout", 30*time.Second, "limit for connecting and for each call")
	c.output = newEnum("", formatTable, formats...)
	pf.VarP(c.output, "output", "o", "output format: table, json or yaml")
	root.RegisterFlagCompletionFunc("output", cobra.FixedCompletions(formats, cobra.ShellCompDirectiveNoFileComp))
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		if !cmd.Flags().Changed("endpoint") {
			if env := c.getenv(EndpointEnv); env != "" {
				c.endpoint = env
			}
		}
		if c.conn.Timeout <= 0 {
			return usagef("--timeout must be positive")
		}
		return nil
	}
	root.AddGroup(&cobra.Group{ID: "csi", Title: "CSI commands:"})
	for _, sub := range []*cobra.Command{c.infoCmd(), c.probeCmd(), c.volumeCmd(), c.snapshotCmd(), c.benchCmd()} {
		sub.GroupID = "csi"
		root.AddCommand(sub)
	}
	return root
}

func exitCodeHelp() string {
	var b strings.Builder
	for _, e := range ExitCodes {
		fmt.Fprintf(&b, "  %3d  %s\n", e.Code, e.Meaning)
	}
	return b.String()
}

// action wraps a command's work: it connects, runs fn, and marks its
// errors as the command's own (not usage errors).
func (c *cli) action(fn func(ctx context.Context, cl *clients, cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		cl, err := dial(ctx, c.endpoint, c.controllerEndpoint, c.conn)
		if err != nil {
			return err
		}
		defer cl.Close()
		err = fn(ctx, cl, cmd, args)
		var ue usageError
		if err == nil || errors.As(err, &ue) {
			return err
		}
		return runtimeError{err}
	}
}

func (c *cli) printer() printer { return printer{w: c.stdout, format: c.output.val} }

// call makes one RPC with the --timeout deadline and turns its error into
// an rpcError.
func call[Req, Resp any](ctx context.Context, c *cli, fn func(context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	cctx, cancel := context.WithTimeout(ctx, c.conn.Timeout)
	defer cancel()
	resp, err := fn(cctx, req)
	return resp, fromRPC(err)
}

// flagChanged reports whether any of names was given.
func flagChanged(fs *pflag.FlagSet, names ...string) bool {
	for _, n := range names {
		if fs.Changed(n) {
			return true
		}
	}
	return false
}

// groupRunE makes a command that only groups others refuse an unknown
// subcommand as a usage error; cobra would print help and exit 0, which
// lets a typo in a script pass unnoticed.
func groupRunE(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("unknown command %q for %q", args[0], cmd.CommandPath())
	}
	return cmd.Help()
}
