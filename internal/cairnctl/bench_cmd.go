package cairnctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/cairn-csi/cairn/internal/cairnctl/bench"
	"github.com/cairn-csi/cairn/internal/endpoint"
)

func (c *cli) benchCmd() *cobra.Command {
	var (
		cfg            bench.Config
		capacity, data = bytesFlag{n: 64 << 20, set: true}, bytesFlag{n: 64 << 20, set: true}
		params, secs   mapFlag
		jsonOut        string
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Benchmark the driver: create throughput and latency, lifecycle, snapshot/restore/clone, memory",
		Long: `bench measures a CSI driver through its own endpoint:

  create/sequential, delete/sequential   --volumes CreateVolume and DeleteVolume calls, one caller
  create/concurrent, delete/concurrent   the same with --concurrency callers
  lifecycle/<step>, lifecycle/total      --lifecycle-runs full lifecycles: create, controller
                                         publish, stage, publish, unpublish, unstage, controller
                                         unpublish, delete (each step only if the driver
                                         advertises it); needs --work-dir and the node service
  data/write                             --data-size random bytes written into a published volume
  data/snapshot, data/restore, data/clone  a snapshot of that volume (until ready to use), a
                                         volume restored from it and a clone of the volume, each
                                         read back and compared with what was written

The driver's resident memory is read with none of the bench's volumes (after
the throughput phases, so start-up growth is not counted), with half of
--rss-volumes and with all of them, and the slope is reported (--driver-pid,
or the process listening on the Unix socket; root sees all). Phases the driver
cannot do are skipped and listed with the reason; phases left out for want of
--work-dir are also named in a WARNING at the top of the report.

Calls of the data phases are bounded by --data-timeout, not --timeout: a copy
of --data-size takes as long as the driver's disk needs. --drop-caches drops
the page cache (root) before restored and cloned volumes are read back; the
report says which was done.

Everything bench creates is deleted again, in reverse order, even when a call
fails or bench is interrupted (Ctrl-C; a second Ctrl-C abandons the cleanup).`,
		Example: `  cairnctl bench --work-dir /var/tmp/bench
  cairnctl bench --volumes 200 --concurrency 16 --data-size 256Mi --work-dir /var/tmp/bench --json-out bench.json`,
		Args: cobra.NoArgs,
	}
	f := cmd.Flags()
	f.IntVar(&cfg.Volumes, "volumes", 100, "volumes created (and deleted) in each throughput phase")
	f.IntVar(&cfg.Concurrency, "concurrency", 8, "concurrent callers in the concurrent phases (1 skips them)")
	f.IntVar(&cfg.LifecycleRuns, "lifecycle-runs", 10, "full lifecycles to time (0 skips them)")
	f.Var(&capacity, "capacity", "size of each volume (0: the driver's default)")
	f.Var(&data, "data-size", "data written before snapshot, restore and clone (0 skips those phases)")
	f.Var(&params, "param", "a CreateVolume parameter key=value; repeatable")
	f.Var(&secs, "secret", "a secret key=value for every call that takes secrets; repeatable")
	capFlags := addCapabilityFlags(cmd)
	f.StringVar(&cfg.WorkDir, "work-dir", "", "directory for staging and target paths (lifecycle and data phases)")
	f.StringVar(&cfg.Prefix, "prefix", "", "start of every volume and snapshot name (default cairnctl-bench-<random>)")
	f.IntVar(&cfg.DriverPID, "driver-pid", 0, "the driver's process ID, for its memory (default: the process listening on the Unix socket)")
	f.StringVar(&jsonOut, "json-out", "", "also write the result as JSON to this file")
	f.IntVar(&cfg.RSSVolumes, "rss-volumes", 1000, "volumes that exist when the driver's memory is read (also read at half, for the slope); 0 skips it")
	f.DurationVar(&cfg.DataTimeout, "data-timeout", 10*time.Minute, "timeout of each call of the data phases (snapshot, restore and clone of --data-size)")
	f.BoolVar(&cfg.DropCaches, "drop-caches", false, "drop the page cache before reading restored and cloned volumes back (root)")
	cmd.MarkFlagDirname("work-dir")
	cmd.MarkFlagFilename("json-out", "json")
	cmd.RunE = c.action(func(ctx context.Context, cl *clients, _ *cobra.Command, _ []string) error {
		vc, err := capFlags.capability()
		if err != nil {
			return err
		}
		if cfg.Volumes <= 0 || cfg.Concurrency <= 0 || cfg.LifecycleRuns < 0 || cfg.DriverPID < 0 || cfg.RSSVolumes < 0 || cfg.DataTimeout <= 0 {
			return usagef("--volumes, --concurrency and --data-timeout must be positive; --lifecycle-runs, --rss-volumes and --driver-pid must not be negative")
		}
		if capFlags.accessMode.val != "single-node-writer" {
			return usagef("bench uses --access-mode single-node-writer")
		}
		cfg.CapacityBytes, cfg.DataBytes = capacity.n, data.n
		cfg.Parameters, cfg.Secrets = params.m, secs.m
		cfg.AccessType, cfg.FsType = capFlags.accessType.val, vc.GetMount().GetFsType()
		cfg.MountFlags = vc.GetMount().GetMountFlags()
		cfg.CallTimeout = c.conn.Timeout
		cfg.SocketPath = c.socketPath()
		if c.stdoutTTY {
			cfg.Progress = c.stderr
		}
		res, runErr := bench.Run(ctx, bench.Clients{Identity: cl.Identity, Controller: cl.Controller, Node: cl.Node}, cfg)
		if res == nil {
			return fmt.Errorf("bench: %w", runErr)
		}
		var outErr error
		if jsonOut != "" {
			outErr = writeJSON(jsonOut, res)
		}
		if c.output.val == formatTable {
			outErr = errors.Join(outErr, bench.WriteTable(c.stdout, res))
		} else {
			outErr = errors.Join(outErr, c.printer().print(res, nil))
		}
		switch {
		case runErr != nil:
			return fmt.Errorf("bench stopped early: %w", runErr)
		case outErr != nil:
			return outErr
		case !res.OK():
			return errors.New("bench: some calls failed or something was left behind; see the table")
		}
		return nil
	})
	return cmd
}

// socketPath is the Unix socket of the process that serves the
// controller, whose memory bench reports; "" for TCP.
func (c *cli) socketPath() string {
	raw := c.controllerEndpoint
	if raw == "" {
		raw = c.endpoint
	}
	ep, err := endpoint.Parse(raw)
	if err != nil || ep.Network != "unix" {
		return ""
	}
	return ep.Address
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("--json-out: %w", err)
	}
	return nil
}
