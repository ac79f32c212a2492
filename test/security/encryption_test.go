package security

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/cairn-csi/cairn/internal/fscrypt"
	"github.com/cairn-csi/cairn/internal/testfs"
)

// encrypted is cairn with an fscrypt-capable dir pool ("enc", ext4 -O
// encrypt) and a plain one ("plain").
type encrypted struct {
	*hostile
	fs     *testfs.FS
	secret map[string]string
}

func startEncrypted(t *testing.T) *encrypted {
	t.Helper()
	requireRoot(t)
	efs := testfs.NewFS(t, "ext4-encrypt", 128<<20)
	dir := shortTemp(t, "enc-")
	h := &hostile{dir: dir, dirPool: filepath.Join(efs.MountPoint, "pool"), imgPool: filepath.Join(dir, "plain")}
	h.start(t, "enc=dir:"+h.dirPool, "plain=dir:"+h.imgPool)
	return &encrypted{hostile: h, fs: efs, secret: map[string]string{"encryptionPassphrase": "a-claim-secret-" + token(t)}}
}

func (e *encrypted) createEnc(t *testing.T, name string, src *csi.VolumeContentSource, secret map[string]string) (*csi.Volume, error) {
	resp, err := e.ctl.CreateVolume(ctxT(t), &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csi.VolumeCapability{mountCap},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20}, Parameters: map[string]string{"pool": "enc", "encryption": "true"},
		Secrets: secret, VolumeContentSource: src})
	return resp.GetVolume(), err
}

// stage stages and publishes volume id and returns the target.
func (e *encrypted) stagePublish(t *testing.T, id string, secret map[string]string) (string, string, error) {
	staging := e.mkdir(t, "staging-"+id)
	target := filepath.Join(e.dir, "pods", id, "mount")
	if _, err := e.node.NodeStageVolume(ctxT(t), &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging,
		VolumeCapability: mountCap, Secrets: secret}); err != nil {
		return staging, target, err
	}
	_, err := e.node.NodePublishVolume(ctxT(t), &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging,
		TargetPath: target, VolumeCapability: mountCap})
	return staging, target, err
}

func (e *encrypted) release(t *testing.T, id, staging, target string) {
	t.Helper()
	if _, err := e.node.NodeUnpublishVolume(ctxT(t), &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.node.NodeUnstageVolume(ctxT(t), &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Fatal(err)
	}
}

func snapSource(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
}

func volSource(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}}
}

// TestEncryptedDirVolumes (issue 14): a dir volume encrypted with fscrypt
// v2 and a key per volume from the CSI secret. Data at rest is ciphertext,
// the key is loaded at stage and dropped at unstage, a wrong or missing
// secret mounts nothing, and snapshots, restores and clones stay encrypted.
func TestEncryptedDirVolumes(t *testing.T) {
	e := startEncrypted(t)
	ctx := ctxT(t)

	// Refusals at create: no secret, a short one, a pool that cannot encrypt.
	_, err := e.createEnc(t, "nosecret", nil, nil)
	wantCode(t, "create without a secret", err, codes.InvalidArgument, "encryptionPassphrase")
	_, err = e.createEnc(t, "short", nil, map[string]string{"encryptionPassphrase": "short"})
	wantCode(t, "create with a short secret", err, codes.InvalidArgument, "encryptionPassphrase")
	_, err = e.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "plain", VolumeCapabilities: []*csi.VolumeCapability{mountCap},
		Parameters: map[string]string{"pool": "plain", "encryption": "true"}, Secrets: e.secret})
	wantCode(t, "encryption in a pool that cannot", err, codes.FailedPrecondition, `"plain"`)

	vol, err := e.createEnc(t, "v", nil, e.secret)
	if err != nil {
		t.Fatal(err)
	}
	id := vol.GetVolumeId()
	if vol.GetVolumeContext()["cairn.csi.dev/encryption"] != "fscrypt" || len(vol.GetVolumeContext()["cairn.csi.dev/keyID"]) != 32 {
		t.Fatalf("volume context %v does not say how it is encrypted", vol.GetVolumeContext())
	}
	kid, err := fscrypt.ParseKeyID(vol.GetVolumeContext()["cairn.csi.dev/keyID"])
	if err != nil {
		t.Fatal(err)
	}

	// Wrong or missing secret at stage: a clear code, nothing mounted.
	_, _, err = e.stagePublish(t, id, nil)
	wantCode(t, "stage without a secret", err, codes.InvalidArgument, "encryptionPassphrase")
	_, _, err = e.stagePublish(t, id, map[string]string{"encryptionPassphrase": "the-wrong-secret-entirely"})
	wantCode(t, "stage with a wrong secret", err, codes.PermissionDenied, "does not unlock")
	if m := mountsUnder(t, e.dir); len(m) > 0 {
		t.Fatalf("mounted after a refused stage: %v", m)
	}
	if present, _ := fscrypt.KeyPresent(e.fs.MountPoint, kid); present {
		t.Fatal("the volume's key is loaded after refused stages")
	}

	// Right secret: write a marker.
	staging, target, err := e.stagePublish(t, id, e.secret)
	if err != nil {
		t.Fatal(err)
	}
	marker := []byte("CAIRN-PLAINTEXT-MARKER-" + token(t))
	markerName := "marker-" + token(t)
	if err := os.WriteFile(filepath.Join(target, markerName), bytes.Repeat(marker, 256), 0o600); err != nil {
		t.Fatal(err)
	}
	// A snapshot while staged needs no secret: the key is loaded.
	snap, err := e.ctl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s1", SourceVolumeId: id})
	if err != nil {
		t.Fatalf("snapshot of a staged encrypted volume: %v", err)
	}
	e.release(t, id, staging, target)
	if present, err := fscrypt.KeyPresent(e.fs.MountPoint, kid); err != nil || present {
		t.Fatalf("key still loaded after unstage: %v %v", present, err)
	}

	// Locked at once, not when the kernel gets round to evicting it: the
	// volume's directory lists encoded names, not the marker's (the key was
	// once removed through the volume's own directory, which kept it in use
	// and so unlocked, as TestCairnOnKubelet's encryption step showed).
	ents, err := os.ReadDir(filepath.Join(e.dirPool, "volumes", id))
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() == markerName {
		var names []string
		for _, en := range ents {
			names = append(names, en.Name())
		}
		t.Errorf("the unstaged volume's directory lists %v: want one encoded name, not %s", names, markerName)
	}

	// At rest: no name and no byte of the marker, in the tree or in the raw
	// image of the pool's filesystem.
	unix.Sync()
	os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0) // best effort; the image is read through its own file anyway
	filepath.WalkDir(e.dirPool, func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.Contains(d.Name(), "marker-") {
			t.Errorf("a plaintext name is on disk: %s", p)
		}
		if err == nil && d.Type().IsRegular() {
			if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, marker) {
				t.Errorf("%s reads as plaintext without the key", p)
			}
		}
		return nil
	})
	img, err := os.ReadFile(e.fs.Image)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(img, marker) || bytes.Contains(img, []byte(markerName)) {
		t.Fatal("the raw filesystem image contains the plaintext marker")
	}

	// Restage with the right secret: it reads back.
	staging, target, err = e.stagePublish(t, id, e.secret)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(target, markerName)); err != nil || !bytes.Equal(b, bytes.Repeat(marker, 256)) {
		t.Fatalf("marker after restage: %v", err)
	}
	e.release(t, id, staging, target)

	// A snapshot of an unstaged encrypted volume needs the secret.
	_, err = e.ctl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s2", SourceVolumeId: id})
	wantCode(t, "snapshot of a locked volume without a secret", err, codes.FailedPrecondition, "key")
	_, err = e.ctl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s2", SourceVolumeId: id, Secrets: map[string]string{"encryptionPassphrase": "the-wrong-secret-entirely"}})
	wantCode(t, "snapshot with a wrong secret", err, codes.PermissionDenied, "")
	if _, err := e.ctl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s2", SourceVolumeId: id, Secrets: e.secret}); err != nil {
		t.Fatalf("snapshot with the secret: %v", err)
	}

	// Restore and clone: encrypted too, unlocked with the source's secret.
	_, err = e.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "plainrestore", VolumeCapabilities: []*csi.VolumeCapability{mountCap},
		Parameters: map[string]string{"pool": "enc"}, VolumeContentSource: snapSource(snap.GetSnapshot().GetSnapshotId())})
	wantCode(t, "a plain restore of an encrypted snapshot", err, codes.InvalidArgument, "encryption")
	for name, src := range map[string]*csi.VolumeContentSource{"restore": snapSource(snap.GetSnapshot().GetSnapshotId()), "clone": volSource(id)} {
		v, err := e.createEnc(t, name, src, e.secret)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		staging, target, err := e.stagePublish(t, v.GetVolumeId(), e.secret)
		if err != nil {
			t.Fatalf("stage the %s: %v", name, err)
		}
		if b, err := os.ReadFile(filepath.Join(target, markerName)); err != nil || !bytes.Equal(b, bytes.Repeat(marker, 256)) {
			t.Fatalf("marker in the %s: %v", name, err)
		}
		e.release(t, v.GetVolumeId(), staging, target)
		if _, _, err := fscrypt.Policy(filepath.Join(e.dirPool, "volumes", v.GetVolumeId())); err != nil {
			t.Fatal(err)
		}
		if id2, ok, _ := fscrypt.Policy(filepath.Join(e.dirPool, "volumes", v.GetVolumeId())); !ok || id2 == kid {
			t.Fatalf("the %s is not encrypted with a key of its own (encrypted %v)", name, ok)
		}
	}
	img, _ = os.ReadFile(e.fs.Image)
	unix.Sync()
	if bytes.Contains(img, marker) {
		t.Fatal("after restore and clone, the raw image contains the plaintext marker")
	}

	// Everything deletes without the key.
	list, _ := e.ctl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{})
	for _, s := range list.GetEntries() {
		if _, err := e.ctl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: s.GetSnapshot().GetSnapshotId()}); err != nil {
			t.Fatal(err)
		}
	}
	vols, _ := e.ctl.ListVolumes(ctx, &csi.ListVolumesRequest{})
	for _, v := range vols.GetEntries() {
		if _, err := e.ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.GetVolume().GetVolumeId()}); err != nil {
			t.Fatal(err)
		}
	}
	left, _ := os.ReadDir(filepath.Join(e.dirPool, "volumes"))
	if len(left) > 0 {
		t.Fatalf("left in the pool: %v", left)
	}
}

// TestEncryptedInlineVolume: a pod's inline volume encrypted with the key
// from its nodePublishSecretRef.
func TestEncryptedInlineVolume(t *testing.T) {
	e := startEncrypted(t)
	ctx := ctxT(t)
	target := filepath.Join(e.dir, "pod", "inline")
	attrs := map[string]string{"csi.storage.k8s.io/ephemeral": "true", "size": "16Mi", "pool": "enc", "encryption": "true"}
	_, err := e.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "csi-inline-enc", TargetPath: target,
		VolumeCapability: mountCap, VolumeContext: attrs})
	wantCode(t, "inline without a secret", err, codes.InvalidArgument, "encryptionPassphrase")
	if _, err := e.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: "csi-inline-enc", TargetPath: target,
		VolumeCapability: mountCap, VolumeContext: attrs, Secrets: e.secret}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(target, "f"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	vols, _ := e.ctl.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if len(vols.GetEntries()) != 1 {
		t.Fatalf("%d volumes", len(vols.GetEntries()))
	}
	if _, ok, err := fscrypt.Policy(filepath.Join(e.dirPool, "volumes", vols.GetEntries()[0].GetVolume().GetVolumeId())); !ok || err != nil {
		t.Fatalf("the inline volume is not encrypted: %v", err)
	}
	if _, err := e.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: "csi-inline-enc", TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	vols, _ = e.ctl.ListVolumes(context.Background(), &csi.ListVolumesRequest{})
	if len(vols.GetEntries()) != 0 {
		t.Fatalf("the inline volume outlived its pod")
	}
}
