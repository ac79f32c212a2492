package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/cairn-csi/cairn/internal/testdriver"
)

const (
	// renderedManifests is the chart rendered with its default values;
	// test/deploy keeps it equal to the chart.
	renderedManifests = "../../deploy/kubernetes/cairn.yaml"
	runLabel          = "cairn-e2e"
	volumeBytes       = 64 << 20
	mountPath         = "/data"
	devicePath        = "/dev/cairn"
	fsGroup           = 2000
)

// volKind is one kind of persistent volume the test provisions.
type volKind struct {
	name   string // also part of object names
	pool   string // cairn pool name
	block  bool
	fsType string // image pools with mount access
}

// testVol is a provisioned volume and its PV and PVC.
type testVol struct {
	kind  volKind
	id    string
	bytes int64
	attrs map[string]string // CreateVolume's volume_context, the PV's volumeAttributes
	name  string            // of the PV and of the PVC
}

// suite is the state of one TestCairnOnKubelet run.
type suite struct {
	c        *cluster
	local    string // k8s-local scripts
	node     string
	run      string // random, names this run's objects
	ns       string
	image    string // the busybox image pods run
	dataDir  string
	pools    []string // pool types cairn knows
	cairn    *nodeCairn
	vols     []*testVol
	podUIDs  map[string]string // pod name -> UID, of every pod created
	inline   []inlineVol
	madeCSID bool
	poolFSs  []poolFS // filesystems made for pools (btrfs, ext4 with encrypt)
	crypt    *cryptSetup
}

// poolFS is a filesystem in an image file in the data directory, loop
// mounted in the node namespace for a pool.
type poolFS struct{ img, mnt string }

var errNoFS = errors.New("the mkfs tool or the filesystem is not available")

// makePoolFS makes a filesystem of type fsType (mkfs.<fsType> with args)
// in an image file in the data directory and mounts it inside the node
// namespace (only there: cairn and kubelet see it, the host does not).
// It returns the mount point; errNoFS when this machine cannot.
func (s *suite) makePoolFS(ctx context.Context, name, fsType string, size int64, args ...string) (string, error) {
	mkfs, err := exec.LookPath("mkfs." + fsType)
	if err != nil {
		return "", fmt.Errorf("%w: %v", errNoFS, err)
	}
	if fss, err := os.ReadFile("/proc/filesystems"); err != nil || !strings.Contains(string(fss), "\t"+fsType+"\n") {
		return "", fmt.Errorf("%w: %s is not in /proc/filesystems", errNoFS, fsType)
	}
	img := filepath.Join(s.dataDir, name+".img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		return "", err
	}
	if err := os.Truncate(img, size); err != nil {
		return "", err
	}
	if _, err := runCmd(ctx, nil, nil, mkfs, append(append([]string{"-q"}, args...), img)...); err != nil {
		return "", err
	}
	mnt := filepath.Join(s.dataDir, name)
	if err := os.Mkdir(mnt, 0o700); err != nil {
		return "", err
	}
	s.poolFSs = append(s.poolFSs, poolFS{img: img, mnt: mnt}) // from here on the cleanup unmounts it
	_, err = s.nodeExec(ctx, "mount", "-o", "loop", img, mnt)
	return mnt, err
}

// isPoolFS reports whether a mount point or a loop device's backing file
// is one of the pools' own filesystems, which are not leaks.
func (s *suite) isPoolFS(path string) bool {
	return slices.ContainsFunc(s.poolFSs, func(p poolFS) bool { return p.img == path || p.mnt == path })
}

// inlineVol is a CSI ephemeral inline volume of the inline pod.
type inlineVol struct{ name, pool, fsType string }

// TestCairnOnKubelet runs cairn on the node of the local cluster, next to a
// real kubelet, and checks the whole life of its volumes there: built-in
// registration, pre-provisioned PVs of every pool type (filesystem and raw
// block), data surviving a pod being recreated and cairn being SIGKILLed
// and restarted, CSI ephemeral inline volumes created and deleted with
// their pod, and nothing (mounts, loop devices) left behind at the end.
func TestCairnOnKubelet(t *testing.T) {
	c := needCluster(t)
	local := k8sLocalDir(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root: cairn runs in the node namespace through nsenter")
	}
	ctx := context.Background()
	s := &suite{c: c, local: local, run: randomSuffix(), podUIDs: map[string]string{}}
	s.ns = "cairn-e2e-" + s.run
	s.image = os.Getenv("CAIRN_E2E_IMAGE")
	if s.image == "" {
		s.image = "local/busybox:1.35" // what k8s-local's images.sh builds
	}

	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	s.node = strings.ToLower(host)
	if _, err := c.core.Nodes().Get(ctx, s.node, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		t.Skipf("the cluster has no node %q (this host): cairn must run where kubelet runs", s.node)
	} else if err != nil {
		t.Fatal(err)
	}
	if existing, err := c.storage.CSIDrivers().Get(ctx, driverName, metav1.GetOptions{}); err == nil {
		if existing.Labels[runLabel] == "" {
			t.Skipf("the cluster already has a CSIDriver %s that this test did not make: not touching a real installation", driverName)
		}
		t.Logf("deleting CSIDriver %s left by an earlier run (%s=%s)", driverName, runLabel, existing.Labels[runLabel])
		if err := c.storage.CSIDrivers().Delete(ctx, driverName, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
	}

	bin := testdriver.Binary(t)
	if s.pools, err = poolTypes(ctx, bin); err != nil {
		t.Fatal(err)
	}
	t.Logf("cairn %s knows pool types %v; node %s; namespace %s", bin, s.pools, s.node, s.ns)
	if s.dataDir, err = os.MkdirTemp("", "cairn-e2e-"+s.run+"-"); err != nil {
		t.Fatal(err)
	}
	// Cleanups run last-registered first: diagnostics, then the teardown.
	t.Cleanup(func() { s.cleanup(t) })
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(s.diagnostics())
		}
	})
	poolFlags := []string{"default=dir:" + filepath.Join(s.dataDir, "pools", "default")}
	kinds := []volKind{{name: "dir", pool: "default"}}
	s.inline = []inlineVol{{name: "scratch-dir", pool: "default"}}
	if slices.Contains(s.pools, "image") {
		poolFlags = append(poolFlags, "image=image:"+filepath.Join(s.dataDir, "pools", "image"))
		kinds = append(kinds,
			volKind{name: "image", pool: "image", fsType: "ext4"},
			volKind{name: "block", pool: "image", block: true})
		s.inline = append(s.inline, inlineVol{name: "scratch-image", pool: "image", fsType: "ext4"})
	} else {
		t.Logf("this cairn has no image pool type: no image or raw block volumes in this run")
	}
	if slices.Contains(s.pools, "btrfs") {
		switch mnt, err := s.makePoolFS(ctx, "btrfs", "btrfs", 512<<20); {
		case errors.Is(err, errNoFS):
			t.Logf("no btrfs pool in this run: %v", err)
		case err != nil:
			t.Fatalf("btrfs pool: %v", err)
		default:
			poolFlags = append(poolFlags, "btrfs=btrfs:"+filepath.Join(mnt, "pool"))
			kinds = append(kinds, volKind{name: "btrfs", pool: "btrfs"})
			s.inline = append(s.inline, inlineVol{name: "scratch-btrfs", pool: "btrfs"})
		}
	}
	// the encrypted pool, for the encryption step (fscrypt; no dm-crypt here)
	if flag, err := s.makeCryptPool(ctx); err != nil {
		t.Fatalf("encrypted pool: %v", err)
	} else if flag != "" {
		poolFlags = append(poolFlags, flag)
	} else {
		t.Logf("no encrypted pool in this run: %s", s.crypt.skipped)
	}
	if s.cairn, err = newNodeCairn(filepath.Join(local, "node-exec.sh"), bin, s.node, s.dataDir, poolFlags); err != nil {
		t.Fatal(err)
	}

	steps := []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"register", s.testRegister},
		{"provision", func(t *testing.T) { s.testProvision(t, kinds) }},
		{"write", s.testWrite},
		{"pod-recreate", s.testPodRecreate},
		{"ephemeral-create", s.testEphemeralCreate},
		{"cairn-restart", s.testCairnRestart},
		{"ephemeral-delete", s.testEphemeralDelete},
		{"encryption", s.testEncryption},
		{"teardown", s.testTeardown},
	}
	for _, st := range steps {
		if !t.Run(st.name, st.fn) {
			t.Fatalf("step %s failed; later steps depend on it", st.name)
		}
	}
}

func randomSuffix() string {
	b := make([]byte, 3)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func (s *suite) labels() map[string]string { return map[string]string{runLabel: s.run} }

// csiDriverFromChart reads the CSIDriver object from the rendered chart.
func csiDriverFromChart() (*storagev1.CSIDriver, error) {
	b, err := os.ReadFile(renderedManifests)
	if err != nil {
		return nil, err
	}
	for _, doc := range strings.Split(string(b), "\n---") {
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil || meta.Kind != "CSIDriver" {
			continue
		}
		var d storagev1.CSIDriver
		if err := yaml.UnmarshalStrict([]byte(doc), &d); err != nil {
			return nil, fmt.Errorf("%s: CSIDriver: %w", renderedManifests, err)
		}
		return &d, nil
	}
	return nil, fmt.Errorf("%s has no CSIDriver", renderedManifests)
}

// testRegister creates the chart's CSIDriver, starts cairn with built-in
// registration (no node-driver-registrar) and waits for kubelet to list it
// in the node's CSINode, with its topology key, and to label the node.
func (s *suite) testRegister(t *testing.T) {
	ctx := context.Background()
	d, err := csiDriverFromChart()
	if err != nil {
		t.Fatal(err)
	}
	if d.Name != driverName {
		t.Fatalf("chart's CSIDriver is named %q, want %q", d.Name, driverName)
	}
	d.Labels = s.labels()
	if _, err := s.c.storage.CSIDrivers().Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create CSIDriver from the chart: %v", err)
	}
	s.madeCSID = true

	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: s.ns, Labels: s.labels()}}
	if _, err := s.c.core.Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	if err := s.cairn.start(ctx); err != nil {
		t.Fatalf("start cairn in the node namespace: %v\n%s", err, s.cairn.logTail(60))
	}
	t.Logf("cairn running as host pid %d, log %s", s.cairn.pid, s.cairn.logPath)

	if err := s.waitRegistered(ctx, 0); err != nil {
		t.Fatal(err)
	}
	err = waitFor(ctx, 60*time.Second, "node label "+topologyKey, func(ctx context.Context) (bool, error) {
		n, err := s.c.core.Nodes().Get(ctx, s.node, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return n.Labels[topologyKey] == s.node, fmt.Errorf("labels: %v", n.Labels)
	})
	if err != nil {
		t.Fatal(err)
	}
	// Pods need the namespace's default ServiceAccount, which a controller makes.
	err = waitFor(ctx, 60*time.Second, "default ServiceAccount in "+s.ns, func(ctx context.Context) (bool, error) {
		_, err := s.c.core.ServiceAccounts(s.ns).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// waitRegistered waits until cairn's log says kubelet registered it (after
// byte offset logFrom) and the CSINode lists the driver with its node ID
// and topology key.
func (s *suite) waitRegistered(ctx context.Context, logFrom int) error {
	err := waitFor(ctx, 90*time.Second, "kubelet to register "+driverName, func(ctx context.Context) (bool, error) {
		l := s.cairn.log()
		if len(l) < logFrom || !strings.Contains(l[logFrom:], "registered with kubelet") {
			return false, fmt.Errorf(`no "registered with kubelet" in cairn's log yet`)
		}
		cn, err := s.c.storage.CSINodes().Get(ctx, s.node, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, d := range cn.Spec.Drivers {
			if d.Name == driverName {
				if d.NodeID != s.node || !slices.Equal(d.TopologyKeys, []string{topologyKey}) {
					return false, stop(fmt.Errorf("CSINode lists %s with nodeID %q and topology keys %v; want %q and [%s]",
						driverName, d.NodeID, d.TopologyKeys, s.node, topologyKey))
				}
				return true, nil
			}
		}
		return false, fmt.Errorf("CSINode %s drivers: %+v", s.node, cn.Spec.Drivers)
	})
	if err != nil {
		return fmt.Errorf("%v\n%s\n%s", err, s.cairn.logTail(40), s.kubeletLog(30))
	}
	return nil
}

// capability is the CSI volume capability for a kind, as kubelet asks.
func (k volKind) capability() *csi.VolumeCapability {
	c := &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	if k.block {
		c.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
	} else {
		c.AccessType = &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: k.fsType}}
	}
	return c
}

// testProvision creates one volume per kind through CSI, the way
// external-provisioner would for a StorageClass of that pool (strict
// topology: this node), and binds each as a pre-provisioned PV and PVC.
func (s *suite) testProvision(t *testing.T, kinds []volKind) {
	ctx := context.Background()
	here := []*csi.Topology{{Segments: map[string]string{topologyKey: s.node}}}
	for _, k := range kinds {
		params := map[string]string{"pool": k.pool}
		if k.fsType != "" {
			params["csi.storage.k8s.io/fstype"] = k.fsType
		}
		cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		resp, err := s.cairn.controller().CreateVolume(cctx, &csi.CreateVolumeRequest{
			Name:                      fmt.Sprintf("pvc-e2e-%s-%s", s.run, k.name),
			CapacityRange:             &csi.CapacityRange{RequiredBytes: volumeBytes},
			VolumeCapabilities:        []*csi.VolumeCapability{k.capability()},
			Parameters:                params,
			AccessibilityRequirements: &csi.TopologyRequirement{Requisite: here, Preferred: here},
		})
		cancel()
		if err != nil {
			t.Fatalf("CreateVolume %s: %v\n%s", k.name, err, s.cairn.logTail(20))
		}
		vol := resp.GetVolume()
		if vol.GetCapacityBytes() < volumeBytes {
			t.Errorf("%s: capacity %d, asked for %d", k.name, vol.GetCapacityBytes(), volumeBytes)
		}
		if n := len(vol.GetAccessibleTopology()); n != 1 || vol.GetAccessibleTopology()[0].GetSegments()[topologyKey] != s.node {
			t.Errorf("%s: accessible topology %v, want {%s: %s}", k.name, vol.GetAccessibleTopology(), topologyKey, s.node)
		}
		v := &testVol{kind: k, id: vol.GetVolumeId(), bytes: vol.GetCapacityBytes(), attrs: vol.GetVolumeContext(),
			name: fmt.Sprintf("cairn-e2e-%s-%s", s.run, k.name)}
		s.vols = append(s.vols, v)
		t.Logf("%s: volume %s, %d bytes, volume context %v", k.name, v.id, v.bytes, v.attrs)

		if _, err := s.c.core.PersistentVolumes().Create(ctx, s.pv(v, vol.GetAccessibleTopology()), metav1.CreateOptions{}); err != nil {
			t.Fatalf("create PV for %s: %v", k.name, err)
		}
	}
	// Every claim first, then every wait: the claims bind side by side.
	for _, v := range s.vols {
		s.claim(t, v)
	}
	for _, v := range s.vols {
		s.waitBound(t, v)
	}
}

// pv describes v as external-provisioner would, pre-bound to its claim.
func (s *suite) pv(v *testVol, topo []*csi.Topology) *corev1.PersistentVolume {
	var terms []corev1.NodeSelectorTerm
	for _, tp := range topo {
		var exprs []corev1.NodeSelectorRequirement
		for k, val := range tp.GetSegments() {
			exprs = append(exprs, corev1.NodeSelectorRequirement{Key: k, Operator: corev1.NodeSelectorOpIn, Values: []string{val}})
		}
		terms = append(terms, corev1.NodeSelectorTerm{MatchExpressions: exprs})
	}
	mode := corev1.PersistentVolumeFilesystem
	if v.kind.block {
		mode = corev1.PersistentVolumeBlock
	}
	return &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: v.name, Labels: s.labels()},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: *resource.NewQuantity(v.bytes, resource.BinarySI)},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain, // the test deletes the volume itself
			StorageClassName:              "",
			VolumeMode:                    &mode,
			ClaimRef:                      &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: s.ns, Name: v.name},
			NodeAffinity:                  &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: terms}},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
				Driver:           driverName,
				VolumeHandle:     v.id,
				VolumeAttributes: v.attrs,
				FSType:           v.kind.fsType,
			}},
		},
	}
}

func (s *suite) pvc(v *testVol) *corev1.PersistentVolumeClaim {
	mode := corev1.PersistentVolumeFilesystem
	if v.kind.block {
		mode = corev1.PersistentVolumeBlock
	}
	none := ""
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: v.name, Namespace: s.ns, Labels: s.labels()},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: &none,
			VolumeName:       v.name,
			VolumeMode:       &mode,
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{
				corev1.ResourceStorage: *resource.NewQuantity(volumeBytes, resource.BinarySI)}},
		},
	}
}

// basePod is a busybox pod that idles until told to stop.
func (s *suite) basePod(name string) *corev1.Pod {
	grace := int64(5)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: s.ns, Labels: s.labels()},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: &grace,
			RestartPolicy:                 corev1.RestartPolicyNever,
			Containers: []corev1.Container{{
				Name:            "c",
				Image:           s.image,
				ImagePullPolicy: corev1.PullIfNotPresent,
				Command:         []string{"sh", "-c", `trap "exit 0" TERM; while :; do sleep 1; done`},
			}},
		},
	}
}

// volPod is a pod using v's PVC at mountPath, or devicePath for block.
func (s *suite) volPod(name string, v *testVol, group *int64) *corev1.Pod {
	p := s.basePod(name)
	p.Spec.Volumes = []corev1.Volume{{Name: "vol", VolumeSource: corev1.VolumeSource{
		PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: v.name}}}}
	if v.kind.block {
		p.Spec.Containers[0].VolumeDevices = []corev1.VolumeDevice{{Name: "vol", DevicePath: devicePath}}
	} else {
		p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "vol", MountPath: mountPath}}
	}
	if group != nil {
		p.Spec.SecurityContext = &corev1.PodSecurityContext{FSGroup: group}
	}
	return p
}

func podName(v *testVol, gen string) string { return v.kind.name + "-" + gen }

// runPod creates p and waits until its container runs.
func (s *suite) runPod(t *testing.T, p *corev1.Pod) {
	t.Helper()
	ctx := context.Background()
	created, err := s.c.core.Pods(s.ns).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s: %v", p.Name, err)
	}
	s.podUIDs[p.Name] = string(created.UID)
	err = waitFor(ctx, 3*time.Minute, "pod "+p.Name+" running", func(ctx context.Context) (bool, error) {
		pod, err := s.c.core.Pods(s.ns).Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		switch pod.Status.Phase {
		case corev1.PodFailed, corev1.PodSucceeded:
			return false, stop(fmt.Errorf("pod ended: %s %s", pod.Status.Phase, pod.Status.Message))
		}
		for _, cs := range pod.Status.ContainerStatuses {
			if cs.State.Running != nil {
				return true, nil
			}
		}
		return false, fmt.Errorf("phase %s, containers %+v", pod.Status.Phase, pod.Status.ContainerStatuses)
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, s.explain(ctx, "pod", p.Name))
	}
}

// deletePod deletes a pod and waits until it is gone, which kubelet allows
// only once the pod's volumes are unpublished.
func (s *suite) deletePod(t *testing.T, name string) {
	t.Helper()
	ctx := context.Background()
	if err := s.c.core.Pods(s.ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatalf("delete pod %s: %v", name, err)
	}
	err := waitFor(ctx, 3*time.Minute, "pod "+name+" gone", func(ctx context.Context) (bool, error) {
		pod, err := s.c.core.Pods(s.ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
		return false, fmt.Errorf("phase %s, deletionTimestamp %v", pod.Status.Phase, pod.DeletionTimestamp)
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, s.explain(ctx, "pod", name))
	}
}

// exec runs a shell script in a pod's container and returns its stdout.
// kubectl exec goes through the API server to kubelet; a failed attempt
// is retried twice, which the scripts here allow (they are idempotent).
func (s *suite) exec(pod, script string) (string, error) {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if attempt > 0 {
			time.Sleep(2 * time.Second)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		var out string
		out, err = s.c.kubectlRun(ctx, nil, "exec", "-n", s.ns, pod, "-c", "c", "--", "sh", "-c", script)
		cancel()
		if err == nil {
			return out, nil
		}
	}
	return "", err
}

func (s *suite) token(v string, slot int) string {
	return fmt.Sprintf("cairn-e2e-%s-%s-slot%d", s.run, v, slot)
}

// write stores token(slot) in slot of the volume: a file for mounts, the
// 4 KiB block number slot for raw block (written with dd, synced).
func (s *suite) write(t *testing.T, pod, volName string, block bool, dir string, slot int) {
	t.Helper()
	tok := s.token(volName, slot)
	script := fmt.Sprintf("grep -q ' %[1]s ' /proc/mounts && printf %%s %[2]s > %[1]s/slot%[3]d && sync", dir, tok, slot)
	if block {
		script = fmt.Sprintf("test -b %[1]s && printf %%s %[2]s | dd of=%[1]s bs=4096 seek=%[3]d conv=sync,notrunc,fsync", devicePath, tok, slot)
	}
	if out, err := s.exec(pod, script); err != nil {
		t.Fatalf("write slot %d of %s in pod %s: %v\n%s\n%s", slot, volName, pod, err, out, s.cairn.logTail(20))
	}
}

// check reads slot of the volume and compares it with token(slot).
func (s *suite) check(t *testing.T, pod, volName string, block bool, dir string, slot int) {
	t.Helper()
	want := s.token(volName, slot)
	script := fmt.Sprintf("cat %s/slot%d", dir, slot)
	if block {
		script = fmt.Sprintf("dd if=%s bs=4096 skip=%d count=1 2>/dev/null | head -c %d", devicePath, slot, len(want))
	}
	got, err := s.exec(pod, script)
	if err != nil {
		t.Fatalf("read slot %d of %s in pod %s: %v", slot, volName, pod, err)
	}
	if got != want {
		t.Fatalf("slot %d of %s in pod %s holds %q, want %q", slot, volName, pod, got, want)
	}
}

func (s *suite) writeVol(t *testing.T, pod string, v *testVol, slot int) {
	t.Helper()
	s.write(t, pod, v.kind.name, v.kind.block, mountPath, slot)
}

func (s *suite) checkVol(t *testing.T, pod string, v *testVol, slot int) {
	t.Helper()
	s.check(t, pod, v.kind.name, v.kind.block, mountPath, slot)
}

// testWrite runs one pod per volume and writes slot 1.
func (s *suite) testWrite(t *testing.T) {
	for _, v := range s.vols {
		s.runPod(t, s.volPod(podName(v, "a"), v, nil))
	}
	for _, v := range s.vols {
		s.writeVol(t, podName(v, "a"), v, 1)
		s.checkVol(t, podName(v, "a"), v, 1)
	}
	// The directory volume's data is in the pool, on the host.
	if err := findInTree(filepath.Join(s.dataDir, "pools", "default"), "slot1", s.token("dir", 1)); err != nil {
		t.Error(err)
	}
	// The teardown's leak check is only as good as its patterns: they must
	// see every live volume now.
	left, err := s.leftovers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range s.vols {
		if !hasLine(left, "mount: ", "/"+v.name) {
			t.Errorf("the leak check does not see the pod mount of %s (%s) in:\n%s", v.name, v.id, strings.Join(left, "\n"))
		}
		if v.kind.pool == "image" && !hasLine(left, "loop device: ", v.id) {
			t.Errorf("the leak check does not see the loop device of %s (%s) in:\n%s", v.name, v.id, strings.Join(left, "\n"))
		}
	}
}

// hasLine reports whether a line of lines starts with prefix and contains s.
func hasLine(lines []string, prefix, s string) bool {
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) && strings.Contains(l, s) {
			return true
		}
	}
	return false
}

// findInTree looks for a file named name holding content under root.
func findInTree(root, name, content string) error {
	found := false
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != name {
			return err
		}
		b, err := os.ReadFile(p)
		if err == nil && string(b) == content {
			found = true
		}
		return err
	})
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("no file %s holding %q under the dir pool %s", name, content, root)
	}
	return nil
}

// testPodRecreate deletes each pod and starts a new one on the volume, with
// an fsGroup for filesystem volumes (CSIDriver fsGroupPolicy File: kubelet
// changes the volume's group), which reads slot 1 and writes slot 2.
func (s *suite) testPodRecreate(t *testing.T) {
	for _, v := range s.vols {
		s.deletePod(t, podName(v, "a"))
	}
	g := int64(fsGroup)
	for _, v := range s.vols {
		var group *int64
		if !v.kind.block {
			group = &g
		}
		s.runPod(t, s.volPod(podName(v, "b"), v, group))
	}
	for _, v := range s.vols {
		pod := podName(v, "b")
		s.checkVol(t, pod, v, 1)
		s.writeVol(t, pod, v, 2)
		if v.kind.block {
			continue
		}
		out, err := s.exec(pod, "stat -c %g "+mountPath)
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(out) != fmt.Sprint(fsGroup) {
			t.Errorf("%s: group of %s is %q with fsGroup %d (CSIDriver fsGroupPolicy File)", v.kind.name, mountPath, strings.TrimSpace(out), fsGroup)
		}
	}
}

// listVolumes returns all of cairn's volumes by ID.
func (s *suite) listVolumes(ctx context.Context) (map[string]*csi.Volume, error) {
	out := map[string]*csi.Volume{}
	token := ""
	for {
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		resp, err := s.cairn.controller().ListVolumes(cctx, &csi.ListVolumesRequest{StartingToken: token})
		cancel()
		if err != nil {
			return nil, err
		}
		for _, e := range resp.GetEntries() {
			out[e.GetVolume().GetVolumeId()] = e.GetVolume()
		}
		if token = resp.GetNextToken(); token == "" {
			return out, nil
		}
	}
}

// ephemeralVolumes returns cairn's volumes that are not the persistent ones.
func (s *suite) ephemeralVolumes(ctx context.Context) (map[string]*csi.Volume, error) {
	all, err := s.listVolumes(ctx)
	for _, v := range s.vols {
		delete(all, v.id)
	}
	return all, err
}

const inlinePod = "inline"

// testEphemeralCreate runs a pod with CSI ephemeral inline volumes (one per
// pool type) and checks cairn created a volume for each, of the asked size
// and pool.
func (s *suite) testEphemeralCreate(t *testing.T) {
	ctx := context.Background()
	before, err := s.ephemeralVolumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(before) > 0 {
		t.Fatalf("cairn has volumes the test did not make: %v", before)
	}
	p := s.basePod(inlinePod)
	for _, iv := range s.inline {
		attrs := map[string]string{"size": "64Mi", "pool": iv.pool}
		if iv.fsType != "" {
			attrs["fsType"] = iv.fsType
		}
		p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: iv.name, VolumeSource: corev1.VolumeSource{
			CSI: &corev1.CSIVolumeSource{Driver: driverName, VolumeAttributes: attrs}}})
		p.Spec.Containers[0].VolumeMounts = append(p.Spec.Containers[0].VolumeMounts,
			corev1.VolumeMount{Name: iv.name, MountPath: "/" + iv.name})
	}
	// Inline volumes carry no topology: keep the pod where cairn runs.
	p.Spec.NodeSelector = map[string]string{topologyKey: s.node}
	s.runPod(t, p)
	for _, iv := range s.inline {
		s.write(t, inlinePod, iv.name, false, "/"+iv.name, 1)
		s.check(t, inlinePod, iv.name, false, "/"+iv.name, 1)
		if iv.fsType != "" { // an image of 64 MiB: the filesystem is no bigger
			out, err := s.exec(inlinePod, "df -k /"+iv.name+" | tail -1 | awk '{print $2}'")
			if err != nil {
				t.Fatal(err)
			}
			var kb int64
			if _, err := fmt.Sscan(out, &kb); err != nil || kb <= 0 || kb > 64<<10 {
				t.Errorf("inline %s: filesystem of %q KiB, want at most 64 MiB", iv.name, strings.TrimSpace(out))
			}
		}
	}

	eph, err := s.ephemeralVolumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var gotPools, wantPools []string
	for _, v := range eph {
		gotPools = append(gotPools, v.GetVolumeContext()["cairn.csi.dev/pool"])
		if v.GetCapacityBytes() < 64<<20 {
			t.Errorf("ephemeral volume %s has %d bytes, asked for 64Mi", v.GetVolumeId(), v.GetCapacityBytes())
		}
	}
	for _, iv := range s.inline {
		wantPools = append(wantPools, iv.pool)
	}
	sort.Strings(gotPools)
	sort.Strings(wantPools)
	if !slices.Equal(gotPools, wantPools) {
		t.Fatalf("ListVolumes while the inline pod runs: ephemeral volumes in pools %v, want %v (%v)", gotPools, wantPools, eph)
	}
}

// testCairnRestart SIGKILLs cairn while every pod runs, checks the pods
// still read and write (their mounts do not depend on the process), starts
// cairn again, waits for kubelet to register it again, and then checks the
// running pods and a new pod per volume, which needs cairn to publish.
func (s *suite) testCairnRestart(t *testing.T) {
	ctx := context.Background()
	oldPID := s.cairn.pid
	if err := s.cairn.signal(syscall.SIGKILL, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if pid, _ := findProcess(s.cairn.bin, s.dataDir); pid != 0 {
		t.Fatalf("cairn still running as pid %d after SIGKILL of %d", pid, oldPID)
	}
	for _, v := range s.vols { // cairn is down
		s.checkVol(t, podName(v, "b"), v, 2)
	}
	for _, iv := range s.inline {
		s.check(t, inlinePod, iv.name, false, "/"+iv.name, 1)
	}

	logFrom := len(s.cairn.log())
	if err := s.cairn.start(ctx); err != nil {
		t.Fatalf("restart cairn: %v\n%s", err, s.cairn.logTail(60))
	}
	t.Logf("cairn restarted: pid %d (was %d)", s.cairn.pid, oldPID)
	if err := s.waitRegistered(ctx, logFrom); err != nil {
		t.Fatal(err)
	}

	for _, v := range s.vols {
		pod := podName(v, "b")
		s.checkVol(t, pod, v, 2)
		s.writeVol(t, pod, v, 3)
	}
	for _, iv := range s.inline {
		s.write(t, inlinePod, iv.name, false, "/"+iv.name, 2)
		s.check(t, inlinePod, iv.name, false, "/"+iv.name, 2)
	}
	// A second pod per volume, next to the running one.
	for _, v := range s.vols {
		s.runPod(t, s.volPod(podName(v, "c"), v, nil))
	}
	for _, v := range s.vols {
		pod := podName(v, "c")
		for slot := 1; slot <= 3; slot++ {
			s.checkVol(t, pod, v, slot)
		}
		s.writeVol(t, pod, v, 4)
		s.checkVol(t, podName(v, "b"), v, 4)
	}
}

// testEphemeralDelete deletes the inline pod and checks cairn deleted its
// volumes.
func (s *suite) testEphemeralDelete(t *testing.T) {
	ctx := context.Background()
	s.deletePod(t, inlinePod)
	err := waitFor(ctx, 2*time.Minute, "ephemeral volumes deleted", func(ctx context.Context) (bool, error) {
		eph, err := s.ephemeralVolumes(ctx)
		if err != nil {
			return false, err
		}
		return len(eph) == 0, fmt.Errorf("ListVolumes still has %d ephemeral volumes: %v", len(eph), eph)
	})
	if err != nil {
		t.Fatalf("%v\n%s\n%s", err, s.cairn.logTail(40), s.kubeletLog(20))
	}
	if ents, err := os.ReadDir(filepath.Join(s.dataDir, "ephemeral")); err == nil && len(ents) > 0 {
		t.Errorf("ephemeral staging directories left in %s: %v", filepath.Join(s.dataDir, "ephemeral"), ents)
	}
}

// testTeardown deletes pods, claims, PVs and volumes in the order a user
// would, and checks that no mount and no loop device is left.
func (s *suite) testTeardown(t *testing.T) {
	ctx := context.Background()
	for name := range s.podUIDs {
		if err := s.c.core.Pods(s.ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
	}
	for name := range s.podUIDs {
		s.deletePod(t, name)
	}
	for _, v := range s.vols {
		if err := s.c.core.PersistentVolumeClaims(s.ns).Delete(ctx, v.name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := s.c.core.PersistentVolumes().Delete(ctx, v.name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, v := range s.vols {
		err := waitFor(ctx, 2*time.Minute, "PVC and PV "+v.name+" gone", func(ctx context.Context) (bool, error) {
			_, err1 := s.c.core.PersistentVolumeClaims(s.ns).Get(ctx, v.name, metav1.GetOptions{})
			_, err2 := s.c.core.PersistentVolumes().Get(ctx, v.name, metav1.GetOptions{})
			return apierrors.IsNotFound(err1) && apierrors.IsNotFound(err2), fmt.Errorf("pvc: %v, pv: %v", err1, err2)
		})
		if err != nil {
			t.Fatalf("%v\n%s", err, s.explain(ctx, "pv", v.name))
		}
	}
	// kubelet unstages after the last pod is gone, not necessarily before
	// the pod object is: DeleteVolume says FAILED_PRECONDITION until then.
	for _, v := range s.vols {
		err := waitFor(ctx, 2*time.Minute, "DeleteVolume "+v.id+" ("+v.kind.name+")", func(ctx context.Context) (bool, error) {
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			_, err := s.cairn.controller().DeleteVolume(cctx, &csi.DeleteVolumeRequest{VolumeId: v.id})
			return err == nil, err
		})
		if err != nil {
			t.Fatalf("%v\n%s", err, s.cairn.logTail(30))
		}
	}
	all, err := s.listVolumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) > 0 {
		t.Errorf("ListVolumes after deleting everything: %v", all)
	}
	var left []string
	err = waitFor(ctx, 30*time.Second, "no mounts or loop devices left", func(ctx context.Context) (bool, error) {
		left, err = s.leftovers(ctx)
		if err != nil {
			return false, err
		}
		return len(left) == 0, fmt.Errorf("%d left", len(left))
	})
	if err != nil {
		kmounts, _ := s.nodeExec(ctx, "findmnt", "-R", "/var/lib/kubelet")
		loops, _ := s.nodeExec(ctx, "losetup", "-l")
		t.Fatalf("%v:\n  %s\nfindmnt -R /var/lib/kubelet:\n%s\nlosetup -l:\n%s\n%s", err, strings.Join(left, "\n  "), kmounts, loops, s.cairn.logTail(30))
	}
}

// nodeExec runs a command in the node namespace.
func (s *suite) nodeExec(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return runCmd(ctx, nil, nil, "bash", append([]string{filepath.Join(s.local, "node-exec.sh")}, args...)...)
}

// leftovers lists mounts in the node namespace and loop devices that
// belong to this run: anything naming the data directory, a volume ID, a
// PV, a pod of the run, or the driver's staging directory.
func (s *suite) leftovers(ctx context.Context) ([]string, error) {
	marks := []string{s.dataDir, "/kubernetes.io/csi/" + driverName + "/"}
	for _, v := range s.vols {
		marks = append(marks, v.id, "/"+v.name+"/", "/"+v.name)
	}
	for _, uid := range s.podUIDs {
		marks = append(marks, uid)
	}
	match := func(line string) bool {
		for _, m := range marks {
			if strings.Contains(line, m) {
				return true
			}
		}
		return false
	}
	var left []string
	mounts, err := s.nodeExec(ctx, "findmnt", "-rn", "-o", "TARGET,SOURCE")
	if err != nil {
		return nil, err
	}
	for _, l := range strings.Split(mounts, "\n") {
		if l == "" || s.isPoolFS(strings.Fields(l)[0]) { // a pool itself
			continue
		}
		if match(l) {
			left = append(left, "mount: "+l)
		}
	}
	// Loop devices are global: /sys/block shows them from the host too.
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if back := strings.TrimSpace(string(b)); match(back) && !s.isPoolFS(back) {
			left = append(left, "loop device: "+strings.Split(f, "/")[3]+" -> "+back)
		}
	}
	return left, nil
}

// explain gathers what helps to understand a stuck object.
func (s *suite) explain(ctx context.Context, kind, name string) string {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	args := []string{"describe", kind, name}
	if kind != "pv" {
		args = append(args, "-n", s.ns)
	}
	desc, err := s.c.kubectlRun(ctx, nil, args...)
	if err != nil {
		desc += err.Error()
	}
	ev, err := s.c.kubectlRun(ctx, nil, "get", "events", "-n", s.ns, "--sort-by=.lastTimestamp")
	if err != nil {
		ev += err.Error()
	}
	return fmt.Sprintf("kubectl %s:\n%s\nevents in %s:\n%s\n%s\n%s", strings.Join(args, " "), desc, s.ns, tail(ev, 30), s.cairn.logTail(30), s.kubeletLog(20))
}

// kubeletLog returns the local cluster's kubelet log lines about CSI.
func (s *suite) kubeletLog(n int) string {
	p := filepath.Join(k8sLocalRoot(), "logs", "kubelet.log")
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, driverName) || strings.Contains(l, "csi") || strings.Contains(l, s.ns) {
			lines = append(lines, l)
		}
	}
	return fmt.Sprintf("kubelet log (%s), CSI lines, last %d:\n%s", p, n, tail(strings.Join(lines, "\n"), n))
}

// diagnostics is everything worth seeing when the test failed.
func (s *suite) diagnostics() string {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var b strings.Builder
	fmt.Fprintf(&b, "==== diagnostics (run %s)\n", s.run)
	for _, args := range [][]string{
		{"get", "pods,pvc", "-n", s.ns, "-o", "wide"},
		{"get", "pv", "-l", runLabel + "=" + s.run, "-o", "wide"},
		{"get", "csinode", s.node, "-o", "yaml"},
		{"describe", "pods", "-n", s.ns},
		{"get", "events", "-n", s.ns, "--sort-by=.lastTimestamp"},
	} {
		out, err := s.c.kubectlRun(ctx, nil, args...)
		fmt.Fprintf(&b, "--- kubectl %s\n%s", strings.Join(args, " "), tail(out, 80))
		if err != nil {
			fmt.Fprintf(&b, "%v\n", err)
		}
	}
	for _, args := range [][]string{{"findmnt", "-R", "/var/lib/kubelet"}, {"losetup", "-l"}} {
		out, err := s.nodeExec(ctx, args...)
		fmt.Fprintf(&b, "--- node-exec.sh %s\n%s%v\n", strings.Join(args, " "), out, err)
	}
	if s.cairn != nil {
		fmt.Fprintf(&b, "--- %s\n", s.cairn.logTail(150))
	}
	fmt.Fprintf(&b, "--- %s\n", s.kubeletLog(60))
	return b.String()
}

// cleanup removes whatever the run left, in dependency order, whether or
// not the steps got that far. Errors are logged, not fatal: the next item
// may still be removable.
func (s *suite) cleanup(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	logErr := func(what string, err error) {
		if err != nil && !apierrors.IsNotFound(err) {
			t.Logf("cleanup: %s: %v", what, err)
		}
	}
	sel := metav1.ListOptions{LabelSelector: runLabel + "=" + s.run}
	// kubelet needs cairn to unmount the pods' volumes: if the run stopped
	// while it was down (a failed restart), try once more.
	if s.cairn != nil && s.cairn.cmd != nil && !s.cairn.running() {
		logErr("start cairn again for the cleanup", s.cairn.start(ctx))
	}
	if _, err := s.c.core.Namespaces().Get(ctx, s.ns, metav1.GetOptions{}); err == nil {
		logErr("delete pods", s.c.core.Pods(s.ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}))
		logErr("pods gone", waitFor(ctx, 3*time.Minute, "pods gone", func(ctx context.Context) (bool, error) {
			l, err := s.c.core.Pods(s.ns).List(ctx, metav1.ListOptions{})
			return err == nil && len(l.Items) == 0, err
		}))
		logErr("delete PVCs", s.c.core.PersistentVolumeClaims(s.ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}))
	}
	logErr("delete PVs", s.c.core.PersistentVolumes().DeleteCollection(ctx, metav1.DeleteOptions{}, sel))
	logErr("PVs gone", waitFor(ctx, 2*time.Minute, "PVs gone", func(ctx context.Context) (bool, error) {
		l, err := s.c.core.PersistentVolumes().List(ctx, sel)
		return err == nil && len(l.Items) == 0, err
	}))
	if s.cairn != nil && s.cairn.running() {
		logErr("delete cairn volumes", waitFor(ctx, 90*time.Second, "all volumes deleted", func(ctx context.Context) (bool, error) {
			all, err := s.listVolumes(ctx)
			if err != nil {
				return false, err
			}
			var last error
			for id := range all {
				cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				_, err := s.cairn.controller().DeleteVolume(cctx, &csi.DeleteVolumeRequest{VolumeId: id})
				cancel()
				if err != nil {
					last = err
				}
			}
			return last == nil, last
		}))
	}
	if s.cairn != nil {
		logErr("stop cairn", s.cairn.stop())
	}
	if s.madeCSID {
		logErr("delete CSIDriver", s.c.storage.CSIDrivers().Delete(ctx, driverName, metav1.DeleteOptions{}))
	}
	logErr("delete namespace", s.c.core.Namespaces().Delete(ctx, s.ns, metav1.DeleteOptions{}))

	for _, p := range s.poolFSs {
		if _, err := s.nodeExec(ctx, "umount", p.mnt); err != nil {
			logErr("unmount the pool filesystem "+p.mnt, err)
			_, err = s.nodeExec(ctx, "umount", "-l", p.mnt)
			logErr("unmount -l the pool filesystem "+p.mnt, err)
		}
		files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
		for _, f := range files { // mount -o loop detaches on unmount; make sure
			if b, err := os.ReadFile(f); err == nil && strings.TrimSpace(string(b)) == p.img {
				_, err := runCmd(ctx, nil, nil, "losetup", "-d", "/dev/"+strings.Split(f, "/")[3])
				logErr("detach the loop device of "+p.img, err)
			}
		}
	}

	// Last resort for what should not be there: the teardown step has
	// already failed the test if anything was left.
	if left, err := s.leftovers(ctx); err == nil {
		for _, l := range left {
			t.Logf("cleanup: removing leftover %s", l)
			f := strings.Fields(l)
			switch {
			case strings.HasPrefix(l, "mount: "):
				_, err := s.nodeExec(ctx, "umount", "-l", f[1])
				logErr("umount "+f[1], err)
			case strings.HasPrefix(l, "loop device: "):
				_, err := runCmd(ctx, nil, nil, "losetup", "-d", "/dev/"+f[2])
				logErr("losetup -d "+f[2], err)
			}
		}
	}
	if s.cairn != nil {
		if !t.Failed() && os.Getenv("CAIRN_E2E_KEEP_LOG") == "" {
			os.Remove(s.cairn.logPath)
		} else {
			t.Logf("cairn's log is kept in %s", s.cairn.logPath)
		}
	}
	logErr("remove data dir", os.RemoveAll(s.dataDir))
}
