package deploy

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// Paths relative to this package's directory, where go test runs.
const (
	chartDir     = "../../deploy/helm/cairn"
	renderScript = "../../deploy/kubernetes/render.sh"
	renderedFile = "../../deploy/kubernetes/cairn.yaml"
)

// kubeVersion matches render.sh: a go-installed helm would otherwise assume
// Kubernetes v1.20 and fail the chart's kubeVersion constraint.
const kubeVersion = "1.34.0"

// helmBin finds helm on $HELM or PATH, or skips the test.
func helmBin(t *testing.T) string {
	t.Helper()
	if h := os.Getenv("HELM"); h != "" {
		// Set explicitly: a wrong path is a mistake to report, not a skip.
		if _, err := os.Stat(h); err != nil {
			t.Fatalf("HELM=%s: %v", h, err)
		}
		return h
	}
	h, err := exec.LookPath("helm")
	if err != nil {
		t.Skip("helm not found on PATH and HELM is unset; install it with `go install helm.sh/helm/v3/cmd/helm@v3.22.0`")
	}
	return h
}

// run runs a command and returns its stdout, failing the test with stderr
// if it fails.
func run(t *testing.T, env []string, name string, args ...string) []byte {
	t.Helper()
	out, err := tryRun(t, env, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return out
}

func tryRun(t *testing.T, env []string, name string, args ...string) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%w\n%s%s", err, stdout.String(), stderr.String())
	}
	return stdout.Bytes(), nil
}

// valuesFile writes a values override to a temporary file, or returns ""
// for none.
func valuesFile(t *testing.T, values string) string {
	t.Helper()
	if values == "" {
		return ""
	}
	f := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(f, []byte(values), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func templateArgs(values string, extra ...string) []string {
	args := []string{"template", "cairn", chartDir, "--namespace", "cairn-system", "--kube-version", kubeVersion}
	if values != "" {
		args = append(args, "--values", values)
	}
	return append(args, extra...)
}

// render runs helm template with the given values override.
func render(t *testing.T, helm, values string, extra ...string) []object {
	t.Helper()
	return parse(t, run(t, nil, helm, templateArgs(valuesFile(t, values), extra...)...))
}

func TestRenderedManifestsUpToDate(t *testing.T) {
	helm := helmBin(t)
	fresh := filepath.Join(t.TempDir(), "cairn.yaml")
	run(t, []string{"HELM=" + helm}, "bash", renderScript, fresh)

	got, err := os.ReadFile(fresh)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(renderedFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("deploy/kubernetes/cairn.yaml is out of date with the chart; run deploy/kubernetes/render.sh\n%s",
			firstDifference(want, got))
	}
}

// firstDifference describes the first line where two renderings differ.
func firstDifference(committed, fresh []byte) string {
	a, b := strings.Split(string(committed), "\n"), strings.Split(string(fresh), "\n")
	for i := 0; i < max(len(a), len(b)); i++ {
		var la, lb string
		if i < len(a) {
			la = a[i]
		}
		if i < len(b) {
			lb = b[i]
		}
		if la != lb {
			return fmt.Sprintf("line %d:\n  committed: %q\n  rendered:  %q", i+1, la, lb)
		}
	}
	return "(files differ only in trailing bytes)"
}

// valueSets are the configurations lint and the structural tests cover.
var valueSets = []struct {
	name   string
	values string
}{
	{name: "defaults"},
	{
		name: "sidecars",
		values: `
registration: {mode: sidecar}
health: {mode: sidecar}
metrics: {enabled: false}
`,
	},
	{
		name: "all pool types",
		values: `
pools:
  - {name: default, type: dir, path: /var/lib/cairn/pools/default}
  - {name: fast, type: btrfs, path: /mnt/btrfs/cairn, storageClass: {name: cairn-btrfs, isDefault: true}}
  - {name: images, type: image, path: /srv/cairn/images, storageClass: {fsType: xfs, mkfsOptions: "-m reflink=1"}}
  - {name: hidden, type: dir, path: /srv/cairn/hidden, storageClass: {enabled: false}}
`,
	},
	{
		name: "minimal",
		values: `
snapshotter: {enabled: false}
resizer: {enabled: false}
metrics: {enabled: false}
`,
	},
	{name: "lvm pools", values: lvmValues},
}

func TestHelmLint(t *testing.T) {
	helm := helmBin(t)
	for _, vs := range valueSets {
		t.Run(vs.name, func(t *testing.T) {
			args := []string{"lint", chartDir, "--strict", "--namespace", "cairn-system", "--kube-version", kubeVersion}
			if f := valuesFile(t, vs.values); f != "" {
				args = append(args, "--values", f)
			}
			run(t, nil, helm, args...)
		})
	}
}

func TestCSIDriver(t *testing.T) {
	objs := render(t, helmBin(t), "")
	d := find(t, objs, "CSIDriver", "cairn.csi.dev")
	var spec struct {
		AttachRequired       *bool    `json:"attachRequired"`
		PodInfoOnMount       *bool    `json:"podInfoOnMount"`
		VolumeLifecycleModes []string `json:"volumeLifecycleModes"`
		FSGroupPolicy        string   `json:"fsGroupPolicy"`
		StorageCapacity      *bool    `json:"storageCapacity"`
	}
	d.decodeSpec(t, &spec)
	tests := []struct {
		field string
		got   any
		want  any
	}{
		// Pointers: a field left out takes the API default, which is true
		// for attachRequired.
		{"attachRequired", deref(spec.AttachRequired), "false"},
		{"podInfoOnMount", deref(spec.PodInfoOnMount), "true"},
		{"volumeLifecycleModes", fmt.Sprint(spec.VolumeLifecycleModes), "[Persistent Ephemeral]"},
		{"fsGroupPolicy", spec.FSGroupPolicy, "File"},
		{"storageCapacity", deref(spec.StorageCapacity), "true"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("CSIDriver spec.%s = %v, want %v", tt.field, tt.got, tt.want)
		}
	}
}

func deref(b *bool) string {
	if b == nil {
		return "unset"
	}
	return fmt.Sprint(*b)
}

func TestNodeDaemonSet(t *testing.T) {
	objs := render(t, helmBin(t), "")
	pod := find(t, objs, "DaemonSet", "cairn-node").podSpec(t)

	cairn := pod.container(t, "cairn")
	if cairn.SecurityContext == nil || cairn.SecurityContext.Privileged == nil || !*cairn.SecurityContext.Privileged {
		t.Error("cairn container is not privileged")
	}
	cairn.wantArgs(t, "--mode=all", "--node-id=$(NODE_NAME)", "--endpoint=unix:///csi/csi.sock",
		"--controller-expansion=false", "--pool=default=dir:/var/lib/cairn/pools/default")
	cairn.wantFieldEnv(t, "NODE_NAME", "spec.nodeName")
	pod.wantMount(t, cairn, "/var/lib/kubelet", "/var/lib/kubelet", "Bidirectional")
	pod.wantMount(t, cairn, "/dev", "/dev", "")
	pod.wantMount(t, cairn, "/var/lib/cairn", "/var/lib/cairn", "HostToContainer")
	pod.wantMount(t, cairn, "/csi", "/var/lib/kubelet/plugins/cairn.csi.dev", "")
	pod.wantMount(t, cairn, "/registration", "/var/lib/kubelet/plugins_registry", "")

	prov := pod.container(t, "csi-provisioner")
	prov.wantArgs(t, "--csi-address=/csi/csi.sock", "--node-deployment", "--enable-capacity",
		"--strict-topology", "--immediate-topology=false", "--feature-gates=Topology=true",
		"--capacity-ownerref-level=1")
	prov.wantFieldEnv(t, "NODE_NAME", "spec.nodeName")
	prov.wantFieldEnv(t, "NAMESPACE", "metadata.namespace")
	prov.wantFieldEnv(t, "POD_NAME", "metadata.name")
	pod.wantMount(t, prov, "/csi", "/var/lib/kubelet/plugins/cairn.csi.dev", "")

	snap := pod.container(t, "csi-snapshotter")
	snap.wantArgs(t, "--csi-address=/csi/csi.sock", "--node-deployment")
	snap.wantFieldEnv(t, "NODE_NAME", "spec.nodeName")
	if slices.Contains(snap.Args, "--leader-election") {
		t.Error("csi-snapshotter refuses --leader-election together with --node-deployment")
	}

	for _, c := range pod.Containers {
		c.wantEnvForArgs(t)
	}
}

func TestNodeModes(t *testing.T) {
	tests := []struct {
		name   string
		values string
		// containers the node pod must and must not have
		want, wantNot []string
		// cairn arguments that must and must not be there
		args, argsNot []string
		probePort     string
	}{
		{
			name:      "builtin",
			want:      []string{"cairn", "csi-provisioner", "csi-snapshotter"},
			wantNot:   []string{"node-driver-registrar", "liveness-probe"},
			args:      []string{"--kubelet-registration-path=/var/lib/kubelet/plugins/cairn.csi.dev/csi.sock", "--plugin-registration-dir=/registration", "--metrics-address=:9808"},
			probePort: "http",
		},
		{
			name:      "sidecars",
			values:    "registration: {mode: sidecar}\nhealth: {mode: sidecar}\nmetrics: {enabled: false}\n",
			want:      []string{"cairn", "csi-provisioner", "csi-snapshotter", "node-driver-registrar", "liveness-probe"},
			argsNot:   []string{"--kubelet-registration-path=/var/lib/kubelet/plugins/cairn.csi.dev/csi.sock", "--metrics-address=:9808"},
			probePort: "healthz",
		},
		{
			name:      "builtin health without metrics keeps the HTTP server",
			values:    "metrics: {enabled: false}\n",
			args:      []string{"--metrics-address=:9808"},
			probePort: "http",
		},
		{
			name:      "other kubelet dir",
			values:    "kubeletDir: /data/kubelet\n",
			args:      []string{"--kubelet-registration-path=/data/kubelet/plugins/cairn.csi.dev/csi.sock"},
			probePort: "http",
		},
		{
			name:      "no snapshotter",
			values:    "snapshotter: {enabled: false}\n",
			wantNot:   []string{"csi-snapshotter"},
			probePort: "http",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs := render(t, helmBin(t), tt.values)
			pod := find(t, objs, "DaemonSet", "cairn-node").podSpec(t)
			for _, name := range tt.want {
				pod.container(t, name)
			}
			for _, name := range tt.wantNot {
				if pod.has(name) {
					t.Errorf("node pod has container %s", name)
				}
			}
			cairn := pod.container(t, "cairn")
			cairn.wantArgs(t, tt.args...)
			for _, a := range tt.argsNot {
				if slices.Contains(cairn.Args, a) {
					t.Errorf("cairn has argument %s", a)
				}
			}
			if cairn.LivenessProbe == nil || cairn.LivenessProbe.HTTPGet == nil {
				t.Fatal("cairn has no httpGet liveness probe")
			}
			if got := cairn.LivenessProbe.HTTPGet.Path; got != "/healthz" {
				t.Errorf("liveness probe path = %q, want /healthz", got)
			}
			if got := fmt.Sprint(cairn.LivenessProbe.HTTPGet.Port); got != tt.probePort {
				t.Errorf("liveness probe port = %q, want %q", got, tt.probePort)
			}
			if !slices.ContainsFunc(cairn.Ports, func(p port) bool { return p.Name == tt.probePort }) {
				t.Errorf("cairn container declares no port %q for its liveness probe", tt.probePort)
			}
			if pod.has("node-driver-registrar") {
				reg := pod.container(t, "node-driver-registrar")
				reg.wantArgs(t, "--kubelet-registration-path=/var/lib/kubelet/plugins/cairn.csi.dev/csi.sock")
				pod.wantMount(t, reg, "/registration", "/var/lib/kubelet/plugins_registry", "")
			}
			for _, c := range pod.Containers {
				c.wantEnvForArgs(t)
			}
		})
	}
}

func TestResizerDeployment(t *testing.T) {
	helm := helmBin(t)
	objs := render(t, helm, "")
	dep := find(t, objs, "Deployment", "cairn-resizer")
	var spec struct {
		Replicas *int `json:"replicas"`
	}
	dep.decodeSpec(t, &spec)
	if spec.Replicas == nil || *spec.Replicas != 1 {
		t.Errorf("resizer replicas = %v, want 1", spec.Replicas)
	}
	pod := dep.podSpec(t)
	cairn := pod.container(t, "cairn")
	// The trivial-resizer setup: see docs/kubernetes.md, "Volume expansion".
	cairn.wantArgs(t, "--mode=controller", "--controller-expansion=false", "--endpoint=unix:///csi/csi.sock")
	if sc := cairn.SecurityContext; sc != nil && sc.Privileged != nil && *sc.Privileged {
		t.Error("the resizer's cairn needs no privileges")
	}
	res := pod.container(t, "csi-resizer")
	res.wantArgs(t, "--csi-address=/csi/csi.sock", "--leader-election")
	for _, c := range pod.Containers {
		c.wantEnvForArgs(t)
	}
	role := find(t, objs, "Role", "cairn-resizer")
	if !role.grants("coordination.k8s.io", "leases", "update") {
		t.Error("resizer Role does not grant leases for leader election")
	}

	objs = render(t, helm, "resizer: {enabled: false}\n")
	for _, kind := range []string{"Deployment", "ServiceAccount", "ClusterRole", "Role"} {
		if o := lookup(objs, kind, "cairn-resizer"); o != nil {
			t.Errorf("resizer disabled, but %s cairn-resizer is rendered", kind)
		}
	}
	// Nothing would act on a resize request.
	if sc := find(t, objs, "StorageClass", "cairn-dir"); sc.AllowVolumeExpansion == nil || *sc.AllowVolumeExpansion {
		t.Error("resizer disabled, but the StorageClass still allows volume expansion")
	}
}

func TestRBAC(t *testing.T) {
	objs := render(t, helmBin(t), "")
	tests := []struct {
		kind, name, group, resource, verb string
	}{
		{"ClusterRole", "cairn-provisioner", "", "persistentvolumes", "create"},
		{"ClusterRole", "cairn-provisioner", "", "persistentvolumeclaims", "update"},
		{"ClusterRole", "cairn-provisioner", "", "nodes", "get"},
		{"ClusterRole", "cairn-provisioner", "", "events", "create"},
		{"ClusterRole", "cairn-provisioner", "storage.k8s.io", "csinodes", "get"},
		{"ClusterRole", "cairn-provisioner", "storage.k8s.io", "storageclasses", "list"},
		{"Role", "cairn-provisioner", "storage.k8s.io", "csistoragecapacities", "create"},
		{"Role", "cairn-provisioner", "", "pods", "get"},
		{"ClusterRole", "cairn-snapshotter", "snapshot.storage.k8s.io", "volumesnapshotcontents", "update"},
		{"ClusterRole", "cairn-snapshotter", "snapshot.storage.k8s.io", "volumesnapshotcontents/status", "patch"},
		{"ClusterRole", "cairn-resizer", "", "persistentvolumes", "patch"},
		{"ClusterRole", "cairn-resizer", "", "persistentvolumeclaims/status", "patch"},
	}
	for _, tt := range tests {
		if !find(t, objs, tt.kind, tt.name).grants(tt.group, tt.resource, tt.verb) {
			t.Errorf("%s %s does not grant %s on %q/%s", tt.kind, tt.name, tt.verb, tt.group, tt.resource)
		}
	}
}

func TestStorageClasses(t *testing.T) {
	values := valueSets[2].values // all pool types
	objs := render(t, helmBin(t), values)
	tests := []struct {
		name      string
		pool      string
		params    map[string]string
		isDefault bool
	}{
		{name: "cairn-default", pool: "default"},
		{name: "cairn-btrfs", pool: "fast", isDefault: true},
		{name: "cairn-images", pool: "images", params: map[string]string{"csi.storage.k8s.io/fstype": "xfs", "mkfsOptions": "-m reflink=1"}},
	}
	for _, tt := range tests {
		sc := find(t, objs, "StorageClass", tt.name)
		if sc.Provisioner != "cairn.csi.dev" {
			t.Errorf("%s: provisioner %q", tt.name, sc.Provisioner)
		}
		if sc.VolumeBindingMode != "WaitForFirstConsumer" {
			t.Errorf("%s: volumeBindingMode %q, want WaitForFirstConsumer", tt.name, sc.VolumeBindingMode)
		}
		if sc.AllowVolumeExpansion == nil || !*sc.AllowVolumeExpansion {
			t.Errorf("%s: allowVolumeExpansion is not true", tt.name)
		}
		if sc.Parameters["pool"] != tt.pool {
			t.Errorf("%s: parameters.pool = %q, want %q", tt.name, sc.Parameters["pool"], tt.pool)
		}
		for k, v := range tt.params {
			if sc.Parameters[k] != v {
				t.Errorf("%s: parameters[%s] = %q, want %q", tt.name, k, sc.Parameters[k], v)
			}
		}
		if got := sc.Metadata.Annotations["storageclass.kubernetes.io/is-default-class"] == "true"; got != tt.isDefault {
			t.Errorf("%s: default class = %v, want %v", tt.name, got, tt.isDefault)
		}
	}
	if lookup(objs, "StorageClass", "cairn-hidden") != nil {
		t.Error("StorageClass rendered for a pool with storageClass.enabled=false")
	}

	// Pools outside dataDir get their own hostPath mount.
	pod := find(t, objs, "DaemonSet", "cairn-node").podSpec(t)
	cairn := pod.container(t, "cairn")
	pod.wantMount(t, cairn, "/mnt/btrfs/cairn", "/mnt/btrfs/cairn", "HostToContainer")
	pod.wantMount(t, cairn, "/srv/cairn/images", "/srv/cairn/images", "HostToContainer")
}

func TestVolumeSnapshotClassNeedsCRDs(t *testing.T) {
	helm := helmBin(t)
	if o := lookup(render(t, helm, ""), "VolumeSnapshotClass", "cairn"); o != nil {
		t.Error("VolumeSnapshotClass rendered although the cluster does not serve snapshot.storage.k8s.io/v1")
	}
	objs := render(t, helm, "", "--api-versions", "snapshot.storage.k8s.io/v1/VolumeSnapshotClass")
	vsc := find(t, objs, "VolumeSnapshotClass", "cairn")
	if vsc.Driver != "cairn.csi.dev" {
		t.Errorf("VolumeSnapshotClass driver = %q", vsc.Driver)
	}
}

func TestBadValuesRejected(t *testing.T) {
	helm := helmBin(t)
	tests := []struct {
		name, values, wantErr string
	}{
		{"registration mode", "registration: {mode: kubelet}\n", "registration.mode must be builtin or sidecar"},
		{"health mode", "health: {mode: none}\n", "health.mode must be builtin or sidecar"},
		{"log format", "logFormat: xml\n", "logFormat must be text or json"},
		{"pool type", "pools: [{name: a, type: zfs, path: /a}]\n", `type must be dir, btrfs, image or lvm`},
		{"pool name", "pools: [{name: Fast_1, type: dir, path: /a}]\n", "must be a DNS label"},
		{"duplicate pool", "pools: [{name: a, type: dir, path: /a}, {name: a, type: dir, path: /b}]\n", "listed twice"},
		{"relative pool path", "pools: [{name: a, type: dir, path: a}]\n", "must be absolute"},
		{"resizer cairn mode", "resizer: {cairnMode: node}\n", "resizer.cairnMode must be all or controller"},
		{"lvm path", "pools: [{name: a, type: lvm, path: /dev/vg0}]\n", "an lvm pool's path is VG or VG/THINPOOL"},
		{"two lvm pools on one thin pool", "pools: [{name: a, type: lvm, path: vg0/tp}, {name: b, type: lvm, path: vg0/tp}]\n", `lvm:vg0/tp is already pool "a"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tryRun(t, nil, helm, templateArgs(valuesFile(t, tt.values))...)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("helm template: %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

// --- Parsing the rendered YAML ---

// object is the part of a rendered Kubernetes object these tests read.
type object struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name        string            `json:"name"`
		Namespace   string            `json:"namespace"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec map[string]any `json:"spec"`
	// StorageClass
	Provisioner          string            `json:"provisioner"`
	Parameters           map[string]string `json:"parameters"`
	VolumeBindingMode    string            `json:"volumeBindingMode"`
	AllowVolumeExpansion *bool             `json:"allowVolumeExpansion"`
	// VolumeSnapshotClass
	Driver string `json:"driver"`
	// Role, ClusterRole
	Rules []struct {
		APIGroups []string `json:"apiGroups"`
		Resources []string `json:"resources"`
		Verbs     []string `json:"verbs"`
	} `json:"rules"`
}

var docSeparator = regexp.MustCompile(`(?m)^---\s*$`)

// parse splits a multi-document YAML stream into objects.
func parse(t *testing.T, stream []byte) []object {
	t.Helper()
	var objs []object
	for _, doc := range docSeparator.Split(string(stream), -1) {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		var o object
		if err := yaml.Unmarshal([]byte(doc), &o); err != nil {
			t.Fatalf("parsing rendered document: %v\n%s", err, doc)
		}
		objs = append(objs, o)
	}
	if len(objs) == 0 {
		t.Fatal("helm rendered no objects")
	}
	return objs
}

func stripComments(doc string) string {
	var b strings.Builder
	for line := range strings.SplitSeq(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

func lookup(objs []object, kind, name string) *object {
	for i := range objs {
		if objs[i].Kind == kind && objs[i].Metadata.Name == name {
			return &objs[i]
		}
	}
	return nil
}

func find(t *testing.T, objs []object, kind, name string) *object {
	t.Helper()
	o := lookup(objs, kind, name)
	if o == nil {
		t.Fatalf("no %s %q rendered", kind, name)
	}
	return o
}

// decodeSpec re-decodes spec into a typed struct.
func (o *object) decodeSpec(t *testing.T, into any) {
	t.Helper()
	raw, err := yaml.Marshal(o.Spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, into); err != nil {
		t.Fatalf("%s %s spec: %v", o.Kind, o.Metadata.Name, err)
	}
}

func (o *object) podSpec(t *testing.T) *podSpec {
	t.Helper()
	var spec struct {
		Template struct {
			Spec podSpec `json:"spec"`
		} `json:"template"`
	}
	o.decodeSpec(t, &spec)
	return &spec.Template.Spec
}

func (o *object) grants(group, resource, verb string) bool {
	for _, r := range o.Rules {
		if slices.Contains(r.APIGroups, group) && slices.Contains(r.Resources, resource) && slices.Contains(r.Verbs, verb) {
			return true
		}
	}
	return false
}

type podSpec struct {
	Containers []container `json:"containers"`
	Volumes    []struct {
		Name     string `json:"name"`
		HostPath *struct {
			Path string `json:"path"`
		} `json:"hostPath"`
	} `json:"volumes"`
}

type port struct {
	Name          string `json:"name"`
	ContainerPort int    `json:"containerPort"`
}

type envVar struct {
	Name      string `json:"name"`
	ValueFrom *struct {
		FieldRef *struct {
			FieldPath string `json:"fieldPath"`
		} `json:"fieldRef"`
	} `json:"valueFrom"`
}

type container struct {
	Name            string   `json:"name"`
	Args            []string `json:"args"`
	Env             []envVar `json:"env"`
	Ports           []port   `json:"ports"`
	SecurityContext *struct {
		Privileged *bool `json:"privileged"`
	} `json:"securityContext"`
	LivenessProbe *struct {
		HTTPGet *struct {
			Path string `json:"path"`
			Port any    `json:"port"`
		} `json:"httpGet"`
	} `json:"livenessProbe"`
	VolumeMounts []struct {
		Name             string `json:"name"`
		MountPath        string `json:"mountPath"`
		MountPropagation string `json:"mountPropagation"`
	} `json:"volumeMounts"`
}

func (p *podSpec) has(name string) bool {
	return slices.ContainsFunc(p.Containers, func(c container) bool { return c.Name == name })
}

func (p *podSpec) container(t *testing.T, name string) *container {
	t.Helper()
	for i := range p.Containers {
		if p.Containers[i].Name == name {
			return &p.Containers[i]
		}
	}
	t.Fatalf("pod has no container %q", name)
	return nil
}

// wantMount checks that c mounts hostPath hostPath at mountPath, with the
// given propagation ("" for none).
func (p *podSpec) wantMount(t *testing.T, c *container, mountPath, hostPath, propagation string) {
	t.Helper()
	for _, m := range c.VolumeMounts {
		if m.MountPath != mountPath {
			continue
		}
		if m.MountPropagation != propagation {
			t.Errorf("%s: mount %s has propagation %q, want %q", c.Name, mountPath, m.MountPropagation, propagation)
		}
		for _, v := range p.Volumes {
			if v.Name == m.Name {
				if v.HostPath == nil || v.HostPath.Path != hostPath {
					t.Errorf("%s: %s is not hostPath %s", c.Name, mountPath, hostPath)
				}
				return
			}
		}
		t.Errorf("%s: mount %s names missing volume %q", c.Name, mountPath, m.Name)
		return
	}
	t.Errorf("%s: nothing mounted at %s", c.Name, mountPath)
}

func (c *container) wantArgs(t *testing.T, args ...string) {
	t.Helper()
	for _, a := range args {
		if !slices.Contains(c.Args, a) {
			t.Errorf("%s lacks argument %s (has %q)", c.Name, a, c.Args)
		}
	}
}

func (c *container) wantFieldEnv(t *testing.T, name, fieldPath string) {
	t.Helper()
	for _, e := range c.Env {
		if e.Name == name {
			if e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != fieldPath {
				t.Errorf("%s: env %s does not come from fieldRef %s", c.Name, name, fieldPath)
			}
			return
		}
	}
	t.Errorf("%s: no env %s (from %s)", c.Name, name, fieldPath)
}

var envRef = regexp.MustCompile(`\$\(([A-Z_][A-Z0-9_]*)\)`)

// wantEnvForArgs checks that every $(VAR) in the arguments is defined in
// the container's env: kubelet leaves an undefined reference as it is.
func (c *container) wantEnvForArgs(t *testing.T) {
	t.Helper()
	for _, a := range c.Args {
		for _, m := range envRef.FindAllStringSubmatch(a, -1) {
			if !slices.ContainsFunc(c.Env, func(e envVar) bool { return e.Name == m[1] }) {
				t.Errorf("%s: argument %s refers to undefined env %s", c.Name, a, m[1])
			}
		}
	}
}
