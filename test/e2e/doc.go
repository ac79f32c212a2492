// Package e2e owns Cairn's end-to-end tests on a real Kubernetes cluster:
// a real kubelet registers cairn, mounts its volumes into real pods, and
// survives a cairn crash; and the Helm chart's manifests pass the live API
// server's validation.
//
// The tests run against the cluster named by KUBECONFIG and skip, with the
// reason, when it is unset or the API server does not answer. The tests
// that run cairn on the node (TestCairnOnKubelet) also need the single-node
// cluster of ../shared/k8s-local (K8S_LOCAL_DIR overrides the path), whose
// node-exec.sh starts cairn inside the node's namespaces, where kubelet runs.
// test/e2e/run.sh brings that cluster up, runs the tests and takes it down;
// README.md in this directory has the details and the upstream storage
// suite's driver files (testdriver.yaml, testdriver-image.yaml).
//
// TestCairnOnKubelet runs cairn alone, without sidecars, and plays the
// provisioner itself: it calls CreateVolume on cairn's socket and binds the
// result as a pre-provisioned PersistentVolume, exactly as
// external-provisioner would describe it (volume handle, volume attributes,
// node affinity from the accessible topology). TestChartDynamic tests the
// chart install with the real sidecars (hack/sidecars.sh builds them),
// after test/e2e/install.sh.
package e2e
