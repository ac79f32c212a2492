// Package deploy owns the checks on Cairn's deployment artifacts: that the
// Helm chart in deploy/helm/cairn lints and renders, that the plain manifests
// in deploy/kubernetes/cairn.yaml are exactly what deploy/kubernetes/render.sh
// makes from it, and that the rendered objects carry the settings Cairn
// depends on (CSIDriver fields, the per-node sidecars' flags, the central
// resizer's trivial-resizer setup).
//
// The tests need helm, found on PATH or at $HELM; without it they skip.
// `go install helm.sh/helm/v3/cmd/helm@v3.22.0` builds one from the module
// proxy.
package deploy
