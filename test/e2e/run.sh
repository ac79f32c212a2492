#!/usr/bin/env bash
# test/e2e/run.sh — runs Cairn's Kubernetes end-to-end tests (go test ./test/e2e) on a real
# single-node cluster from ../shared/k8s-local: builds Kubernetes and the images first if that
# cache is cold, brings the cluster up, runs the tests, and always takes the cluster down again
# (down.sh --purge, so every run starts from a fresh cluster).
#
# Usage: bash test/e2e/run.sh [go test flags, e.g. -run TestCairnOnKubelet]
# Environment:
#   K8S_LOCAL_DIR    the k8s-local scripts (default: ../shared/k8s-local beside the repository);
#                    when missing, the tests are skipped and this exits 0
#   K8S_LOCAL_ROOT   their cache and state (default /var/cache/k8s-local)
#   E2E_KEEP_CLUSTER=1  leave the cluster running afterwards (for debugging; run down.sh yourself)
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH=/usr/local/go/bin:$HOME/go/bin:$PATH

local_dir=${K8S_LOCAL_DIR:-../shared/k8s-local}
if [ ! -f "$local_dir/up.sh" ]; then
  echo "e2e: SKIP: no local Kubernetes scripts at $local_dir (set K8S_LOCAL_DIR); nothing to run against"
  exit 0
fi
local_dir=$(cd "$local_dir" && pwd)
root=${K8S_LOCAL_ROOT:-/var/cache/k8s-local}

start=$SECONDS
stamp() { echo "== e2e [$((SECONDS - start))s] $*"; }

# Cold cache: build what up.sh needs (build.sh: ~10 min on 2 cores with an empty Go build cache).
missing=""
for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl kube-proxy; do
  [ -x "$root/bin/$b" ] || missing="$missing $b"
done
if [ -n "$missing" ]; then
  stamp "building Kubernetes (build.sh core), missing:$missing"
  bash "$local_dir/build.sh" core
fi
if [ ! -x "$root/images/pause/pause" ] || [ ! -f "$root/images/pause.tar" ] || [ ! -f "$root/images/busybox.tar" ]; then
  stamp "building the pause and busybox images (images.sh)"
  bash "$local_dir/images.sh"
fi

down() {
  local rc=$?
  if [ "${E2E_KEEP_CLUSTER:-0}" = 1 ]; then
    stamp "E2E_KEEP_CLUSTER=1: cluster left running; stop it with: bash $local_dir/down.sh --purge"
  else
    stamp "taking the cluster down (down.sh --purge)"
    bash "$local_dir/down.sh" --purge >/dev/null || echo "e2e: down.sh failed" >&2
  fi
  stamp "done, exit status $rc"
  exit "$rc"
}
trap down EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

stamp "bringing the cluster up (up.sh)"
bash "$local_dir/up.sh"
export KUBECONFIG=$root/state/admin.kubeconfig PATH=$root/bin:$PATH K8S_LOCAL_DIR=$local_dir K8S_LOCAL_ROOT=$root

stamp "go test ./test/e2e"
go test ./test/e2e -count=1 -v -timeout 20m "$@"
