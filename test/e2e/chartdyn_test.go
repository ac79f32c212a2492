package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/apimachinery/pkg/api/resource"
)

// TestChartDynamic checks Cairn installed through its Helm chart
// (test/e2e/install.sh, values-e2e.yaml) with the real kubernetes-csi
// sidecars: dynamic provisioning by external-provisioner, CSIStorageCapacity,
// snapshots through snapshot-controller and csi-snapshotter, restore and
// clone, expansion through csi-resizer and kubelet, raw block, deletion with
// nothing left behind, and a cairn pod killed while it provisions.
//
// It runs only when CAIRN_E2E_CHART=1 (run.sh sets it after install.sh):
// the chart install needs the images of hack/image.sh and hack/sidecars.sh.
func TestChartDynamic(t *testing.T) {
	if os.Getenv("CAIRN_E2E_CHART") != "1" {
		t.Skip("CAIRN_E2E_CHART is not 1: needs Cairn installed by test/e2e/install.sh (test/e2e/run.sh does it)")
	}
	c := needCluster(t)
	d := &dyn{c: c, local: k8sLocalDir(t), ns: "cairn-dyn-" + randomSuffix()}
	ctx := context.Background()
	host, _ := os.Hostname()
	d.node = strings.ToLower(host)
	d.image = os.Getenv("CAIRN_E2E_IMAGE")
	if d.image == "" {
		d.image = "local/busybox:1.35"
	}
	if _, err := d.k(ctx, nil, "create", "namespace", d.ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(d.diagnostics())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if _, err := d.kWait(ctx, 4*time.Minute, "delete", "namespace", d.ns, "--wait=true"); err != nil {
			t.Logf("cleanup: %v", err)
		}
	})

	// pool entries before anything of this test exists
	before := map[string][]string{}
	for _, p := range dynPools {
		before[p.pool] = d.poolEntries(ctx, t, p)
	}

	t.Run("capacity", func(t *testing.T) { d.testCapacity(ctx, t) })
	t.Run("pools", func(t *testing.T) {
		for _, p := range dynPools {
			t.Run(p.name, func(t *testing.T) {
				t.Parallel()
				d.testPool(ctx, t, p)
			})
		}
	})
	t.Run("kill-mid-provisioning", func(t *testing.T) { d.testKillMidProvisioning(ctx, t) })
	t.Run("no-leaks", func(t *testing.T) { d.testNoLeaks(ctx, t, before) })
}

// dynPool is a pool of values-e2e.yaml with its StorageClass.
type dynPool struct {
	name   string // of the subtest and the objects
	pool   string
	class  string
	fsType string // image pools
	size   string // of the first PVC
	grow   string // what it is expanded to
	path   string // in the node namespace
}

var dynPools = []dynPool{
	{name: "dir", pool: "default", class: "cairn-dir", size: "64Mi", grow: "128Mi", path: "/var/lib/cairn/pools/default"},
	{name: "btrfs", pool: "btrfs", class: "cairn-btrfs", size: "64Mi", grow: "128Mi", path: "/var/lib/cairn/btrfs"},
	{name: "ext4", pool: "images", class: "cairn-images", fsType: "ext4", size: "128Mi", grow: "256Mi", path: "/var/lib/cairn/pools/images"},
	{name: "xfs", pool: "xfs", class: "cairn-images-xfs", fsType: "xfs", size: "512Mi", grow: "768Mi", path: "/var/lib/cairn/pools/xfs"},
}

const (
	dynNamespace = "cairn-system"
	nodeSelector = "app.kubernetes.io/instance=cairn,app.kubernetes.io/component=node"
)

type dyn struct {
	c     *cluster
	local string
	ns    string
	node  string
	image string

	mu      sync.Mutex
	handles []string // volume handles of every PV seen
	pvs     []string
}

func (d *dyn) k(ctx context.Context, stdin []byte, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	return d.c.kubectlRun(ctx, stdin, args...)
}

// kWait runs a kubectl command that waits (delete --wait, rollout status)
// with --timeout=wait, under a context a little longer than that: under
// k's two minutes, kubectl was killed before its own timeout and said
// only "signal: killed".
func (d *dyn) kWait(ctx context.Context, wait time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, wait+30*time.Second)
	defer cancel()
	return d.c.kubectlRun(ctx, nil, append(args, "--timeout="+wait.String())...)
}

func (d *dyn) apply(ctx context.Context, t *testing.T, manifest string) {
	t.Helper()
	if _, err := d.k(ctx, []byte(manifest), "apply", "-n", d.ns, "-f", "-"); err != nil {
		t.Fatal(err)
	}
}

func (d *dyn) get(ctx context.Context, kind, name, jsonpath string) (string, error) {
	return d.k(ctx, nil, "get", "-n", d.ns, kind, name, "-o", "jsonpath="+jsonpath)
}

func (d *dyn) nodeExec(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return runCmd(ctx, nil, nil, "bash", append([]string{filepath.Join(d.local, "node-exec.sh")}, args...)...)
}

func pvcYAML(name, class, size, mode, source string) string {
	s := fmt.Sprintf(`apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: %s}
spec:
  storageClassName: %s
  accessModes: [ReadWriteOnce]
  volumeMode: %s
  resources: {requests: {storage: %s}}
`, name, class, mode, size)
	return s + source
}

func (d *dyn) podYAML(name, claim string, block bool) string {
	vol := "volumeMounts: [{name: v, mountPath: /data}]"
	if block {
		vol = "volumeDevices: [{name: v, devicePath: /dev/cairn}]"
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %s}
spec:
  terminationGracePeriodSeconds: 1
  nodeSelector: {kubernetes.io/hostname: %s}
  containers:
    - name: c
      image: %s
      command: [sh, -c, "trap 'exit 0' TERM; while :; do sleep 1; done"]
      %s
  volumes: [{name: v, persistentVolumeClaim: {claimName: %s}}]
`, name, d.node, d.image, vol, claim)
}

// waitPod waits for a pod to run; on failure it reports the pod's events.
func (d *dyn) waitPod(ctx context.Context, t *testing.T, name string, timeout time.Duration) {
	t.Helper()
	err := waitFor(ctx, timeout, "pod "+name+" running", func(ctx context.Context) (bool, error) {
		ph, err := d.get(ctx, "pod", name, "{.status.phase}")
		if ph == "Failed" || ph == "Succeeded" {
			return false, stop(fmt.Errorf("phase %s", ph))
		}
		return ph == "Running", err
	})
	if err != nil {
		desc, _ := d.k(ctx, nil, "describe", "-n", d.ns, "pod", name)
		t.Fatalf("%v\n%s", err, tail(desc, 30))
	}
}

func (d *dyn) exec(ctx context.Context, pod, script string) (string, error) {
	return d.k(ctx, nil, "exec", "-n", d.ns, pod, "--", "sh", "-c", script)
}

func (d *dyn) recordPV(ctx context.Context, t *testing.T, pvc string) {
	t.Helper()
	pv, err := d.get(ctx, "pvc", pvc, "{.spec.volumeName}")
	if err != nil || pv == "" {
		t.Fatalf("pvc %s has no volume: %v", pvc, err)
	}
	h, err := d.k(ctx, nil, "get", "pv", pv, "-o", "jsonpath={.spec.csi.volumeHandle}")
	if err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	d.pvs = append(d.pvs, pv)
	d.handles = append(d.handles, h)
	d.mu.Unlock()
	aff, _ := d.k(ctx, nil, "get", "pv", pv, "-o", "jsonpath={.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0]}")
	if !strings.Contains(aff, topologyKey) || !strings.Contains(aff, d.node) {
		t.Errorf("pv %s: node affinity %s does not name %s=%s", pv, aff, topologyKey, d.node)
	}
}

// testCapacity: one CSIStorageCapacity per StorageClass for this node,
// with a capacity no larger than the pool's filesystem and not zero.
func (d *dyn) testCapacity(ctx context.Context, t *testing.T) {
	type csc struct {
		StorageClassName string `json:"storageClassName"`
		Capacity         string `json:"capacity"`
		MaximumVolume    string `json:"maximumVolumeSize"`
		NodeTopology     struct {
			MatchLabels map[string]string `json:"matchLabels"`
		} `json:"nodeTopology"`
	}
	var list struct{ Items []csc }
	// One object per class and node, once the provisioner's capacity
	// controller has settled: on a loaded machine it can create a second
	// one before its informer shows the first, and removes it later.
	err := waitFor(ctx, 2*time.Minute, "one CSIStorageCapacity for every class", func(ctx context.Context) (bool, error) {
		out, err := d.k(ctx, nil, "get", "csistoragecapacities", "-n", dynNamespace, "-o", "json")
		if err != nil {
			return false, err
		}
		list.Items = nil
		if err := json.Unmarshal([]byte(out), &list); err != nil {
			return false, stop(err)
		}
		for _, p := range dynPools {
			if n := countFunc(list.Items, func(c csc) bool { return c.StorageClassName == p.class }); n != 1 {
				return false, fmt.Errorf("%d for %s", n, p.class)
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range dynPools {
		n := 0
		for _, c := range list.Items {
			if c.StorageClassName != p.class {
				continue
			}
			n++
			if got := c.NodeTopology.MatchLabels[topologyKey]; got != d.node {
				t.Errorf("%s: CSIStorageCapacity topology %v, want %s=%s", p.class, c.NodeTopology.MatchLabels, topologyKey, d.node)
			}
			q, err := resource.ParseQuantity(c.Capacity)
			if err != nil {
				t.Errorf("%s: capacity %q: %v", p.class, c.Capacity, err)
				continue
			}
			df, err := d.nodeExec(ctx, "df", "-B1", "--output=size,avail", p.path)
			if err != nil {
				t.Fatal(err)
			}
			f := strings.Fields(df)
			size, _ := strconv.ParseInt(f[len(f)-2], 10, 64)
			avail, _ := strconv.ParseInt(f[len(f)-1], 10, 64)
			t.Logf("%s: capacity %s (%d), maximumVolumeSize %s; pool filesystem size %d, available %d", p.class, c.Capacity, q.Value(), c.MaximumVolume, size, avail)
			if q.Value() <= 0 || q.Value() > size {
				t.Errorf("%s: capacity %d is not in (0, %d], the pool filesystem's size", p.class, q.Value(), size)
			}
			// what the pool's filesystem has free, give or take what other
			// writers did since the last poll (2% of the filesystem)
			if diff := q.Value() - avail; diff > size/50 || -diff > size/50 {
				t.Errorf("%s: capacity %d, but the pool filesystem has %d available", p.class, q.Value(), avail)
			}
		}
		if n != 1 {
			t.Errorf("%s: %d CSIStorageCapacity objects, want 1 (one node)", p.class, n)
		}
	}
}

// hasSysResource: ext4 grows online only with CAP_SYS_RESOURCE. The node's
// containers get at most the bounding set of this machine's root.
func hasSysResource() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapBnd:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && n&(1<<24) != 0
		}
	}
	return false
}

func (d *dyn) testPool(ctx context.Context, t *testing.T, p dynPool) {
	src, token := p.name+"-src", "cairn-"+p.name+"-"+randomSuffix()

	// WaitForFirstConsumer: nothing is provisioned before a pod uses the claim
	d.apply(ctx, t, pvcYAML(src, p.class, p.size, "Filesystem", ""))
	time.Sleep(3 * time.Second)
	if ph, _ := d.get(ctx, "pvc", src, "{.status.phase}"); ph != "Pending" {
		t.Errorf("pvc %s is %q before any pod uses it, want Pending (WaitForFirstConsumer)", src, ph)
	}
	d.apply(ctx, t, d.podYAML(src, src, false))
	d.waitPod(ctx, t, src, 4*time.Minute)
	d.recordPV(ctx, t, src)
	if _, err := d.exec(ctx, src, "echo "+token+" > /data/f && sync"); err != nil {
		t.Fatal(err)
	}
	df, _ := d.exec(ctx, src, "df -k /data | tail -1")
	t.Logf("df in the pod (%s, %s requested): %s", p.class, p.size, strings.TrimSpace(df))

	t.Run("snapshot", func(t *testing.T) {
		d.apply(ctx, t, fmt.Sprintf(`apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {name: %s-snap}
spec:
  volumeSnapshotClassName: cairn
  source: {persistentVolumeClaimName: %s}
`, p.name, src))
		err := waitFor(ctx, 3*time.Minute, "snapshot ready", func(ctx context.Context) (bool, error) {
			r, err := d.get(ctx, "volumesnapshot", p.name+"-snap", "{.status.readyToUse}")
			return r == "true", err
		})
		if err != nil {
			desc, _ := d.k(ctx, nil, "describe", "-n", d.ns, "volumesnapshot", p.name+"-snap")
			t.Fatalf("%v\n%s", err, tail(desc, 30))
		}
		for _, r := range []struct{ name, source string }{
			{p.name + "-restore", "  dataSource: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: " + p.name + "-snap}\n"},
			{p.name + "-clone", "  dataSource: {kind: PersistentVolumeClaim, name: " + src + "}\n"},
		} {
			d.apply(ctx, t, pvcYAML(r.name, p.class, p.size, "Filesystem", r.source))
			d.apply(ctx, t, d.podYAML(r.name, r.name, false))
			d.waitPod(ctx, t, r.name, 4*time.Minute)
			d.recordPV(ctx, t, r.name)
			got, err := d.exec(ctx, r.name, "cat /data/f")
			if err != nil || strings.TrimSpace(got) != token {
				t.Errorf("%s: /data/f = %q (%v), want %q", r.name, got, err, token)
			}
		}
	})

	t.Run("expand-online", func(t *testing.T) {
		if p.fsType == "ext4" && !hasSysResource() {
			t.Skip("ext4 grows online only with CAP_SYS_RESOURCE, which root lacks on this machine (so do the node's containers); the xfs image class covers online growth here")
		}
		if _, err := d.k(ctx, nil, "patch", "-n", d.ns, "pvc", src, "--type=merge", "-p",
			`{"spec":{"resources":{"requests":{"storage":"`+p.grow+`"}}}}`); err != nil {
			t.Fatal(err)
		}
		want := resource.MustParse(p.grow)
		err := waitFor(ctx, 3*time.Minute, "pvc "+src+" capacity "+p.grow, func(ctx context.Context) (bool, error) {
			got, err := d.get(ctx, "pvc", src, "{.status.capacity.storage}")
			if err != nil || got == "" {
				return false, err
			}
			q, err := resource.ParseQuantity(got)
			return err == nil && q.Cmp(want) >= 0, err
		})
		if err != nil {
			desc, _ := d.k(ctx, nil, "describe", "-n", d.ns, "pvc", src)
			t.Fatalf("%v\n%s", err, tail(desc, 20))
		}
		if p.fsType == "" {
			// dir and btrfs volumes without a quota show the pool's
			// filesystem in df (docs/kubernetes.md): nothing to see inside
			df, _ := d.exec(ctx, src, "df -k /data | tail -1")
			t.Logf("%s: PVC capacity %s; df in the pod (the pool's filesystem): %s", p.class, p.grow, strings.TrimSpace(df))
			return
		}
		oldQ := resource.MustParse(p.size)
		oldKB := oldQ.Value() / 1024
		err = waitFor(ctx, 2*time.Minute, "the pod sees the larger filesystem", func(ctx context.Context) (bool, error) {
			out, err := d.exec(ctx, src, "df -k /data | tail -1")
			if err != nil {
				return false, err
			}
			f := strings.Fields(out)
			if len(f) < 2 {
				return false, fmt.Errorf("df: %q", out)
			}
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			if kb <= oldKB {
				return false, fmt.Errorf("df shows %d KiB, not above %d KiB", kb, oldKB)
			}
			t.Logf("%s: df in the pod after growing to %s: %d KiB", p.class, p.grow, kb)
			return true, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if got, err := d.exec(ctx, src, "cat /data/f"); err != nil || strings.TrimSpace(got) != token {
			t.Errorf("after expansion /data/f = %q (%v)", got, err)
		}
	})

	if p.fsType == "ext4" {
		t.Run("raw-block", func(t *testing.T) {
			name := p.name + "-block"
			d.apply(ctx, t, pvcYAML(name, p.class, "64Mi", "Block", ""))
			d.apply(ctx, t, d.podYAML(name, name, true))
			d.waitPod(ctx, t, name, 4*time.Minute)
			d.recordPV(ctx, t, name)
			out, err := d.exec(ctx, name, "echo "+token+" | dd of=/dev/cairn bs=512 count=1 conv=fsync 2>/dev/null && dd if=/dev/cairn bs=512 count=1 2>/dev/null | head -1")
			if err != nil || strings.TrimSpace(strings.Trim(out, "\x00")) != token {
				t.Errorf("raw block read back %q (%v), want %q", out, err, token)
			}
		})
	}

	t.Run("delete", func(t *testing.T) {
		d.deleteAll(ctx, t, p.name)
	})
}

// deleteAll deletes this pool's pods, snapshots and claims, and waits for
// their PVs and VolumeSnapshotContents to go.
func (d *dyn) deleteAll(ctx context.Context, t *testing.T, prefix string) {
	t.Helper()
	out, _ := d.k(ctx, nil, "get", "-n", d.ns, "pods,volumesnapshots,pvc", "-o", "name")
	var mine []string
	for _, n := range strings.Fields(out) {
		if strings.HasPrefix(n[strings.Index(n, "/")+1:], prefix+"-") {
			mine = append(mine, n)
		}
	}
	// pods first, then snapshots, then claims: a claim in use is not deleted
	for _, kind := range []string{"pod/", "volumesnapshot", "persistentvolumeclaim/"} {
		var these []string
		for _, n := range mine {
			if strings.HasPrefix(n, kind) {
				these = append(these, n)
			}
		}
		if len(these) == 0 {
			continue
		}
		if _, err := d.kWait(ctx, 3*time.Minute, append([]string{"delete", "-n", d.ns, "--wait=true"}, these...)...); err != nil {
			t.Error(err)
		}
	}
	d.mu.Lock()
	pvs := slices.Clone(d.pvs)
	d.mu.Unlock()
	err := waitFor(ctx, 3*time.Minute, "PVs deleted", func(ctx context.Context) (bool, error) {
		out, err := d.k(ctx, nil, "get", "pv", "-o", "jsonpath={.items[*].metadata.name}")
		if err != nil {
			return false, err
		}
		var left []string
		for _, pv := range strings.Fields(out) {
			if slices.Contains(pvs, pv) {
				if c, _ := d.k(ctx, nil, "get", "pv", pv, "-o", "jsonpath={.spec.claimRef.name}"); strings.HasPrefix(c, prefix+"-") {
					left = append(left, pv)
				}
			}
		}
		return len(left) == 0, fmt.Errorf("left: %v", left)
	})
	if err != nil {
		t.Error(err)
	}
}

// testKillMidProvisioning force-deletes cairn's node pod (cairn and its
// external-provisioner) and at once creates a claim and its pod, so that
// the claim is provisioned while the pod is dying or by its successor, and
// checks that the claim binds and the pod runs once the DaemonSet has a
// new pod. (Killing right after the claim was created, as this step first
// did, raced the provisioner: on a warm cluster the claim was Bound before
// the kill five times in a row, and nothing was tested.)
//
// Before the kill, a claim "crash-0" is staged and published by the pod
// about to be killed, for a running pod: the new pod must publish it for a
// second pod, and both must be deletable at the end. Images attached by
// the killed container report their path from its bind mount, which the
// new container does not have; cairn once took such volumes' mounts for
// someone else's, and their pods stayed Terminating.
func (d *dyn) testKillMidProvisioning(ctx context.Context, t *testing.T) {
	d.apply(ctx, t, pvcYAML("crash-0", "cairn-images", "64Mi", "Filesystem", "")+"---\n"+d.podYAML("crash-0", "crash-0", false))
	d.waitPod(ctx, t, "crash-0", 4*time.Minute)
	d.recordPV(ctx, t, "crash-0")
	if _, err := d.exec(ctx, "crash-0", "echo staged-before > /data/f && sync"); err != nil {
		t.Fatal(err)
	}
	// every pod of the step goes at the end, whatever failed: NodeUnpublish
	// and NodeUnstage by the new pod
	defer d.deleteAll(ctx, t, "crash")

	out, err := d.k(ctx, nil, "delete", "pod", "-n", dynNamespace, "-l", nodeSelector, "--grace-period=0", "--force", "--wait=false")
	if err != nil {
		t.Fatal(err)
	}
	name := "crash-1"
	d.apply(ctx, t, pvcYAML(name, "cairn-images", "1Gi", "Filesystem", "")+"---\n"+d.podYAML(name, name, false))
	ph, _ := d.get(ctx, "pvc", name, "{.status.phase}")
	t.Logf("killed cairn's node pod (%s), then created claim %s: %s right after", strings.TrimSpace(out), name, ph)
	if _, err := d.kWait(ctx, 4*time.Minute, "rollout", "status", "-n", dynNamespace, "daemonset/cairn-node"); err != nil {
		t.Fatal(err)
	}
	d.waitPod(ctx, t, name, 5*time.Minute)
	d.recordPV(ctx, t, name)
	if got, err := d.exec(ctx, name, "echo ok > /data/f && cat /data/f"); err != nil || strings.TrimSpace(got) != "ok" {
		t.Errorf("write after the crash: %q (%v)", got, err)
	}
	// the claim the killed pod staged: published again by the new one
	d.apply(ctx, t, d.podYAML("crash-0-again", "crash-0", false))
	d.waitPod(ctx, t, "crash-0-again", 3*time.Minute)
	if got, err := d.exec(ctx, "crash-0-again", "cat /data/f"); err != nil || strings.TrimSpace(got) != "staged-before" {
		t.Errorf("the claim staged before the kill reads %q (%v) in a new pod, want staged-before", got, err)
	}
}

// poolEntries lists a pool's entries in the node namespace: its top
// directory and the one below (volumes/<id>, snapshots/<id>, ...).
func (d *dyn) poolEntries(ctx context.Context, t *testing.T, p dynPool) []string {
	t.Helper()
	out, err := d.nodeExec(ctx, "find", p.path, "-mindepth", "1", "-maxdepth", "2")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(out)
}

// testNoLeaks: after every claim is gone, cairn lists none of the test's
// volumes and no snapshots, the pools hold what they held before, and no
// mount in the node namespace nor loop device names a volume of the test.
func (d *dyn) testNoLeaks(ctx context.Context, t *testing.T, before map[string][]string) {
	d.mu.Lock()
	handles, pvs := slices.Clone(d.handles), slices.Clone(d.pvs)
	d.mu.Unlock()
	if len(handles) == 0 {
		t.Fatal("no volume was provisioned")
	}
	// store records: ListVolumes and ListSnapshots on cairn's socket (kubelet's
	// plugin directory is the same on the host and in the node namespace)
	sock := socket
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cc := csi.NewControllerClient(conn)
	err = waitFor(ctx, 2*time.Minute, "cairn forgets the test's volumes", func(ctx context.Context) (bool, error) {
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		lv, err := cc.ListVolumes(cctx, &csi.ListVolumesRequest{})
		if err != nil {
			return false, err
		}
		var left []string
		for _, e := range lv.GetEntries() {
			if slices.Contains(handles, e.GetVolume().GetVolumeId()) {
				left = append(left, e.GetVolume().GetVolumeId())
			}
		}
		ls, err := cc.ListSnapshots(cctx, &csi.ListSnapshotsRequest{})
		if err != nil {
			return false, err
		}
		for _, e := range ls.GetEntries() {
			left = append(left, "snapshot "+e.GetSnapshot().GetSnapshotId())
		}
		return len(left) == 0, fmt.Errorf("still listed: %v", left)
	})
	if err != nil {
		t.Error(err)
	}
	for _, p := range dynPools {
		if now := d.poolEntries(ctx, t, p); !slices.Equal(now, before[p.pool]) {
			t.Errorf("pool %s (%s): entries %v, before the test %v", p.pool, p.path, now, before[p.pool])
		}
	}
	marks := append(slices.Clone(handles), pvs...)
	mounts, err := d.nodeExec(ctx, "findmnt", "-rn", "-o", "TARGET,SOURCE")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(mounts, "\n") {
		for _, m := range marks {
			if m != "" && strings.Contains(l, m) {
				t.Errorf("mount left in the node namespace: %s", l)
				break
			}
		}
	}
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range files {
		b, _ := os.ReadFile(f)
		back := strings.TrimSpace(string(b))
		if strings.HasPrefix(back, "/var/lib/cairn/pools/") {
			t.Errorf("loop device left: %s -> %s", strings.Split(f, "/")[3], back)
		}
	}
	t.Logf("checked %d volumes: no store record, pool entry, mount or loop device left", len(handles))
}

func (d *dyn) diagnostics() string {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var b strings.Builder
	for _, args := range [][]string{
		{"get", "-n", d.ns, "pods,pvc,volumesnapshots", "-o", "wide"},
		{"get", "pv,volumesnapshotcontents", "-o", "wide"},
		{"get", "events", "-n", d.ns, "--sort-by=.lastTimestamp"},
		{"get", "pods", "-n", dynNamespace, "-o", "wide"},
		{"logs", "-n", dynNamespace, "-l", nodeSelector, "--all-containers", "--tail=60", "--prefix"},
		{"logs", "-n", "kube-system", "deploy/snapshot-controller", "--tail=40"},
	} {
		out, err := d.k(ctx, nil, args...)
		fmt.Fprintf(&b, "--- kubectl %s\n%s", strings.Join(args, " "), tail(out, 80))
		if err != nil {
			fmt.Fprintf(&b, "%v\n", err)
		}
	}
	// what cairn's identity checks see: staged and published mounts, and
	// the loop devices' backing files as the kernel reports them
	for _, args := range [][]string{{"findmnt", "-R", "/var/lib/kubelet", "-o", "TARGET,SOURCE,FSTYPE"}, {"losetup", "-l"}} {
		out, err := d.nodeExec(ctx, args...)
		fmt.Fprintf(&b, "--- node-exec.sh %s\n%s", strings.Join(args, " "), tail(out, 60))
		if err != nil {
			fmt.Fprintf(&b, "%v\n", err)
		}
	}
	return b.String()
}

// countFunc counts the elements of s for which f is true.
func countFunc[T any](s []T, f func(T) bool) int {
	n := 0
	for _, v := range s {
		if f(v) {
			n++
		}
	}
	return n
}
