package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const chartDir = "../../deploy/helm/cairn"

// helmBin finds helm at $HELM or on PATH, or skips the test.
func helmBin(t *testing.T) string {
	t.Helper()
	if h := os.Getenv("HELM"); h != "" {
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

// chartValueSets are the configurations validated against the API server:
// the defaults (what deploy/kubernetes/cairn.yaml holds), the sidecar modes,
// and every pool type with its StorageClass.
var chartValueSets = []struct{ name, values string }{
	{name: "defaults"},
	{name: "sidecars", values: "registration: {mode: sidecar}\nhealth: {mode: sidecar}\nmetrics: {enabled: false}\n"},
	{name: "all-pool-types", values: `
pools:
  - {name: default, type: dir, path: /var/lib/cairn/pools/default}
  - {name: fast, type: btrfs, path: /mnt/btrfs/cairn, storageClass: {name: cairn-btrfs}}
  - {name: images, type: image, path: /srv/cairn/images, storageClass: {fsType: xfs, mkfsOptions: "-m reflink=1"}}
`},
	{name: "minimal", values: "snapshotter: {enabled: false}\nresizer: {enabled: false}\nmetrics: {enabled: false}\n"},
}

// TestChartServerSideDryRun lints the chart, renders it for the live
// cluster (its version and the API versions it serves, as helm install
// would) and has the API server validate every object, admission included,
// with kubectl apply --dry-run=server. test/deploy checks the same chart
// offline; only a server knows its schemas and admission rules.
func TestChartServerSideDryRun(t *testing.T) {
	c := needCluster(t)
	helm := helmBin(t)
	ctx := context.Background()

	ns := "cairn-e2e-chart-" + randomSuffix()
	// As docs/kubernetes.md says to install: the node pods are privileged.
	_, err := c.core.Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name:   ns,
		Labels: map[string]string{runLabel: "chart", "pod-security.kubernetes.io/enforce": "privileged"},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		err := c.core.Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Logf("delete namespace %s: %v", ns, err)
		}
	})

	apiVersions, err := c.apiVersions()
	if err != nil {
		t.Fatal(err)
	}
	kubeVersion := strings.TrimPrefix(c.version, "v")
	for _, vs := range chartValueSets {
		t.Run(vs.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
			defer cancel()
			common := []string{"--namespace", ns, "--kube-version", kubeVersion}
			if vs.values != "" {
				f := filepath.Join(t.TempDir(), "values.yaml")
				if err := os.WriteFile(f, []byte(vs.values), 0o600); err != nil {
					t.Fatal(err)
				}
				common = append(common, "--values", f)
			}
			if _, err := runCmd(ctx, nil, nil, helm, append([]string{"lint", chartDir, "--strict"}, common...)...); err != nil {
				t.Fatal(err)
			}
			args := append([]string{"template", "cairn", chartDir}, common...)
			for _, v := range apiVersions {
				args = append(args, "--api-versions", v)
			}
			manifests, err := runCmd(ctx, nil, nil, helm, args...)
			if err != nil {
				t.Fatal(err)
			}
			out, err := c.kubectlRun(ctx, []byte(manifests), "apply", "--dry-run=server", "-n", ns, "-f", "-")
			if err != nil {
				t.Fatalf("the API server rejects the chart rendered with %q: %v", vs.name, err)
			}
			objects := 0
			for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
				if !strings.HasSuffix(l, "(server dry run)") {
					t.Errorf("unexpected kubectl output line %q", l)
				}
				objects++
			}
			if want := strings.Count(manifests, "\nkind: "); objects != want {
				t.Errorf("kubectl validated %d objects, the rendering has %d:\n%s", objects, want, out)
			}
			t.Logf("%d objects accepted by the API server (%s):\n%s", objects, c.version, out)
		})
	}
}

// apiVersions lists what the server serves, in helm's --api-versions form:
// every group/version, and group/version/Kind for each resource.
func (c *cluster) apiVersions() ([]string, error) {
	_, lists, err := c.disc.ServerGroupsAndResources()
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, l := range lists {
		seen[l.GroupVersion] = true
		for _, r := range l.APIResources {
			if !strings.Contains(r.Name, "/") { // not a subresource
				seen[l.GroupVersion+"/"+r.Kind] = true
			}
		}
	}
	var out []string
	for v := range seen {
		out = append(out, v)
	}
	sort.Strings(out)
	return out, nil
}
