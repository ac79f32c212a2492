package driver

import (
	"context"
	"errors"
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/cairn-csi/cairn/internal/backend"
	"github.com/cairn-csi/cairn/internal/errdefs"
)

// GetPluginInfo implements csi.IdentityServer.
func (d *Driver) GetPluginInfo(ctx context.Context, _ *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: d.cfg.Name, VendorVersion: d.cfg.Version}, nil
}

// GetPluginCapabilities implements csi.IdentityServer.
func (d *Driver) GetPluginCapabilities(ctx context.Context, _ *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	svc := func(t csi.PluginCapability_Service_Type) *csi.PluginCapability {
		return &csi.PluginCapability{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: t}}}
	}
	caps := []*csi.PluginCapability{svc(csi.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS)}
	if d.cfg.Mode.controller() {
		caps = append(caps, svc(csi.PluginCapability_Service_CONTROLLER_SERVICE))
	}
	if d.anyPool(func(b backend.Backend) bool { _, ok := b.(backend.Expander); return ok }) {
		caps = append(caps, &csi.PluginCapability{Type: &csi.PluginCapability_VolumeExpansion_{
			VolumeExpansion: &csi.PluginCapability_VolumeExpansion{Type: csi.PluginCapability_VolumeExpansion_ONLINE}}})
	}
	return &csi.GetPluginCapabilitiesResponse{Capabilities: caps}, nil
}

// Probe implements csi.IdentityServer: ready only when the store (if this
// mode has one) and every pool are usable.
// Probe is called every few seconds, so it logs when its verdict changes,
// not on every call. The line names pools whose sizes are not enforced.
func (d *Driver) Probe(ctx context.Context, _ *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	err := d.Check(ctx)
	verdict := "ready"
	if err != nil {
		verdict = "not ready: " + err.Error()
	}
	if prev := d.lastProbe.Swap(&verdict); prev == nil || *prev != verdict {
		if err != nil {
			d.log.Warn("probe: not ready", "reason", err)
		} else {
			d.log.Info("probe: ready", "capacityNotEnforced", d.unenforcedPools(ctx))
		}
	}
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(err == nil)}, nil
}

// unenforcedPools names the pools whose volume sizes are not hard limits.
func (d *Driver) unenforcedPools(ctx context.Context) []string {
	var out []string
	for _, name := range d.poolOrder {
		if c, err := d.pools[name].Capacity(ctx); err == nil && !c.Enforced {
			out = append(out, name)
		}
	}
	return out
}

// Check is Probe's verdict as an error: nil when ready.
func (d *Driver) Check(ctx context.Context) error {
	if !d.ready.Load() {
		return fmt.Errorf("start-up reconcile has not finished: %w", errdefs.ErrUnavailable)
	}
	var errs []error
	if d.store != nil {
		if err := d.store.Check(ctx); err != nil {
			errs = append(errs, fmt.Errorf("metadata store: %w", err))
		}
	}
	for _, name := range d.poolOrder {
		if err := d.pools[name].Check(ctx); err != nil {
			errs = append(errs, fmt.Errorf("pool %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

func (d *Driver) anyPool(f func(backend.Backend) bool) bool {
	for _, b := range d.pools {
		if f(b) {
			return true
		}
	}
	return false
}
