package cairnctl

import (
	"context"
	"errors"
	"io"
	"os"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
)

func (c *cli) infoCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "info",
		Short: "Show the plugin's identity, capabilities and node information",
		Long: `info calls GetPluginInfo, GetPluginCapabilities, ControllerGetCapabilities,
GroupControllerGetCapabilities, NodeGetCapabilities and NodeGetInfo. A
service the driver does not serve is shown as "not served"; that is not an
error.`,
		Args: cobra.NoArgs,
		RunE: c.action(func(ctx context.Context, cl *clients, _ *cobra.Command, _ []string) error {
			v, err := c.info(ctx, cl)
			if v == nil {
				return err
			}
			perr := c.printer().print(v, func(w io.Writer) {
				manifest := joinMap(v.Manifest, "\n")
				pairs := [][2]string{
					{"NAME", v.Name},
					{"VERSION", orDash(v.VendorVersion)},
				}
				if manifest != "" {
					pairs = append(pairs, [2]string{"MANIFEST", manifest})
				}
				pairs = append(pairs,
					[2]string{"PLUGIN", orDash(strings.Join(v.PluginCapabilities, "\n"))},
					[2]string{"CONTROLLER", v.Controller.String()},
					[2]string{"GROUP CONTROLLER", v.GroupController.String()},
					[2]string{"NODE", v.Node.String()},
				)
				if ni := v.NodeInfo; ni != nil {
					maxVols := "unlimited"
					if ni.MaxVolumesPerNode > 0 {
						maxVols = itoa(ni.MaxVolumesPerNode)
					}
					pairs = append(pairs,
						[2]string{"NODE ID", ni.NodeID},
						[2]string{"MAX VOLUMES", maxVols},
						[2]string{"TOPOLOGY", orDash(joinMap(ni.AccessibleTopology, "\n"))},
					)
				}
				kvRows(w, pairs...)
			})
			return errors.Join(err, perr)
		}),
	}
}

// info gathers infoView. Identity must answer; a service that is not
// served (UNIMPLEMENTED) is noted, any other failure is noted and also
// returned, after as much as could be learned.
func (c *cli) info(ctx context.Context, cl *clients) (*infoView, error) {
	pi, err := call(ctx, c, cl.Identity.GetPluginInfo, &csi.GetPluginInfoRequest{})
	if err != nil {
		return nil, err
	}
	pc, err := call(ctx, c, cl.Identity.GetPluginCapabilities, &csi.GetPluginCapabilitiesRequest{})
	if err != nil {
		return nil, err
	}
	v := &infoView{
		Name: pi.GetName(), VendorVersion: pi.GetVendorVersion(), Manifest: pi.GetManifest(),
		PluginCapabilities: pluginCapNames(pc.GetCapabilities()),
	}
	var errs []error
	service := func(caps []string, err error) serviceView {
		if err != nil {
			if !isCode(err, codes.Unimplemented) {
				errs = append(errs, err)
			}
			return serviceView{Error: err.Error()}
		}
		return serviceView{Served: true, Capabilities: caps}
	}
	cc, err := call(ctx, c, cl.Controller.ControllerGetCapabilities, &csi.ControllerGetCapabilitiesRequest{})
	v.Controller = service(controllerCapNames(cc.GetCapabilities()), err)
	gc, err := call(ctx, c, cl.GroupController.GroupControllerGetCapabilities, &csi.GroupControllerGetCapabilitiesRequest{})
	v.GroupController = service(groupCapNames(gc.GetCapabilities()), err)
	nc, err := call(ctx, c, cl.Node.NodeGetCapabilities, &csi.NodeGetCapabilitiesRequest{})
	v.Node = service(nodeCapNames(nc.GetCapabilities()), err)
	if v.Node.Served {
		ni, err := call(ctx, c, cl.Node.NodeGetInfo, &csi.NodeGetInfoRequest{})
		if err != nil {
			errs = append(errs, err)
		} else {
			v.NodeInfo = &nodeInfoView{NodeID: ni.GetNodeId(), MaxVolumesPerNode: ni.GetMaxVolumesPerNode(),
				AccessibleTopology: ni.GetAccessibleTopology().GetSegments()}
		}
	}
	return v, errors.Join(errs...)
}

func (c *cli) probeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "probe",
		Short: "Ask the driver whether it is ready (exit code 12 when not)",
		Args:  cobra.NoArgs,
		RunE: c.action(func(ctx context.Context, cl *clients, _ *cobra.Command, _ []string) error {
			resp, err := call(ctx, c, cl.Identity.Probe, &csi.ProbeRequest{})
			if err != nil {
				return err
			}
			// The spec: an absent ready field means ready.
			ready := resp.GetReady() == nil || resp.GetReady().GetValue()
			v := struct {
				Ready bool `json:"ready"`
			}{ready}
			if err := c.printer().print(v, func(w io.Writer) { kvRows(w, [2]string{"READY", boolWord(ready)}) }); err != nil {
				return err
			}
			if !ready {
				return errNotReady
			}
			return nil
		}),
	}
}

// isCode reports whether err is an rpcError with code.
func isCode(err error, code codes.Code) bool {
	var re rpcError
	return errors.As(err, &re) && re.code == code
}

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
