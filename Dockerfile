# syntax=docker/dockerfile:1
#
# The Cairn image: cairn (the CSI driver) and cairnctl, on Debian bookworm
# with the tools the pools shell out to.
#
#   docker build -t ghcr.io/cairn-csi/cairn:dev .
#   buildah bud -t ghcr.io/cairn-csi/cairn:dev .

# --- build ------------------------------------------------------------------
# The Go version must be at least the one go.mod names; GOTOOLCHAIN=local
# makes a too-old image fail loudly instead of downloading a toolchain.
ARG GO_VERSION=1.26
FROM golang:${GO_VERSION}-bookworm AS build
ENV CGO_ENABLED=0 GOTOOLCHAIN=local
WORKDIR /src

# Modules first, so that a source change does not re-download them.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download

COPY . .
# -trimpath: no build-machine paths in the binaries. The version comes from
# the module build info (cairn --version); -buildvcs=false because the build
# context has no .git.
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath -buildvcs=false -ldflags="-s -w" -o /out/ ./cmd/cairn ./cmd/cairnctl

# --- runtime ----------------------------------------------------------------
FROM debian:bookworm-slim

# What the pools and the node service run:
#   e2fsprogs    mkfs.ext4, resize2fs, e2fsck (image pools; ext4 project quotas)
#   xfsprogs     mkfs.xfs, xfs_growfs, xfs_quota (image pools; xfs project quotas)
#   btrfs-progs  btrfs subvolume/qgroup (btrfs pools; btrfs image filesystems)
#   util-linux   losetup, blkid, findmnt, fsfreeze, blockdev
#   mount        mount, umount
#   lvm2         lvs, lvcreate, lvremove, ... (lvm pools; thin pools need
#                thin-provisioning-tools on the host, which activates them)
#   cryptsetup-bin  cryptsetup (encryption: "true" on image and lvm pools)
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      e2fsprogs xfsprogs btrfs-progs util-linux mount lvm2 cryptsetup-bin \
 && rm -rf /var/lib/apt/lists/*

COPY --from=build /out/cairn /out/cairnctl /usr/local/bin/

# No USER: a CSI node plugin cannot run as non-root. It mounts filesystems
# into kubelet's directories, attaches loop devices, runs mkfs and sets
# project quotas and qgroups, all of which need root (and a privileged
# container). The central resizer pod, which touches no host path, runs this
# same image as an unprivileged user instead (see the Helm chart).
ENTRYPOINT ["/usr/local/bin/cairn"]
