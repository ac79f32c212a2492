package cairnctl

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/spf13/cobra"
)

// The node commands act as the CO would: they create the staging
// directory and the target's parent (the spec makes those the CO's job)
// and leave the target itself to the driver.

func (c *cli) volumeStageCmd() *cobra.Command {
	var (
		staging              string
		volCtx, pubCtx, secs mapFlag
	)
	cmd := &cobra.Command{
		Use:               "stage ID --staging-path PATH",
		Short:             "Stage a volume on this node (NodeStageVolume)",
		Example:           `  cairnctl volume stage vol-0123456789abcdef --staging-path /mnt/stage/vol1 --fs-type ext4`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: c.completeVolumes,
	}
	capFlags := addCapabilityFlags(cmd)
	f := cmd.Flags()
	f.StringVar(&staging, "staging-path", "", "staging_target_path (created if missing)")
	f.Var(&volCtx, "volume-context", "volume context key=value (as CreateVolume returned it); repeatable")
	f.Var(&pubCtx, "publish-context", "publish context key=value (as ControllerPublishVolume returned it); repeatable")
	f.Var(&secs, "secret", "a secret key=value for the call; repeatable")
	cmd.MarkFlagRequired("staging-path")
	cmd.MarkFlagDirname("staging-path")
	cmd.RunE = c.action(func(ctx context.Context, cl *clients, _ *cobra.Command, args []string) error {
		vc, err := capFlags.capability()
		if err != nil {
			return err
		}
		if staging, err = absPath("--staging-path", staging); err != nil {
			return err
		}
		if err := os.MkdirAll(staging, 0o750); err != nil {
			return fmt.Errorf("create staging directory: %w", err)
		}
		_, err = call(ctx, c, cl.Node.NodeStageVolume, &csi.NodeStageVolumeRequest{
			VolumeId: args[0], StagingTargetPath: staging, VolumeCapability: vc,
			VolumeContext: volCtx.m, PublishContext: pubCtx.m, Secrets: secs.m})
		if err != nil {
			return err
		}
		return c.printActions([]actionView{{Action: "staged", VolumeID: args[0], StagingTargetPath: staging}})
	})
	return cmd
}

func (c *cli) volumeUnstageCmd() *cobra.Command {
	var staging string
	cmd := &cobra.Command{
		Use:               "unstage ID --staging-path PATH",
		Short:             "Unstage a volume from this node (NodeUnstageVolume)",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: c.completeVolumes,
	}
	cmd.Flags().StringVar(&staging, "staging-path", "", "staging_target_path")
	cmd.MarkFlagRequired("staging-path")
	cmd.MarkFlagDirname("staging-path")
	cmd.RunE = c.action(func(ctx context.Context, cl *clients, _ *cobra.Command, args []string) error {
		staging, err := absPath("--staging-path", staging)
		if err != nil {
			return err
		}
		if _, err := call(ctx, c, cl.Node.NodeUnstageVolume, &csi.NodeUnstageVolumeRequest{VolumeId: args[0], StagingTargetPath: staging}); err != nil {
			return err
		}
		return c.printActions([]actionView{{Action: "unstaged", VolumeID: args[0], StagingTargetPath: staging}})
	})
	return cmd
}

func (c *cli) volumePublishCmd() *cobra.Command {
	var (
		target, staging      string
		readOnly             bool
		volCtx, pubCtx, secs mapFlag
	)
	cmd := &cobra.Command{
		Use:   "publish ID --target-path PATH [--staging-path PATH]",
		Short: "Publish a volume at a target path on this node (NodePublishVolume)",
		Example: `  cairnctl volume publish vol-0123456789abcdef --staging-path /mnt/stage/vol1 --target-path /mnt/pods/a/vol1
  cairnctl volume publish vol-0123456789abcdef --target-path /mnt/ro --readonly`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: c.completeVolumes,
	}
	capFlags := addCapabilityFlags(cmd)
	f := cmd.Flags()
	f.StringVar(&target, "target-path", "", "target_path (its parent is created if missing)")
	f.StringVar(&staging, "staging-path", "", "staging_target_path, for drivers with STAGE_UNSTAGE_VOLUME")
	f.BoolVar(&readOnly, "readonly", false, "publish read-only")
	f.Var(&volCtx, "volume-context", "volume context key=value; repeatable")
	f.Var(&pubCtx, "publish-context", "publish context key=value; repeatable")
	f.Var(&secs, "secret", "a secret key=value for the call; repeatable")
	cmd.MarkFlagRequired("target-path")
	cmd.MarkFlagDirname("staging-path")
	cmd.RunE = c.action(func(ctx context.Context, cl *clients, _ *cobra.Command, args []string) error {
		vc, err := capFlags.capability()
		if err != nil {
			return err
		}
		if target, err = absPath("--target-path", target); err != nil {
			return err
		}
		if staging != "" {
			if staging, err = absPath("--staging-path", staging); err != nil {
				return err
			}
		}
		if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
			return fmt.Errorf("create the target's parent: %w", err)
		}
		_, err = call(ctx, c, cl.Node.NodePublishVolume, &csi.NodePublishVolumeRequest{
			VolumeId: args[0], StagingTargetPath: staging, TargetPath: target, VolumeCapability: vc,
			Readonly: readOnly, VolumeContext: volCtx.m, PublishContext: pubCtx.m, Secrets: secs.m})
		if err != nil {
			return err
		}
		return c.printActions([]actionView{{Action: "published", VolumeID: args[0], StagingTargetPath: staging, TargetPath: target}})
	})
	return cmd
}

func (c *cli) volumeUnpublishCmd() *cobra.Command {
	var target string
	cmd := &cobra.Command{
		Use:               "unpublish ID --target-path PATH",
		Short:             "Unpublish a volume from a target path (NodeUnpublishVolume)",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: c.completeVolumes,
	}
	cmd.Flags().StringVar(&target, "target-path", "", "target_path")
	cmd.MarkFlagRequired("target-path")
	cmd.RunE = c.action(func(ctx context.Context, cl *clients, _ *cobra.Command, args []string) error {
		target, err := absPath("--target-path", target)
		if err != nil {
			return err
		}
		if _, err := call(ctx, c, cl.Node.NodeUnpublishVolume, &csi.NodeUnpublishVolumeRequest{VolumeId: args[0], TargetPath: target}); err != nil {
			return err
		}
		return c.printActions([]actionView{{Action: "unpublished", VolumeID: args[0], TargetPath: target}})
	})
	return cmd
}

// absPath makes a path flag absolute, as CSI requires; a relative path is
// taken from the current directory, like any other command's.
func absPath(flag, p string) (string, error) {
	if p == "" {
		return "", usagef("%s must not be empty", flag)
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", usagef("%s %q: %v", flag, p, err)
	}
	return abs, nil
}
