package driver

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/cairn-csi/cairn/internal/errdefs"
	"github.com/cairn-csi/cairn/internal/store"
)

// CSI ephemeral inline volumes: kubelet calls NodePublishVolume with this
// context key and the pod's volumeAttributes, and no CreateVolume. Cairn
// creates a real volume (named by kubelet's volume ID, so a retried publish
// finds it), stages it under the data dir, and deletes it on unpublish.
const (
	ephemeralContextKey = "csi.storage.k8s.io/ephemeral"
	attrSize            = "size"
	attrPool            = "pool"
	attrFsType          = "fsType"
)

// podInfoKeys are added by kubelet when the CSIDriver has podInfoOnMount.
var podInfoKeys = map[string]bool{
	ephemeralContextKey:                        true,
	"csi.storage.k8s.io/pod.name":              true,
	"csi.storage.k8s.io/pod.namespace":         true,
	"csi.storage.k8s.io/pod.uid":               true,
	"csi.storage.k8s.io/serviceAccount.name":   true,
	"csi.storage.k8s.io/serviceAccount.tokens": true,
}

func (d *Driver) ephemeralStaging(id string) string {
	return filepath.Join(d.cfg.StateDir, "ephemeral", id)
}

func (d *Driver) publishEphemeral(ctx context.Context, req *csi.NodePublishVolumeRequest) error {
	if err := d.validatePublish(req); err != nil {
		return err
	}
	if d.store == nil || d.cfg.StateDir == "" {
		return fmt.Errorf("ephemeral inline volumes need --mode all: %w", errdefs.ErrFailedPrecondition)
	}
	params := map[string]string{}
	var capacity int64
	for k, v := range req.GetVolumeContext() {
		switch {
		case podInfoKeys[k]:
		case k == attrSize:
			q, err := resource.ParseQuantity(v)
			if err != nil || q.Sign() <= 0 {
				return invalid("volumeAttributes.size %q is not a positive quantity such as 1Gi", truncate(v))
			}
			capacity = q.Value()
		case k == attrPool:
			params[ParamPool] = v
		case k == attrFsType:
			params[ParamFsType] = v
		case k == ParamEncryption:
			// The key comes from the pod's nodePublishSecretRef.
			params[ParamEncryption] = v
		default:
			// A closed set: pods must not choose how the node formats.
			return invalid("volumeAttributes: attribute %q is not accepted (accepted: %s, %s, %s, %s)", truncate(k), attrSize, attrPool, attrFsType, ParamEncryption)
		}
	}
	created, err := d.createVolume(ctx, &csi.CreateVolumeRequest{
		Name:               req.GetVolumeId(),
		CapacityRange:      &csi.CapacityRange{RequiredBytes: capacity},
		VolumeCapabilities: []*csi.VolumeCapability{req.GetVolumeCapability()},
		Parameters:         params,
		Secrets:            req.GetSecrets(),
	}, true)
	if err != nil {
		return err
	}
	vol := created.GetVolume()
	staging := d.ephemeralStaging(vol.GetVolumeId())
	if err := os.MkdirAll(staging, 0o750); err != nil {
		return err
	}
	err = d.nodeStage(ctx, &csi.NodeStageVolumeRequest{
		VolumeId: vol.GetVolumeId(), StagingTargetPath: staging,
		VolumeCapability: req.GetVolumeCapability(), VolumeContext: vol.GetVolumeContext(),
		Secrets: req.GetSecrets(),
	})
	if err != nil {
		return err
	}
	return d.nodePublish(ctx, &csi.NodePublishVolumeRequest{
		VolumeId: vol.GetVolumeId(), StagingTargetPath: staging, TargetPath: req.GetTargetPath(),
		VolumeCapability: req.GetVolumeCapability(), Readonly: req.GetReadonly(), VolumeContext: vol.GetVolumeContext(),
	})
}

// unpublishEphemeral finishes NodeUnpublishVolume for an ephemeral volume:
// unstage and delete it. For any other volume it does nothing.
func (d *Driver) unpublishEphemeral(ctx context.Context, kubeletID, target string) error {
	if d.store == nil {
		return nil
	}
	var rec store.Volume
	err := d.store.View(ctx, func(tx *store.Tx) (err error) { rec, err = tx.VolumeByName(kubeletID); return })
	if errdefs.Is(err, errdefs.ErrNotFound) || (err == nil && !rec.Ephemeral) {
		return nil
	}
	if err != nil {
		return err
	}
	staging := d.ephemeralStaging(rec.ID)
	if err := d.nodeUnstage(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: rec.ID, StagingTargetPath: staging}); err != nil {
		return err
	}
	if err := os.Remove(staging); err != nil && !os.IsNotExist(err) {
		return err
	}
	d.log.Info("ephemeral volume released", "volume", rec.ID, "kubeletVolume", kubeletID, "target", target)
	return d.deleteVolume(ctx, rec.ID)
}
