#!/usr/bin/env bash
# test/e2e/run.sh — runs Cairn's Kubernetes end-to-end tests on a real single-node cluster from
# ../shared/k8s-local: builds what is missing first (Kubernetes, e2e.test, the pause/busybox/e2e
# images, the kubernetes-csi sidecars and the Cairn image, all cached outside the clone), brings
# the cluster up, and always takes it down again (down.sh --purge, so every run starts fresh).
#
# Phases (E2E_PHASES, default "kubelet chart suite"):
#   kubelet  go test ./test/e2e: TestCairnOnKubelet (cairn on the node, pre-provisioned PVs),
#            TestChartServerSideDryRun, TestDriverFiles
#   chart    test/e2e/install.sh (snapshot CRDs + controller, the Helm chart with the images of
#            hack/image.sh and hack/sidecars.sh, pools of all three types), then
#            TestChartDynamic (dynamic provisioning, capacity, snapshots, restore, clone,
#            expansion, raw block, no leaks, cairn killed mid-provisioning)
#   suite    the upstream "External Storage" suite (e2e-external-storage.sh, 4 processes,
#            default skips) with testdriver.yaml and testdriver-image.yaml; 0 failures allowed
# E2E_SUITE=full runs the long run instead of the default skips: [Slow] and the snapshot
# data-source tests too (see README.md), still without [Disruptive]/[Serial].
#
# Usage: bash test/e2e/run.sh [go test flags for the kubelet phase, e.g. -run TestCairnOnKubelet]
# Environment:
#   K8S_LOCAL_DIR    the k8s-local scripts (default: ../shared/k8s-local beside the repository);
#                    when missing, the tests are skipped and this exits 0
#   K8S_LOCAL_ROOT   their cache and state (default /var/cache/k8s-local)
#   E2E_KEEP_CLUSTER=1  leave the cluster running afterwards (for debugging; run down.sh yourself)
#   HELM             helm binary (default: helm on PATH; the chart phase needs it)
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
phases=${E2E_PHASES:-kubelet chart suite}
has() { case " $phases " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
if has suite && { [ ! -x "$root/bin/e2e.test" ] || [ ! -x "$root/bin/ginkgo" ] || [ ! -x "$root/bin/agnhost" ]; }; then
  stamp "building e2e.test, ginkgo, agnhost (build.sh e2e)"
  bash "$local_dir/build.sh" e2e
  rm -f "$root/images/e2e-agnhost.tar"   # images.sh makes it only once agnhost exists
fi
if [ ! -x "$root/images/pause/pause" ] || [ ! -f "$root/images/pause.tar" ] || [ ! -f "$root/images/busybox.tar" ] ||
   { has suite && [ ! -f "$root/images/e2e-agnhost.tar" ]; }; then
  stamp "building the pause, busybox and e2e images (images.sh)"
  bash "$local_dir/images.sh"
fi
if has chart; then
  helm=${HELM:-$(command -v helm || true)}
  [ -n "$helm" ] || { echo "e2e: the chart phase needs helm: go install helm.sh/helm/v3/cmd/helm@v3.22.0" >&2; exit 1; }
  export HELM=$helm
  stamp "kubernetes-csi sidecars (hack/sidecars.sh; cached in ${CAIRN_SIDECARS_CACHE:-/var/cache/cairn-sidecars})"
  bash hack/sidecars.sh | tail -n 3
  stamp "the Cairn image (hack/image.sh; base cached in ${CAIRN_IMAGE_CACHE:-/var/cache/cairn-image})"
  bash hack/image.sh | tail -n 1
fi

down() {
  local rc=$?
  if [ "${E2E_KEEP_CLUSTER:-0}" = 1 ]; then
    stamp "E2E_KEEP_CLUSTER=1: cluster left running; stop it with: bash $local_dir/down.sh --purge"
  else
    stamp "taking the cluster down (down.sh --purge)"
    bash "$local_dir/down.sh" --purge >/dev/null || echo "e2e: down.sh failed" >&2
    # what install.sh left on the host: the btrfs pool's image, and the data directory if it
    # made it (the node namespace's mounts and loop devices went with the namespace)
    rm -f /var/lib/cairn-e2e-btrfs.img
    [ ! -f /var/lib/cairn/.made-by-cairn-e2e ] || rm -rf /var/lib/cairn
  fi
  stamp "done, exit status $rc"
  exit "$rc"
}
trap down EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A run that was interrupted (killed, or the machine stopped) leaves its cluster's state behind:
# etcd with Cairn's objects in it, kubelet's and containerd's directories. up.sh would bring that
# cluster back, and the tests would meet a CSIDriver and StorageClasses they did not make. Start
# from nothing, as down() leaves it.
if [ -d "$root/state" ] || pgrep -x kube-apiserver >/dev/null || pgrep -x kubelet >/dev/null; then
  stamp "a previous cluster's state is here: taking it down first (down.sh --purge)"
  bash "$local_dir/down.sh" --purge >/dev/null || { echo "e2e: down.sh --purge failed" >&2; exit 1; }
fi
stamp "bringing the cluster up (up.sh)"
bash "$local_dir/up.sh"
export KUBECONFIG=$root/state/admin.kubeconfig PATH=$root/bin:$PATH K8S_LOCAL_DIR=$local_dir K8S_LOCAL_ROOT=$root

if has kubelet; then
  stamp "go test ./test/e2e (cairn on the node; chart dry run; driver files)"
  go test ./test/e2e -count=1 -v -timeout 20m -run 'TestCairnOnKubelet|TestChartServerSideDryRun|TestDriverFiles' "$@"
fi

if has chart || has suite; then
  stamp "installing Cairn through the chart (test/e2e/install.sh)"
  bash test/e2e/install.sh
fi
if has chart; then
  stamp "go test ./test/e2e -run TestChartDynamic"
  CAIRN_E2E_CHART=1 go test ./test/e2e -count=1 -v -timeout 30m -run TestChartDynamic
fi

if has suite; then
  # default skips, as e2e-external-storage.sh has them; the long run (E2E_SUITE=full) keeps
  # [Slow] and [Feature:VolumeSnapshotDataSource] and skips only what cannot pass here
  # (README.md, "The upstream storage suite").
  for f in testdriver.yaml testdriver-image.yaml; do
    stamp "upstream External Storage suite: $f (${E2E_SUITE:-default}, PROCS=${SUITE_PROCS:-4})"
    log=$root/logs/suite-${f%.yaml}.log
    mkdir -p "$root/logs"
    rc=0
    if [ "${E2E_SUITE:-default}" = full ]; then
      (cd "$root" && ginkgo --procs="${SUITE_PROCS:-4}" --focus='External.Storage.*cairn.csi.dev' \
        --skip='\[Disruptive\]|\[Serial\]|Pre-provisioned Snapshot|\[Feature:(Windows|SELinux|VolumeAttributesClass|GroupSnapshot|SELinuxMountReadWriteOncePod)' \
        --timeout=3h --no-color -v "$root/bin/e2e.test" -- -kubeconfig="$KUBECONFIG" -kubectl-path="$root/bin/kubectl" \
        -provider=local -storage.testdriver="$PWD/test/e2e/$f" -report-dir="$root/logs/report-full") >"$log" 2>&1 || rc=$?
    else
      PROCS=${SUITE_PROCS:-4} bash "$local_dir/e2e-external-storage.sh" "test/e2e/$f" 'External.Storage.*cairn.csi.dev' >"$log" 2>&1 || rc=$?
    fi
    grep -E '^(Ran [0-9]+ of|SUCCESS!|FAIL!)|^ *\[FAIL\]|Summarizing' "$log" | head -40 || true
    [ "$rc" = 0 ] || { echo "e2e: the upstream suite failed with $f (log: $log)" >&2; exit "$rc"; }
  done
fi

if has chart || has suite; then
  stamp "uninstalling (install.sh --uninstall)"
  bash test/e2e/install.sh --uninstall >/dev/null
fi
