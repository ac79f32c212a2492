#!/usr/bin/env bash
# The VM lane: the tests this machine's kernel cannot run, run in a QEMU VM
# with Debian 12's stock kernel (../shared/vm; see its README).
#
#   hack/vm-lane.sh        (hack/test.sh runs it after the host lane; root only
#                           to build the VM cache, the tests run as root in the VM)
#
# The host kernel lacks CONFIG_QFMT_V2 and XFS_QUOTA (so the dir pool's
# project quota cannot be mounted) and root lacks CAP_SYS_RESOURCE (so a
# mounted ext4 cannot grow). Those tests skip on the host, naming this
# lane. Here they run with CAIRN_VM_LANE=1, which makes a missing kernel
# feature or capability fail them instead: the lane cannot pass by
# skipping.
#
# It builds static test binaries (CGO_ENABLED=0 go test -c) and a static
# cairn for the tests that start the driver (CAIRN_BINARY), then boots one
# VM per package, two at a time, each with a scratch disk for TMPDIR, and
# runs the selected tests (the PKGS table below). It prints each package's
# failures and skips, then "vm lane: N passed, N failed, N skipped", and
# exits non-zero on any failure, timeout or VM failure.
#
# Environment:
#   CAIRN_VM_DIR           the VM scripts (default ../shared/vm)
#   CAIRN_VM_LANE_TIMEOUT  seconds for the whole lane (default 2400: the lvm
#                          packages run lvm2 commands, about a second each under TCG)
#   CAIRN_VM_LANE_JOBS     VMs at a time (default 2)
#   CAIRN_VM_LANE_ONLY     run only the packages whose name matches this regexp
#   CAIRN_VM_LANE_KEEP=1   keep the work dir: binaries, each run's test2json output, VM logs
#   CAIRN_CRASH_KILLS, CAIRN_CRASH_SEED, CAIRN_CRASH_POINT_OPS
#                          passed to the crash harness when set (test/crash/README.md)
#   VM_CACHE, VM_MEM, VM_CPUS, VM_ACCEL  passed to run.sh
#
# If the VM scripts are absent, or the VM is not set up and this is not
# root (setup.sh installs qemu and builds the cache), it prints
# "== vm lane: SKIP: <reason>" and exits 0. As root it runs setup.sh when
# needed; a setup or boot failure fails the lane.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

vmdir=${CAIRN_VM_DIR:-../shared/vm}
lane_timeout=${CAIRN_VM_LANE_TIMEOUT:-2400}
jobs=${CAIRN_VM_LANE_JOBS:-2}
cache=${VM_CACHE:-/var/cache/cairn-vm}
t0=$SECONDS

skip() {
  echo "== vm lane: SKIP: $*"
  exit 0
}

# Each package: name | import path | env (one KEY=VALUE, or empty) | -test.run patterns (;-separated).
# Heaviest first, so that two VMs at a time finish close together
# (2026-11-26, loaded host: crash-lvm 611 s, crash-luks 227 s, image 146 s). A pool
# that needs device-mapper (LVM thin, dm-crypt) adds its package here: the
# VM has lvm2, thin-provisioning-tools and cryptsetup, and loop devices.
PKGS=(
  "crash-lvm|./test/crash|CAIRN_CRASH_TARGETS=lvm-thin|^TestCrash\$"
  "sanity-lvm-mount|./test/sanity|CAIRN_SANITY_TARGETS=lvm/thin-mount|^TestSanity\$"
  "sanity-lvm-block|./test/sanity|CAIRN_SANITY_TARGETS=lvm/thin-block|^TestSanity\$"
  "sanity|./test/sanity|CAIRN_SANITY_TARGETS=dir/ext4-prjquota,dir/xfs-prjquota,image/luks|^TestSanity\$"
  "lvm|./test/lvm||^(TestSnapshotWhileWriting|TestEncryptedLVMVolumes|TestEncryptedThickVolume|TestLVHealth|TestLVMLUKSMappingsReconciled)\$"
  "lvmpool|./internal/backend/lvmpool||^(TestSuite|TestThinPoolFull|TestReconcileLeavesUntaggedLVs)\$"
  "crash-luks|./test/crash|CAIRN_CRASH_TARGETS=image-luks|^TestCrash\$"
  "image|./test/image||^(TestOnlineExpansion|TestGrowAtStage|TestBlockExpansionLeavesWorkloadFilesystem|TestLUKSVolumes|TestLUKSMappingsReconciled)\$"
  "dirpool|./internal/backend/dirpool||^TestSuite\$/^(ext4-prjquota|xfs)\$;^(TestQuotaEnforced|TestQuotaPrivilegedWriter|TestProjectIDsUnique|TestQuotaRejectsZeroCapacity)\$"
  "projquota|./internal/projquota||."
  "reboot|./test/reboot||^TestQuotaSurvivesReboot\$"
  "btrfspool|./internal/backend/btrfspool||^TestStaleQgroupLimitNotInherited\$"
  "testfs|./internal/testfs||^(TestNew|TestRemount)\$"
)

[ -x "$vmdir/run.sh" ] || skip "no VM scripts at $vmdir (../shared/vm): the tests that need the VM kernel skipped on the host say so"
vmdir=$(cd "$vmdir" && pwd)
if [ ! -s "$cache/root.img" ] || [ ! -s "$cache/vmlinux" ] || ! command -v qemu-system-x86_64 >/dev/null; then
  [ "$(id -u)" = 0 ] || skip "the VM (qemu, or the cache $cache) is not set up, and that needs root: sudo bash $vmdir/setup.sh"
  echo "== vm lane: setting up the VM ($vmdir/setup.sh: qemu and $cache, 2-4 min the first time)"
  # The VM scripts are here, so a VM that cannot be built fails the lane.
  bash "$vmdir/setup.sh" || { echo "vm lane: FAIL: $vmdir/setup.sh failed"; exit 1; }
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/cairn-vm-lane.XXXXXX")
if [ "${CAIRN_VM_LANE_KEEP:-0}" = 1 ]; then
  trap 'echo "== vm lane: kept $work"' EXIT
else
  trap 'rm -rf "$work"' EXIT
fi

echo "== vm lane: building static test binaries in $work"
export CGO_ENABLED=0
go build -o "$work/cairn" ./cmd/cairn
for spec in "${PKGS[@]}"; do
  IFS='|' read -r name pkg _ _ <<<"$spec"
  [[ $name =~ ${CAIRN_VM_LANE_ONLY:-.} ]] || continue
  go test -c -o "$work/$name.test" "$pkg"
done
cp hack/vm-lane-guest.sh "$work/guest.sh"
# The crash harness finds its kill points in the source (CAIRN_SRC_ROOT).
mkdir -p "$work/src" && cp -r internal "$work/src/"
echo "== vm lane: built in $((SECONDS - t0))s"

# run_pkg NAME PKG ENV PATTERNS: one VM; writes $work/NAME.rc and NAME.log.
run_pkg() {
  local name=$1 pkg=$2 env=$3 patterns=$4 start=$SECONDS
  local left=$((lane_timeout - (SECONDS - t0)))
  [ "$left" -gt 30 ] || left=30
  # The crash harness's knobs go through when set (a long run of the
  # device-mapper targets: README, "Longer test runs").
  local -a pats passenv=(-e CAIRN_VM_LANE -e CAIRN_BINARY -e CAIRN_SRC_ROOT -e CAIRN_VM_TEST_TIMEOUT -e CAIRN_CRASH_KILLS -e CAIRN_CRASH_SEED -e CAIRN_CRASH_POINT_OPS)
  IFS=';' read -r -a pats <<<"$patterns"
  (
    export CAIRN_VM_LANE=1 CAIRN_BINARY="$work/cairn" CAIRN_SRC_ROOT="$work/src"
    # The lane's timeout is the guard; a test binary's own (-test.timeout)
    # only has to end before it, so that the VM still reports.
    export CAIRN_VM_TEST_TIMEOUT="$((left > 60 ? left - 30 : 30))s"
    # ENV is one KEY=VALUE; the value may hold commas and =.
    if [ -n "$env" ]; then
      export "${env%%=*}=${env#*=}"
      passenv+=(-e "${env%%=*}")
    fi
    "$vmdir/run.sh" -t "$left" -d 16G "${passenv[@]}" "$work" \
      "$work/guest.sh" "$work" "$name" "$work/$name.test" "${pats[@]}"
  ) >"$work/$name.log" 2>&1
  echo $? >"$work/$name.rc"
  echo "== vm lane: $name ($pkg): VM exit $(cat "$work/$name.rc") after $((SECONDS - start))s"
}

n=0
for spec in "${PKGS[@]}"; do [[ ${spec%%|*} =~ ${CAIRN_VM_LANE_ONLY:-.} ]] && n=$((n + 1)); done
echo "== vm lane: running $n packages, one VM each, $jobs at a time, lane timeout ${lane_timeout}s"
running=0
for spec in "${PKGS[@]}"; do
  IFS='|' read -r name pkg env patterns <<<"$spec"
  [[ $name =~ ${CAIRN_VM_LANE_ONLY:-.} ]] || continue
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
  run_pkg "$name" "$pkg" "$env" "$patterns" &
  running=$((running + 1))
done
wait || true

# Report: every run's test2json events through hack/testsum; a package
# whose VM failed (boot failure, timeout) or whose pattern matched no
# test fails the lane too.
bad=()
: >"$work/all.json"
for spec in "${PKGS[@]}"; do
  IFS='|' read -r name pkg env patterns <<<"$spec"
  [[ $name =~ ${CAIRN_VM_LANE_ONLY:-.} ]] || continue
  rc=$(cat "$work/$name.rc" 2>/dev/null || echo missing)
  IFS=';' read -r -a pats <<<"$patterns"
  for i in $(seq 1 "${#pats[@]}"); do
    out="$work/$name.$i.out"
    if [ ! -s "$out" ] || ! grep -q '=== RUN' "$out"; then
      bad+=("$name: -test.run '${pats[$((i - 1))]}' ran no test")
      continue
    fi
    go tool test2json -t -p "${pkg#./}" <"$out" >>"$work/all.json" || true
    # csi-sanity is one Go test; say how many specs it ran.
    sed 's/\x1b\[[0-9;]*m//g' "$out" | grep -ao 'Ran [0-9]* of [0-9]* Specs.*\|[0-9]* Passed | [0-9]* Failed | [0-9]* Pending | [0-9]* Skipped' |
      sed "s/^/== vm lane: $name: csi-sanity: /" || true
  done
  case $rc in
    0) ;;
    124) bad+=("$name: timed out (lane timeout ${lane_timeout}s)") ;;
    125) bad+=("$name: the VM failed") ;;
    *) grep -q '"Action":"fail"' "$work/all.json" || bad+=("$name: exit $rc") ;;
  esac
  if [ "$rc" != 0 ]; then
    echo "----- $name: VM output -----"
    cat "$work/$name.log"
  fi
done

set +e
go run ./hack/testsum -list -label vm-lane <"$work/all.json"
sumrc=$?
set -e
for b in "${bad[@]}"; do echo "vm lane: FAIL: $b"; done
echo "== vm lane: wall time $((SECONDS - t0))s"
[ "$sumrc" = 0 ] && [ "${#bad[@]}" = 0 ]
