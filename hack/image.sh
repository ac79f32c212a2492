#!/usr/bin/env bash
# hack/image.sh — builds the Cairn image with what a Debian machine has: no Docker, no Docker Hub.
# The base is a debootstrap'd Debian bookworm (--variant=minbase) with the tools the pools run,
# the binaries are cairn and cairnctl built here (static, CGO_ENABLED=0), and buildah (vfs
# storage, no daemon) commits the result.
#
# Usage: bash hack/image.sh [IMAGE]
#   IMAGE defaults to the chart's default: ghcr.io/cairn-csi/cairn:<appVersion of Chart.yaml>,
#   so an install with the chart's default values uses exactly this image.
# Output: $CAIRN_IMAGE_CACHE/cairn.tar (docker-archive; default /var/cache/cairn-image), the
#   image is also left in buildah's vfs storage. Load it where it is needed:
#     containerd: ctr -n k8s.io images import /var/cache/cairn-image/cairn.tar
#     kind:       kind load image-archive /var/cache/cairn-image/cairn.tar
#     registry:   buildah --storage-driver vfs push IMAGE docker://REGISTRY/cairn:TAG
# Environment:
#   DEBIAN_MIRROR      default http://deb.debian.org/debian
#   CAIRN_IMAGE_CACHE  where the base root filesystem (rebuilt only when the package list
#                      changes) and the archive go; outside the clone
# Packages (what the pools and the node service shell out to):
#   e2fsprogs    mkfs.ext4, resize2fs, e2fsck (image pools; ext4 project quotas)
#   xfsprogs     mkfs.xfs, xfs_growfs, xfs_quota (image pools; xfs project quotas)
#   btrfs-progs  btrfs subvolume/qgroup (btrfs pools; btrfs image filesystems)
#   util-linux   losetup, blkid, findmnt, fsfreeze, blockdev      mount: mount, umount
#   lvm2, cryptsetup-bin   lvm pools; LUKS2 encryption of image and lvm volumes
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
CACHE=${CAIRN_IMAGE_CACHE:-/var/cache/cairn-image}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PKGS=e2fsprogs,xfsprogs,btrfs-progs,util-linux,mount,lvm2,cryptsetup-bin,ca-certificates
appver=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' deploy/helm/cairn/Chart.yaml)
IMAGE=${1:-ghcr.io/cairn-csi/cairn:$appver}
B="buildah --storage-driver vfs"
arch=$(dpkg --print-architecture)
goarch=$(go env GOARCH)
mkdir -p "$CACHE"

for t in debootstrap buildah go; do
  command -v $t >/dev/null || { echo "image.sh: needs $t (apt-get install debootstrap buildah; Go from go.dev)" >&2; exit 1; }
done

# --- base root filesystem, cached by its package list
key=$(printf '%s %s %s' "$MIRROR" "$PKGS" "$arch" | sha256sum | cut -c1-12)
base=$CACHE/rootfs-bookworm-$arch-$key.tar
if [ ! -f "$base" ]; then
  echo "== debootstrap bookworm ($arch, minbase + $PKGS)"
  root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase --arch="$arch" --include="$PKGS" bookworm "$root" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
    { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
  # what a container never uses: package caches, docs, locales, man pages
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc \
    "$root"/usr/share/man "$root"/usr/share/info "$root"/usr/share/locale "$root"/var/log/*
  # a container's /dev, /proc and /sys are mounted by the runtime
  rm -rf "$root"/dev/* "$root"/proc/* "$root"/sys/*
  tar -C "$root" --numeric-owner -cf "$base.tmp" .
  mv "$base.tmp" "$base"
  rm -rf "$root"; trap - EXIT
fi

# --- binaries
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "== go build cairn, cairnctl ($goarch, static)"
CGO_ENABLED=0 GOOS=linux GOARCH=$goarch go build -trimpath -ldflags "-s -w" -o "$out/" ./cmd/cairn ./cmd/cairnctl

# --- image
echo "== buildah commit $IMAGE"
c=$($B from scratch)
$B add "$c" "$base" /
$B copy --chmod 0755 "$c" "$out/cairn" "$out/cairnctl" /usr/local/bin/
$B config --entrypoint '["/usr/local/bin/cairn"]' --cmd '[]' --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --label org.opencontainers.image.source=https://github.com/cairn-csi/cairn \
  --label org.opencontainers.image.version="$appver" --os linux --arch "$goarch" "$c"
$B commit -q --rm "$c" "$IMAGE" >/dev/null
# the previous build under this name is now untagged: drop it (vfs keeps full copies)
$B images -q --filter dangling=true --filter "label=org.opencontainers.image.source=https://github.com/cairn-csi/cairn" |
  xargs -r $B rmi >/dev/null 2>&1 || true
rm -f "$CACHE/cairn.tar"
$B push -q "$IMAGE" "docker-archive:$CACHE/cairn.tar:$IMAGE"
echo "$IMAGE" > "$CACHE/cairn.ref"
ls -la "$CACHE/cairn.tar"
echo "image.sh: $IMAGE -> $CACHE/cairn.tar"
