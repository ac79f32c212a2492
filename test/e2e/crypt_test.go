package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The encrypted volume of TestCairnOnKubelet (issue 14): a pre-provisioned
// PV whose nodeStageSecretRef names a Secret with the passphrase. The node
// kernel here has no device-mapper, so no LUKS; the volume is a directory
// volume encrypted with fscrypt, in a dir pool on an ext4 filesystem made
// with -O encrypt.
const (
	cryptPool   = "crypt"
	cryptSecret = "crypt-passphrase"
	// the CSI secret key and the volume context cairn returns
	// (internal/driver/encryption.go)
	secretPassphrase = "encryptionPassphrase"
	ctxEncryption    = "cairn.csi.dev/encryption"
)

// cryptSetup is the encrypted pool of a run, or why there is none.
type cryptSetup struct {
	mnt     string // the ext4 filesystem with the encrypt feature, in the node namespace
	img     string // its image file, on the host
	skipped string // why this run has no encrypted pool
}

// makeCryptPool makes the encrypted pool's filesystem and returns the
// --pool flag for it, or "" (and the reason in s.crypt.skipped) where the
// kernel or e2fsprogs cannot.
func (s *suite) makeCryptPool(ctx context.Context) (string, error) {
	s.crypt = &cryptSetup{}
	if _, err := os.Stat("/sys/fs/ext4/features/encryption"); err != nil {
		s.crypt.skipped = "the kernel's ext4 has no encryption feature (/sys/fs/ext4/features/encryption): no fscrypt"
		return "", nil
	}
	mnt, err := s.makePoolFS(ctx, cryptPool, "ext4", 256<<20, "-F", "-O", "encrypt")
	if errors.Is(err, errNoFS) {
		s.crypt.skipped = err.Error()
		return "", nil
	}
	if err != nil {
		return "", err
	}
	s.crypt.mnt, s.crypt.img = mnt, s.poolFSs[len(s.poolFSs)-1].img
	return cryptPool + "=dir:" + filepath.Join(mnt, "pool"), nil
}

func newPassphrase() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

// setSecret creates or replaces the Secret the PV's nodeStageSecretRef
// names.
func (s *suite) setSecret(ctx context.Context, pass string) error {
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: cryptSecret, Namespace: s.ns, Labels: s.labels()},
		StringData: map[string]string{secretPassphrase: pass},
	}
	_, err := s.c.core.Secrets(s.ns).Update(ctx, sec, metav1.UpdateOptions{})
	if err != nil {
		_, err = s.c.core.Secrets(s.ns).Create(ctx, sec, metav1.CreateOptions{})
	}
	return err
}

// testEncryption provisions an encrypted directory volume through cairn's
// CreateVolume and binds it as a pre-provisioned PV with a
// nodeStageSecretRef. A pod writes and reads; once the pod is gone (and
// kubelet has unstaged), the volume's data at rest is ciphertext: the
// names in its directory are encoded, its file cannot be read, and the
// written token is nowhere in the pool's filesystem image. A Secret with
// another passphrase keeps a new pod from starting, with kubelet's
// FailedMount event carrying PermissionDenied; with the right one back, a
// pod reads the data again. Teardown deletes the volume with the others.
func (s *suite) testEncryption(t *testing.T) {
	if s.crypt == nil || s.crypt.mnt == "" {
		reason := "no encrypted pool in this run"
		if s.crypt != nil {
			reason = s.crypt.skipped
		}
		t.Skipf("encrypted pre-provisioned PV not tested: %s", reason)
	}
	ctx := context.Background()
	pass := newPassphrase()
	if err := s.setSecret(ctx, pass); err != nil {
		t.Fatal(err)
	}
	k := volKind{name: "crypt", pool: cryptPool}
	here := []*csi.Topology{{Segments: map[string]string{topologyKey: s.node}}}
	cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	resp, err := s.cairn.controller().CreateVolume(cctx, &csi.CreateVolumeRequest{
		Name:                      fmt.Sprintf("pvc-e2e-%s-%s", s.run, k.name),
		CapacityRange:             &csi.CapacityRange{RequiredBytes: volumeBytes},
		VolumeCapabilities:        []*csi.VolumeCapability{k.capability()},
		Parameters:                map[string]string{"pool": cryptPool, "encryption": "true"},
		Secrets:                   map[string]string{secretPassphrase: pass},
		AccessibilityRequirements: &csi.TopologyRequirement{Requisite: here, Preferred: here},
	})
	cancel()
	if err != nil {
		t.Fatalf("CreateVolume (encrypted): %v\n%s", err, s.cairn.logTail(20))
	}
	vol := resp.GetVolume()
	v := &testVol{kind: k, id: vol.GetVolumeId(), bytes: vol.GetCapacityBytes(), attrs: vol.GetVolumeContext(),
		name: fmt.Sprintf("cairn-e2e-%s-%s", s.run, k.name)}
	s.vols = append(s.vols, v) // teardown and cleanup delete it with the others
	t.Logf("encrypted volume %s, volume context %v", v.id, v.attrs)
	if got := v.attrs[ctxEncryption]; got != "fscrypt" {
		t.Errorf("volume context %s = %q, want fscrypt", ctxEncryption, got)
	}

	pv := s.pv(v, vol.GetAccessibleTopology())
	pv.Spec.CSI.NodeStageSecretRef = &corev1.SecretReference{Name: cryptSecret, Namespace: s.ns}
	if _, err := s.c.core.PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	s.bindClaim(t, v)

	// write and read through kubelet: NodeStageVolume got the Secret
	s.runPod(t, s.volPod(podName(v, "a"), v, nil))
	s.writeVol(t, podName(v, "a"), v, 1)
	s.checkVol(t, podName(v, "a"), v, 1)
	s.deletePod(t, podName(v, "a"))

	// at rest: after NodeUnstageVolume dropped the key
	dir := filepath.Join(s.crypt.mnt, "pool", "volumes", v.id)
	var names []string
	err = waitFor(ctx, 2*time.Minute, "the volume's names encrypted (unstaged, key dropped)", func(ctx context.Context) (bool, error) {
		out, err := s.nodeExec(ctx, "ls", "-A", dir)
		if err != nil {
			return false, err
		}
		names = strings.Fields(out)
		if len(names) != 1 {
			return false, stop(fmt.Errorf("%s holds %v, want one entry (slot1)", dir, names))
		}
		return names[0] != "slot1", fmt.Errorf("%s lists %v in plaintext: still unlocked", dir, names)
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, s.cairn.logTail(20))
	}
	enc := filepath.Join(dir, names[0])
	if size, err := s.nodeExec(ctx, "stat", "-c", "%s", enc); err != nil || strings.TrimSpace(size) != fmt.Sprint(len(s.token(k.name, 1))) {
		t.Errorf("encrypted file %s: size %q (%v), want the token's %d bytes", enc, strings.TrimSpace(size), err, len(s.token(k.name, 1)))
	}
	if out, err := s.nodeExec(ctx, "cat", enc); err == nil {
		t.Errorf("the locked volume's file %s was readable: %q", enc, out)
	} else {
		t.Logf("locked volume: %s lists %v; reading %s: %v", dir, names, names[0], strings.TrimSpace(err.Error()))
	}
	img, err := os.ReadFile(s.crypt.img)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(img, []byte(s.token(k.name, 1))) {
		t.Errorf("the token written in the pod is in plaintext in the pool's filesystem image %s", s.crypt.img)
	}
	if bytes.Contains(img, []byte("slot1")) {
		t.Errorf("the file name slot1 is in plaintext in the pool's filesystem image %s", s.crypt.img)
	}

	// a wrong passphrase: the pod does not start, and says why
	if err := s.setSecret(ctx, newPassphrase()); err != nil {
		t.Fatal(err)
	}
	bad := s.volPod(podName(v, "wrong-secret"), v, nil)
	created, err := s.c.core.Pods(s.ns).Create(ctx, bad, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.podUIDs[bad.Name] = string(created.UID)
	var msg string
	err = waitFor(ctx, 2*time.Minute, "a FailedMount event with PermissionDenied for "+bad.Name, func(ctx context.Context) (bool, error) {
		evs, err := s.c.core.Events(s.ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.kind=Pod,involvedObject.name=" + bad.Name})
		if err != nil {
			return false, err
		}
		for _, e := range evs.Items {
			if e.Reason == "FailedMount" && strings.Contains(e.Message, "PermissionDenied") {
				msg = e.Message
				return true, nil
			}
		}
		return false, fmt.Errorf("%d events, none FailedMount with PermissionDenied", len(evs.Items))
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, s.explain(ctx, "pod", bad.Name))
	}
	t.Logf("wrong passphrase: event FailedMount: %s", msg)
	if p, err := s.c.core.Pods(s.ns).Get(ctx, bad.Name, metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	} else if p.Status.Phase != corev1.PodPending {
		t.Errorf("pod %s with a wrong passphrase is %s, want Pending", bad.Name, p.Status.Phase)
	}
	if out, err := s.nodeExec(ctx, "ls", "-A", dir); err != nil || strings.Contains(out, "slot1") {
		t.Errorf("after a wrong passphrase %s lists %q (%v): unlocked", dir, out, err)
	}
	s.deletePod(t, bad.Name)

	// the right passphrase again: the data is intact
	if err := s.setSecret(ctx, pass); err != nil {
		t.Fatal(err)
	}
	s.runPod(t, s.volPod(podName(v, "b"), v, nil))
	s.checkVol(t, podName(v, "b"), v, 1)
	s.writeVol(t, podName(v, "b"), v, 2)
}

// bindClaim claims v's PV and waits until the claim is bound.
func (s *suite) bindClaim(t *testing.T, v *testVol) {
	t.Helper()
	s.claim(t, v)
	s.waitBound(t, v)
}

// claim waits for the PV controller to see v's PV (it marks it Available:
// a claim it syncs before that waits for its next resync, 15 s later),
// then creates the claim.
func (s *suite) claim(t *testing.T, v *testVol) {
	t.Helper()
	ctx := context.Background()
	err := waitFor(ctx, time.Minute, "PV "+v.name+" Available", func(ctx context.Context) (bool, error) {
		pv, err := s.c.core.PersistentVolumes().Get(ctx, v.name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return pv.Status.Phase != "" && pv.Status.Phase != corev1.VolumePending, fmt.Errorf("phase %q", pv.Status.Phase)
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, s.explain(ctx, "pv", v.name))
	}
	if _, err := s.c.core.PersistentVolumeClaims(s.ns).Create(ctx, s.pvc(v), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create PVC for %s: %v", v.name, err)
	}
}

// waitBound waits until v's claim is bound.
func (s *suite) waitBound(t *testing.T, v *testVol) {
	t.Helper()
	ctx := context.Background()
	err := waitFor(ctx, 2*time.Minute, "PVC "+v.name+" Bound", func(ctx context.Context) (bool, error) {
		pvc, err := s.c.core.PersistentVolumeClaims(s.ns).Get(ctx, v.name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return pvc.Status.Phase == corev1.ClaimBound, fmt.Errorf("phase %s", pvc.Status.Phase)
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, s.explain(ctx, "pvc", v.name))
	}
}
