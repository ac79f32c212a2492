#!/usr/bin/env bash
# hack/sidecars.sh — builds the kubernetes-csi sidecars the Helm chart uses, and the snapshot
# controller, from the Go module proxy alone, and packs each into a minimal image (FROM scratch,
# one static binary) with buildah. No Docker and no registry are needed.
#
# Usage: bash hack/sidecars.sh            build what is missing, print the archives
#        bash hack/sidecars.sh --list     print "image-ref archive" lines, build nothing
# Output ($CAIRN_SIDECARS_CACHE, default /var/cache/cairn-sidecars, outside the clone like the
# cluster build): bin/<name>, images/<name>.tar (docker-archive), loadable with
#   ctr -n k8s.io images import FILE.tar      kind load image-archive FILE.tar
# and crds/ (the snapshot CRDs of external-snapshotter/client/v8 at the snapshotter's version).
#
# Image names are the ones the chart's values.yaml names (registry.k8s.io/sig-storage/...), so a
# node that has imported them never pulls. Versions are the chart's defaults.
#
# Why a wrapper module: the sidecars' go.mod files carry replace lines, so "go install pkg@v"
# refuses them. A scratch module that requires the sidecar and re-states those replace lines
# builds it; a replace that points at a local directory (external-snapshotter's ./client) is
# dropped and the module it names is required at the sidecar's own version instead.
# node-driver-registrar and livenessprobe are not built: the module proxy does not serve them,
# and the chart's defaults (registration.mode=builtin, health.mode=builtin) do not use them.
set -euo pipefail
export PATH=/usr/local/go/bin:$PATH GOFLAGS=-mod=mod CGO_ENABLED=0 GOWORK=off GOTOOLCHAIN=local
CACHE=${CAIRN_SIDECARS_CACHE:-/var/cache/cairn-sidecars}
B="buildah --storage-driver vfs"

# name | module | version | package | image
SIDECARS="
csi-provisioner|github.com/kubernetes-csi/external-provisioner/v6|v6.4.0|cmd/csi-provisioner|registry.k8s.io/sig-storage/csi-provisioner:v6.4.0
csi-resizer|github.com/kubernetes-csi/external-resizer/v2|v2.3.0|cmd/csi-resizer|registry.k8s.io/sig-storage/csi-resizer:v2.3.0
csi-snapshotter|github.com/kubernetes-csi/external-snapshotter/v8|v8.7.0|cmd/csi-snapshotter|registry.k8s.io/sig-storage/csi-snapshotter:v8.7.0
snapshot-controller|github.com/kubernetes-csi/external-snapshotter/v8|v8.7.0|cmd/snapshot-controller|registry.k8s.io/sig-storage/snapshot-controller:v8.7.0
"

if [ "${1:-}" = --list ]; then
  while IFS='|' read -r name _ _ _ image; do
    [ -n "$name" ] && echo "$image $CACHE/images/$name.tar"
  done <<<"$SIDECARS"
  exit 0
fi

mkdir -p "$CACHE/bin" "$CACHE/images" "$CACHE/src"

build_one() {  # name module version package
  local name=$1 mod=$2 ver=$3 pkg=$4 dir=$CACHE/src/$1-$3 gomod
  if [ -x "$CACHE/bin/$name" ] && [ -f "$CACHE/bin/$name.version" ] && [ "$(cat "$CACHE/bin/$name.version")" = "$mod@$ver" ]; then
    return 0
  fi
  echo "== building $name ($mod@$ver)"
  mkdir -p "$dir"
  go mod download "$mod@$ver"
  gomod=$(go env GOMODCACHE)/cache/download/$mod/@v/$ver.mod
  (
    cd "$dir"
    {
      printf 'module cairnsidecar/%s\n\n' "$name"
      grep -m1 '^go ' "$gomod"
      printf '\nrequire %s %s\n' "$mod" "$ver"
      # local-directory replaces: require the module they name at the sidecar's version instead
      sed -n 's#^replace \([^ ]*\) => \./.*#require \1 '"$ver"'#p' "$gomod"
      # replace blocks and single replace lines with a module path on the right
      awk '
        /^replace \(/ { inblk = 1; print; next }
        inblk && /^\)/ { inblk = 0; print; next }
        inblk { if ($3 !~ /^\.\.?\//) print; next }
        /^replace / && $4 !~ /^\.\.?\// { print }
      ' "$gomod"
    } > go.mod
    printf '//go:build tools\n\npackage tools\n\nimport _ "%s/%s"\n' "$mod" "$pkg" > tools.go
    go mod tidy
    go build -trimpath -ldflags "-s -w" -o "$CACHE/bin/$name" "$mod/$pkg"
  )
  echo "$mod@$ver" > "$CACHE/bin/$name.version"
}

image_one() {  # name image
  local name=$1 image=$2 c
  if [ -f "$CACHE/images/$name.tar" ] && [ "$CACHE/images/$name.tar" -nt "$CACHE/bin/$name" ] &&
     [ "$(cat "$CACHE/images/$name.ref" 2>/dev/null)" = "$image" ]; then
    return 0
  fi
  echo "== image $image"
  c=$($B from scratch)
  $B copy "$c" "$CACHE/bin/$name" "/$name"
  $B config --entrypoint "[\"/$name\"]" --user 0:0 "$c"
  $B commit -q "$c" "$image" >/dev/null
  $B rm "$c" >/dev/null
  rm -f "$CACHE/images/$name.tar"
  $B push -q "$image" "docker-archive:$CACHE/images/$name.tar:$image"
  $B rmi "$image" >/dev/null 2>&1 || true
  echo "$image" > "$CACHE/images/$name.ref"
}

while IFS='|' read -r name mod ver pkg image; do
  [ -n "$name" ] || continue
  build_one "$name" "$mod" "$ver" "$pkg"
  image_one "$name" "$image"
done <<<"$SIDECARS"

# the snapshot CRDs, from the client module at the snapshotter's version
snapver=v8.7.0
crddir=$(go mod download -json "github.com/kubernetes-csi/external-snapshotter/client/v8@$snapver" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
mkdir -p "$CACHE/crds"
for f in volumesnapshotclasses volumesnapshotcontents volumesnapshots; do
  install -m 0644 "$crddir/config/crd/snapshot.storage.k8s.io_$f.yaml" "$CACHE/crds/"
done
ls -la "$CACHE/images" "$CACHE/crds"
