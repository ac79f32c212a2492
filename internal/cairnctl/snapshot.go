package cairnctl

import (
	"context"
	"fmt"
	"io"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
)

func (c *cli) snapshotCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "snapshot",
		Args:    cobra.ArbitraryArgs,
		RunE:    groupRunE,
		Aliases: []string{"snapshots", "snap"},
		Short:   "Create, inspect and delete snapshots",
	}
	cmd.AddCommand(c.snapshotCreateCmd(), c.snapshotDeleteCmd(), c.snapshotListCmd(), c.snapshotGetCmd())
	return cmd
}

func (c *cli) snapshotCreateCmd() *cobra.Command {
	var (
		source       string
		params, secs mapFlag
	)
	cmd := &cobra.Command{
		Use:     "create NAME --source-volume ID",
		Short:   "Snapshot a volume (CreateSnapshot)",
		Example: `  cairnctl snapshot create nightly-1 --source-volume vol-0123456789abcdef`,
		Args:    cobra.ExactArgs(1),
	}
	cmd.Flags().StringVar(&source, "source-volume", "", "the volume to snapshot")
	cmd.Flags().Var(&params, "param", "a parameter (VolumeSnapshotClass parameter) key=value; repeatable")
	cmd.Flags().Var(&secs, "secret", "a secret key=value for the call; repeatable")
	cmd.MarkFlagRequired("source-volume")
	cmd.RegisterFlagCompletionFunc("source-volume", c.completeVolumes)
	cmd.RunE = c.action(func(ctx context.Context, cl *clients, _ *cobra.Command, args []string) error {
		resp, err := call(ctx, c, cl.Controller.CreateSnapshot, &csi.CreateSnapshotRequest{
			Name: args[0], SourceVolumeId: source, Parameters: params.m, Secrets: secs.m})
		if err != nil {
			return err
		}
		return c.printSnapshots(newSnapshotView(resp.GetSnapshot()))
	})
	return cmd
}

// printSnapshots prints one snapshot as an object, several as a list.
func (c *cli) printSnapshots(views ...snapshotView) error {
	var v any = views
	if len(views) == 1 {
		v = views[0]
	}
	return c.printer().print(v, func(w io.Writer) {
		row(w, snapshotHeader()...)
		for _, s := range views {
			row(w, s.cells()...)
		}
	})
}

func (c *cli) snapshotDeleteCmd() *cobra.Command {
	var secs mapFlag
	cmd := &cobra.Command{
		Use:               "delete ID...",
		Short:             "Delete snapshots (DeleteSnapshot); deleting a missing snapshot succeeds",
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: c.completeSnapshots,
	}
	cmd.Flags().Var(&secs, "secret", "a secret key=value for the call; repeatable")
	cmd.RunE = c.action(func(ctx context.Context, cl *clients, _ *cobra.Command, args []string) error {
		var done []actionView
		for _, id := range args {
			if _, err := call(ctx, c, cl.Controller.DeleteSnapshot, &csi.DeleteSnapshotRequest{SnapshotId: id, Secrets: secs.m}); err != nil {
				c.printActions(done)
				return fmt.Errorf("snapshot %s: %w", id, err)
			}
			done = append(done, actionView{Action: "deleted", SnapshotID: id})
		}
		return c.printActions(done)
	})
	return cmd
}

// listSnapshots fetches every page of ListSnapshots for req.
func (c *cli) listSnapshots(ctx context.Context, cl *clients, req *csi.ListSnapshotsRequest) ([]*csi.ListSnapshotsResponse_Entry, error) {
	var out []*csi.ListSnapshotsResponse_Entry
	seen := map[string]bool{}
	for {
		resp, err := call(ctx, c, cl.Controller.ListSnapshots, req)
		if err != nil {
			return out, err
		}
		out = append(out, resp.GetEntries()...)
		next := resp.GetNextToken()
		if next == "" {
			return out, nil
		}
		if seen[next] {
			return out, fmt.Errorf("ListSnapshots returned next_token %q twice", next)
		}
		seen[next] = true
		req.StartingToken = next
	}
}

func (c *cli) snapshotListCmd() *cobra.Command {
	var (
		source, id string
		pageSize   int32
		secs       mapFlag
	)
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List snapshots (ListSnapshots), following every page",
		Args:    cobra.NoArgs,
	}
	cmd.Flags().StringVar(&source, "source-volume", "", "only snapshots of this volume")
	cmd.Flags().StringVar(&id, "snapshot-id", "", "only this snapshot")
	cmd.Flags().Int32Var(&pageSize, "max-entries", defaultPageSize, "page size asked of the driver (0: the driver's choice, which may be one reply too big for gRPC); every page is fetched")
	cmd.Flags().Var(&secs, "secret", "a secret key=value for the call; repeatable")
	cmd.RegisterFlagCompletionFunc("source-volume", c.completeVolumes)
	cmd.RunE = c.action(func(ctx context.Context, cl *clients, _ *cobra.Command, _ []string) error {
		if pageSize < 0 {
			return usagef("--max-entries must not be negative")
		}
		entries, err := c.listSnapshots(ctx, cl, &csi.ListSnapshotsRequest{
			MaxEntries: pageSize, SourceVolumeId: source, SnapshotId: id, Secrets: secs.m})
		if err != nil {
			return err
		}
		views := make([]snapshotView, 0, len(entries))
		for _, e := range entries {
			views = append(views, newSnapshotView(e.GetSnapshot()))
		}
		return c.printer().print(views, func(w io.Writer) {
			row(w, snapshotHeader()...)
			for _, s := range views {
				row(w, s.cells()...)
			}
		})
	})
	return cmd
}

func (c *cli) snapshotGetCmd() *cobra.Command {
	return &cobra.Command{
		Use:               "get ID",
		Short:             "Show one snapshot (GetSnapshot, or ListSnapshots when the driver lacks GET_SNAPSHOT)",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: c.completeSnapshots,
		RunE: c.action(func(ctx context.Context, cl *clients, _ *cobra.Command, args []string) error {
			resp, err := call(ctx, c, cl.Controller.GetSnapshot, &csi.GetSnapshotRequest{SnapshotId: args[0]})
			if err == nil {
				return c.printSnapshots(newSnapshotView(resp.GetSnapshot()))
			}
			if !isCode(err, codes.Unimplemented) {
				return err
			}
			entries, err := c.listSnapshots(ctx, cl, &csi.ListSnapshotsRequest{SnapshotId: args[0]})
			if err != nil {
				return err
			}
			for _, e := range entries {
				if e.GetSnapshot().GetSnapshotId() == args[0] {
					return c.printSnapshots(newSnapshotView(e.GetSnapshot()))
				}
			}
			return rpcError{code: codes.NotFound, msg: fmt.Sprintf("snapshot %q is not in ListSnapshots", args[0])}
		}),
	}
}
