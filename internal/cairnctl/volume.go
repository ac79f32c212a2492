package cairnctl

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
)

func (c *cli) volumeCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "volume",
		Args:    cobra.ArbitraryArgs,
		RunE:    groupRunE,
		Aliases: []string{"volumes", "vol"},
		Short:   "Create, inspect, stage, publish, expand and delete volumes",
	}
	cmd.AddCommand(
		c.volumeCreateCmd(), c.volumeDeleteCmd(), c.volumeListCmd(), c.volumeGetCmd(),
		c.volumeExpandCmd(), c.volumeStatsCmd(),
		c.volumeStageCmd(), c.volumeUnstageCmd(), c.volumePublishCmd(), c.volumeUnpublishCmd(),
	)
	return cmd
}

func (c *cli) volumeCreateCmd() *cobra.Command {
	var (
		capacity, limit      bytesFlag
		params, mutable, sec mapFlag
		srcSnap, srcVol      string
		requisite, preferred topologyFlag
	)
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a volume (CreateVolume)",
		Example: `  cairnctl volume create data-1 --capacity 10Gi
  cairnctl volume create restored --source-snapshot snap-0123456789abcdef --capacity 10Gi
  cairnctl volume create raw --access-type block --capacity 1Gi --param pool=images`,
		Args: cobra.ExactArgs(1),
	}
	capFlags := addCapabilityFlags(cmd)
	f := cmd.Flags()
	f.Var(&capacity, "capacity", "required bytes, e.g. 10Gi (driver default when absent)")
	f.Var(&limit, "limit", "limit bytes, e.g. 20Gi (no limit when absent)")
	f.Var(&params, "param", "a parameter (StorageClass parameter) key=value; repeatable")
	f.Var(&mutable, "mutable-param", "a mutable parameter key=value; repeatable")
	f.Var(&sec, "secret", "a secret key=value for the call; repeatable")
	f.StringVar(&srcSnap, "source-snapshot", "", "restore from this snapshot ID")
	f.StringVar(&srcVol, "source-volume", "", "clone this volume ID")
	f.Var(&requisite, "requisite-topology", "a topology the volume must be accessible from, k=v[,k=v]; repeatable")
	f.Var(&preferred, "preferred-topology", "a preferred topology, k=v[,k=v]; repeatable, most preferred first")
	cmd.MarkFlagsMutuallyExclusive("source-snapshot", "source-volume")
	cmd.RegisterFlagCompletionFunc("source-snapshot", c.completeSnapshots)
	cmd.RegisterFlagCompletionFunc("source-volume", c.completeVolumes)
	cmd.RunE = c.action(func(ctx context.Context, cl *clients, _ *cobra.Command, args []string) error {
		vc, err := capFlags.capability()
		if err != nil {
			return err
		}
		req := &csi.CreateVolumeRequest{
			Name:               args[0],
			VolumeCapabilities: []*csi.VolumeCapability{vc},
			Parameters:         params.m,
			MutableParameters:  mutable.m,
			Secrets:            sec.m,
		}
		if capacity.set || limit.set {
			req.CapacityRange = &csi.CapacityRange{RequiredBytes: capacity.n, LimitBytes: limit.n}
		}
		switch {
		case srcSnap != "":
			req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
				Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: srcSnap}}}
		case srcVol != "":
			req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
				Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: srcVol}}}
		}
		if len(requisite.ts) > 0 || len(preferred.ts) > 0 {
			req.AccessibilityRequirements = &csi.TopologyRequirement{Requisite: requisite.topologies(), Preferred: preferred.topologies()}
		}
		resp, err := call(ctx, c, cl.Controller.CreateVolume, req)
		if err != nil {
			return err
		}
		return c.printVolume(newVolumeView(resp.GetVolume(), nil))
	})
	return cmd
}

func (c *cli) printVolume(v volumeView) error {
	return c.printer().print(v, func(w io.Writer) { kvRows(w, v.details()...) })
}

func (c *cli) volumeDeleteCmd() *cobra.Command {
	var sec mapFlag
	cmd := &cobra.Command{
		Use:               "delete ID...",
		Short:             "Delete volumes (DeleteVolume); deleting a missing volume succeeds",
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: c.completeVolumes,
	}
	cmd.Flags().Var(&sec, "secret", "a secret key=value for the call; repeatable")
	cmd.RunE = c.action(func(ctx context.Context, cl *clients, _ *cobra.Command, args []string) error {
		var done []actionView
		for _, id := range args {
			if _, err := call(ctx, c, cl.Controller.DeleteVolume, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: sec.m}); err != nil {
				c.printActions(done)
				return fmt.Errorf("volume %s: %w", id, err)
			}
			done = append(done, actionView{Action: "deleted", VolumeID: id})
		}
		return c.printActions(done)
	})
	return cmd
}

// printActions confirms calls that return nothing: one line each in a
// table, a list of objects in JSON and YAML.
func (c *cli) printActions(as []actionView) error {
	if len(as) == 0 {
		return nil
	}
	var v any = as
	if len(as) == 1 {
		v = as[0]
	}
	return c.printer().print(v, func(w io.Writer) {
		for _, a := range as {
			line := "volume " + a.VolumeID
			if a.SnapshotID != "" {
				line = "snapshot " + a.SnapshotID
			}
			line += " " + a.Action
			switch {
			case a.StagingTargetPath != "" && a.TargetPath == "":
				line += " at " + a.StagingTargetPath
			case a.TargetPath != "":
				line += " at " + a.TargetPath
			}
			fmt.Fprintln(w, line)
		}
	})
}

// defaultPageSize is the page size the list commands ask for. A driver
// asked for everything (max_entries 0) may answer 50,000 volumes in one
// reply larger than gRPC accepts; pages of 500 are a few hundred KiB even
// with long volume contexts, and cost one round trip per 500 volumes.
const defaultPageSize = 500

// listVolumes fetches every page of ListVolumes.
func (c *cli) listVolumes(ctx context.Context, cl *clients, pageSize int32) ([]*csi.ListVolumesResponse_Entry, error) {
	var out []*csi.ListVolumesResponse_Entry
	seen := map[string]bool{}
	token := ""
	for {
		resp, err := call(ctx, c, cl.Controller.ListVolumes, &csi.ListVolumesRequest{MaxEntries: pageSize, StartingToken: token})
		if err != nil {
			return out, err
		}
		out = append(out, resp.GetEntries()...)
		token = resp.GetNextToken()
		if token == "" {
			return out, nil
		}
		if seen[token] { // a driver bug must not make cairnctl loop forever
			return out, fmt.Errorf("ListVolumes returned next_token %q twice", token)
		}
		seen[token] = true
	}
}

func (c *cli) volumeListCmd() *cobra.Command {
	var pageSize int32
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List volumes (ListVolumes), following every page",
		Args:    cobra.NoArgs,
	}
	cmd.Flags().Int32Var(&pageSize, "max-entries", defaultPageSize, "page size asked of the driver (0: the driver's choice, which may be one reply too big for gRPC); every page is fetched")
	cmd.RunE = c.action(func(ctx context.Context, cl *clients, _ *cobra.Command, _ []string) error {
		if pageSize < 0 {
			return usagef("--max-entries must not be negative")
		}
		entries, err := c.listVolumes(ctx, cl, pageSize)
		if err != nil {
			return err
		}
		views := make([]volumeView, 0, len(entries))
		for _, e := range entries {
			views = append(views, newVolumeView(e.GetVolume(), e.GetStatus().GetPublishedNodeIds()))
		}
		return c.printer().print(views, func(w io.Writer) {
			row(w, volumeHeader()...)
			for _, v := range views {
				row(w, v.cells()...)
			}
		})
	})
	return cmd
}

func (c *cli) volumeGetCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "get ID",
		Short: "Show one volume (ControllerGetVolume, or ListVolumes when the driver lacks GET_VOLUME)",
		Args:  cobra.ExactArgs(1),
		RunE: c.action(func(ctx context.Context, cl *clients, _ *cobra.Command, args []string) error {
			resp, err := call(ctx, c, cl.Controller.ControllerGetVolume, &csi.ControllerGetVolumeRequest{VolumeId: args[0]})
			if err == nil {
				return c.printVolume(newVolumeView(resp.GetVolume(), resp.GetStatus().GetPublishedNodeIds()))
			}
			if !isCode(err, codes.Unimplemented) {
				return err
			}
			entries, err := c.listVolumes(ctx, cl, 0)
			if err != nil {
				return err
			}
			for _, e := range entries {
				if e.GetVolume().GetVolumeId() == args[0] {
					return c.printVolume(newVolumeView(e.GetVolume(), e.GetStatus().GetPublishedNodeIds()))
				}
			}
			return rpcError{code: codes.NotFound, msg: fmt.Sprintf("volume %q is not in ListVolumes", args[0])}
		}),
		ValidArgsFunction: c.completeVolumes,
	}
}

func (c *cli) volumeExpandCmd() *cobra.Command {
	var (
		capacity, limit      bytesFlag
		sec                  mapFlag
		nodePath, stagingDir string
	)
	cmd := &cobra.Command{
		Use:   "expand ID --capacity SIZE [--node-path PATH]",
		Short: "Grow a volume (ControllerExpandVolume; with --node-path also NodeExpandVolume)",
		Long: `expand calls ControllerExpandVolume when the controller advertises EXPAND_VOLUME.
With --node-path (where the volume is published or staged) it then calls
NodeExpandVolume, as a CO would: when the controller asked for node expansion,
or when the controller does not expand at all.`,
		Example:           `  cairnctl volume expand vol-0123456789abcdef --capacity 20Gi --node-path /var/lib/kubelet/pods/.../mount`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: c.completeVolumes,
	}
	capFlags := addCapabilityFlags(cmd)
	f := cmd.Flags()
	f.Var(&capacity, "capacity", "new required size, e.g. 20Gi")
	f.Var(&limit, "limit", "limit bytes (no limit when absent)")
	f.Var(&sec, "secret", "a secret key=value for the calls; repeatable")
	f.StringVar(&nodePath, "node-path", "", "volume_path for NodeExpandVolume; without it only the controller expands")
	f.StringVar(&stagingDir, "staging-path", "", "staging_target_path for NodeExpandVolume")
	cmd.MarkFlagRequired("capacity")
	cmd.RunE = c.action(func(ctx context.Context, cl *clients, cmd *cobra.Command, args []string) error {
		var vc *csi.VolumeCapability
		if flagChanged(cmd.Flags(), "access-type", "access-mode", "fs-type", "mount-flag", "volume-mount-group") {
			var err error
			if vc, err = capFlags.capability(); err != nil {
				return err
			}
		}
		rng := &csi.CapacityRange{RequiredBytes: capacity.n, LimitBytes: limit.n}
		v := expandView{VolumeID: args[0]}
		ctlCaps, err := call(ctx, c, cl.Controller.ControllerGetCapabilities, &csi.ControllerGetCapabilitiesRequest{})
		if err != nil && !isCode(err, codes.Unimplemented) {
			return err
		}
		if hasControllerCap(ctlCaps.GetCapabilities(), csi.ControllerServiceCapability_RPC_EXPAND_VOLUME) {
			resp, err := call(ctx, c, cl.Controller.ControllerExpandVolume, &csi.ControllerExpandVolumeRequest{
				VolumeId: args[0], CapacityRange: rng, Secrets: sec.m, VolumeCapability: vc})
			if err != nil {
				return err
			}
			v.Controller = &controllerExpandView{CapacityBytes: resp.GetCapacityBytes(), NodeExpansionRequired: resp.GetNodeExpansionRequired()}
		}
		switch {
		case nodePath == "":
			v.NodeSkipped = "no --node-path"
		case v.Controller != nil && !v.Controller.NodeExpansionRequired:
			v.NodeSkipped = "the controller says node expansion is not required"
		default:
			nodeCaps, err := call(ctx, c, cl.Node.NodeGetCapabilities, &csi.NodeGetCapabilitiesRequest{})
			if err != nil && !isCode(err, codes.Unimplemented) {
				return err
			}
			if !hasNodeCap(nodeCaps.GetCapabilities(), csi.NodeServiceCapability_RPC_EXPAND_VOLUME) {
				v.NodeSkipped = "the node does not advertise EXPAND_VOLUME"
				break
			}
			resp, err := call(ctx, c, cl.Node.NodeExpandVolume, &csi.NodeExpandVolumeRequest{
				VolumeId: args[0], VolumePath: nodePath, StagingTargetPath: stagingDir,
				CapacityRange: rng, VolumeCapability: vc, Secrets: sec.m})
			if err != nil {
				return fmt.Errorf("NodeExpandVolume: %w", err)
			}
			v.Node = &nodeExpandView{VolumePath: nodePath, CapacityBytes: resp.GetCapacityBytes()}
		}
		if v.Controller == nil && v.Node == nil {
			return rpcError{code: codes.Unimplemented, msg: "the driver advertises no controller EXPAND_VOLUME, and node expansion was " + v.NodeSkipped}
		}
		return c.printer().print(v, func(w io.Writer) {
			ctl, node := "not advertised (EXPAND_VOLUME)", "skipped: "+v.NodeSkipped
			if v.Controller != nil {
				ctl = fmt.Sprintf("%s (node expansion required: %t)", humanBytes(v.Controller.CapacityBytes), v.Controller.NodeExpansionRequired)
			}
			if v.Node != nil {
				node = humanBytes(v.Node.CapacityBytes) + " at " + v.Node.VolumePath
				if v.Node.CapacityBytes == 0 {
					node = "expanded at " + v.Node.VolumePath
				}
			}
			kvRows(w, [2]string{"VOLUME", v.VolumeID}, [2]string{"CONTROLLER", ctl}, [2]string{"NODE", node})
		})
	})
	return cmd
}

func hasControllerCap(caps []*csi.ControllerServiceCapability, want csi.ControllerServiceCapability_RPC_Type) bool {
	for _, c := range caps {
		if c.GetRpc().GetType() == want {
			return true
		}
	}
	return false
}

func hasNodeCap(caps []*csi.NodeServiceCapability, want csi.NodeServiceCapability_RPC_Type) bool {
	for _, c := range caps {
		if c.GetRpc().GetType() == want {
			return true
		}
	}
	return false
}

func (c *cli) volumeStatsCmd() *cobra.Command {
	var path, staging string
	cmd := &cobra.Command{
		Use:               "stats ID --path PATH",
		Short:             "Show a published or staged volume's usage (NodeGetVolumeStats)",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: c.completeVolumes,
	}
	cmd.Flags().StringVar(&path, "path", "", "volume_path: where the volume is published or staged")
	cmd.Flags().StringVar(&staging, "staging-path", "", "staging_target_path, if the volume is staged")
	cmd.MarkFlagRequired("path")
	cmd.RunE = c.action(func(ctx context.Context, cl *clients, _ *cobra.Command, args []string) error {
		resp, err := call(ctx, c, cl.Node.NodeGetVolumeStats, &csi.NodeGetVolumeStatsRequest{
			VolumeId: args[0], VolumePath: path, StagingTargetPath: staging})
		if err != nil {
			return err
		}
		v := statsView{VolumeID: args[0], VolumePath: path, Usage: []usageView{}}
		for _, u := range resp.GetUsage() {
			v.Usage = append(v.Usage, usageView{Unit: u.GetUnit().String(), Total: u.GetTotal(), Used: u.GetUsed(), Available: u.GetAvailable()})
		}
		return c.printer().print(v, func(w io.Writer) {
			row(w, "UNIT", "TOTAL", "USED", "AVAILABLE")
			for _, u := range v.Usage {
				f := itoa
				if u.Unit == csi.VolumeUsage_BYTES.String() {
					f = humanBytes
				}
				row(w, u.Unit, f(u.Total), f(u.Used), f(u.Available))
			}
		})
	})
	return cmd
}

// completeVolumes completes volume IDs from ListVolumes. Completion must
// be quick and never fail loudly, so it gives up after a few seconds and
// offers nothing.
func (c *cli) completeVolumes(cmd *cobra.Command, _ []string, _ string) ([]string, cobra.ShellCompDirective) {
	var ids []string
	c.withCompletionClients(cmd, func(ctx context.Context, cl *clients) {
		entries, _ := c.listVolumes(ctx, cl, 0)
		for _, e := range entries {
			ids = append(ids, e.GetVolume().GetVolumeId())
		}
	})
	return ids, cobra.ShellCompDirectiveNoFileComp
}

func (c *cli) completeSnapshots(cmd *cobra.Command, _ []string, _ string) ([]string, cobra.ShellCompDirective) {
	var ids []string
	c.withCompletionClients(cmd, func(ctx context.Context, cl *clients) {
		snaps, _ := c.listSnapshots(ctx, cl, &csi.ListSnapshotsRequest{})
		for _, s := range snaps {
			ids = append(ids, s.GetSnapshot().GetSnapshotId())
		}
	})
	return ids, cobra.ShellCompDirectiveNoFileComp
}

func (c *cli) withCompletionClients(cmd *cobra.Command, fn func(ctx context.Context, cl *clients)) {
	if !cmd.Flags().Changed("endpoint") {
		if env := c.getenv(EndpointEnv); env != "" {
			c.endpoint = env
		}
	}
	o := c.conn
	o.Timeout = min(o.Timeout, 3*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 2*o.Timeout)
	defer cancel()
	cl, err := dial(ctx, c.endpoint, c.controllerEndpoint, o)
	if err != nil {
		return
	}
	defer cl.Close()
	saved := c.conn
	c.conn = o
	defer func() { c.conn = saved }()
	fn(ctx, cl)
}
