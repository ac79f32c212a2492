#!/usr/bin/env bash
# test/e2e/install.sh — installs Cairn through its Helm chart on the local single-node cluster of
# ../shared/k8s-local, the way docs/kubernetes.md tells a user to, with the images this machine
# built (hack/image.sh, hack/sidecars.sh), and pools of all three types:
#   default  dir    /var/lib/cairn/pools/default       StorageClass cairn-dir
#   images   image  /var/lib/cairn/pools/images        StorageClass cairn-images      (ext4)
#   xfs      image  /var/lib/cairn/pools/xfs           StorageClass cairn-images-xfs  (xfs)
#   btrfs    btrfs  /var/lib/cairn/btrfs               StorageClass cairn-btrfs
#                   (a 1 GiB btrfs image file, loop-mounted for the node)
# plus the snapshot CRDs and a snapshot-controller with --enable-distributed-snapshotting.
#
# Usage: bash test/e2e/install.sh            install (idempotent: helm upgrade --install)
#        bash test/e2e/install.sh --uninstall  remove the release, the controller and the CRDs
# Needs: the cluster up (up.sh), helm, and the archives of hack/image.sh and hack/sidecars.sh.
# Environment: K8S_LOCAL_DIR, K8S_LOCAL_ROOT as for run.sh; HELM (default helm);
#   CAIRN_IMAGE_CACHE, CAIRN_SIDECARS_CACHE as for the hack scripts.
set -euo pipefail
cd "$(dirname "$0")/../.."
local_dir=$(cd "${K8S_LOCAL_DIR:-../shared/k8s-local}" && pwd)
root=${K8S_LOCAL_ROOT:-/var/cache/k8s-local}
export KUBECONFIG=${KUBECONFIG:-$root/state/admin.kubeconfig} PATH=$root/bin:$PATH
helm=${HELM:-helm}
image_cache=${CAIRN_IMAGE_CACHE:-/var/cache/cairn-image}
sidecars=${CAIRN_SIDECARS_CACHE:-/var/cache/cairn-sidecars}
NS=cairn-system
node() { bash "$local_dir/node-exec.sh" "$@"; }
btrfs_img=/var/lib/cairn-e2e-btrfs.img

if [ "${1:-}" = --uninstall ]; then
  "$helm" uninstall cairn --namespace "$NS" --wait --timeout 3m || true
  kubectl delete --ignore-not-found -f test/e2e/snapshot-controller.yaml --wait=true || true
  kubectl delete --ignore-not-found -f "$sidecars/crds/" || true
  kubectl delete namespace "$NS" --ignore-not-found --wait=true || true
  node sh -c "umount /var/lib/cairn/btrfs 2>/dev/null; umount /var/lib/cairn 2>/dev/null; rm -f $btrfs_img; true"
  # the data directory, if this script made it (run.sh does this after down.sh too)
  [ ! -f /var/lib/cairn/.made-by-cairn-e2e ] || rm -rf /var/lib/cairn
  exit 0
fi

# 1. Images: import into the node's containerd under the names the chart and the controller use.
#    (A cluster that pulls from a registry would use buildah push instead; docs/kubernetes.md.)
node ctr -n k8s.io images import "$image_cache/cairn.tar" >/dev/null
while read -r ref tar; do
  node ctr -n k8s.io images import "$tar" >/dev/null
done < <(bash hack/sidecars.sh --list)
node ctr -n k8s.io images ls -q | grep -E 'cairn|sig-storage' | sed 's/^/imported: /'

# 2. The node: cairn's data directory and pool paths are mounted into its pod with
#    mountPropagation HostToContainer, which needs them on a shared (or slave) mount. The node
#    namespace of k8s-local has a private root (like a host without systemd), so make the data
#    directory a shared mount of its own, the remedy docs/kubernetes.md gives. The btrfs pool
#    is a loop-mounted btrfs image under it.
node sh -euc "
  [ -d /var/lib/cairn ] || { mkdir -p /var/lib/cairn; touch /var/lib/cairn/.made-by-cairn-e2e; }
  mountpoint -q /var/lib/cairn || mount --bind /var/lib/cairn /var/lib/cairn
  mount --make-rshared /var/lib/cairn
  mkdir -p /var/lib/cairn/btrfs
  if ! mountpoint -q /var/lib/cairn/btrfs; then
    rm -f $btrfs_img; truncate -s 1G $btrfs_img; mkfs.btrfs -q $btrfs_img >/dev/null
    mount -o loop $btrfs_img /var/lib/cairn/btrfs
  fi
  mount --make-shared /var/lib/cairn/btrfs
"

# 3. Snapshot CRDs and controller (before the chart: it makes the VolumeSnapshotClass only when
#    the cluster serves snapshot.storage.k8s.io/v1).
kubectl apply -f "$sidecars/crds/"
kubectl wait --for condition=established --timeout=60s \
  crd/volumesnapshots.snapshot.storage.k8s.io crd/volumesnapshotcontents.snapshot.storage.k8s.io \
  crd/volumesnapshotclasses.snapshot.storage.k8s.io
kubectl apply -f test/e2e/snapshot-controller.yaml

# 4. The chart, into a namespace that allows privileged pods.
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl label namespace "$NS" --overwrite pod-security.kubernetes.io/enforce=privileged
"$helm" upgrade --install cairn deploy/helm/cairn --namespace "$NS" \
  --values test/e2e/values-e2e.yaml --wait --timeout 5m

# helm --wait lets a DaemonSet be short of maxUnavailable (1) pods: on one node, not at all
kubectl -n "$NS" rollout status daemonset/cairn-node --timeout=3m
kubectl -n "$NS" rollout status deployment/cairn-resizer --timeout=3m
kubectl -n kube-system rollout status deployment/snapshot-controller --timeout=3m
kubectl get storageclass,volumesnapshotclass
kubectl -n "$NS" get pods -o wide
