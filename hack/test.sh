#!/usr/bin/env bash
# Runs every Cairn test: vet, staticcheck, the unit and integration suites with the race
# detector (root tests make their own loop-file filesystems), csi-sanity per
# pool type, the crash harness with its CI kill count, a short run of every
# fuzz target, the Kubernetes end-to-end test when a cluster is reachable,
# and the VM lane (hack/vm-lane.sh, beside the e2e): the tests this machine's kernel
# cannot run (project quota, online ext4 growth), in a VM with Debian 12's
# kernel, when ../shared/vm is present. Each lane ends with a line
# "<lane>: N passed, N failed, N skipped" (host-lane, vm-lane: one word, the form CI reads); any failure in either lane
# fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."

failed=()

echo "== go vet"
go vet ./...

echo "== staticcheck"
# Pinned to a release that knows the module's Go version (2026.2 reads
# go1.26); a missing or other staticcheck is run through the module proxy.
staticcheck_version=2026.2.2
if command -v staticcheck >/dev/null && [[ $(staticcheck -version) == *"$staticcheck_version"* ]]; then
  staticcheck ./...
else
  go run "honnef.co/go/tools/cmd/staticcheck@$staticcheck_version" ./...
fi

echo "== host lane: go test -race"
# -p 1 keeps tests that attach loop devices and mount filesystems from
# competing for the machine's two cores and eight loop devices. Tests that
# skip for a kernel feature or capability this machine lacks name the VM
# lane in their skip message; hack/testsum lists every skip.
if ! go test -race -p 1 -timeout 45m -count=1 -json ./... | go run ./hack/testsum -label host-lane; then
  failed+=("host lane")
fi

echo "== fuzz (short)"
if [ -x hack/fuzz.sh ]; then
  bash hack/fuzz.sh "${FUZZ_SECONDS:-5}" || failed+=("fuzz")
fi

# The e2e (a Kubernetes cluster on this host) and the VM lane (QEMU) share
# nothing but the CPU, and each takes about 20 minutes, so they run side by
# side: CI takes the longer of the two, not their sum. The VM lane's output
# is kept in a file and printed whole when it ends, so that neither log is
# interleaved with the other. CAIRN_SERIAL_LANES=1 runs them one after the
# other.
vm_pid=
if [ -z "${CAIRN_SERIAL_LANES:-}" ] && [ -x test/e2e/run.sh ]; then
  echo "== vm lane (started in the background; its output follows the e2e)"
  vm_log=$(mktemp /tmp/cairn-vm-lane.XXXXXX)
  # Sharing the CPU slows the lane: its whole-lane timeout is raised.
  CAIRN_VM_LANE_TIMEOUT=${CAIRN_VM_LANE_TIMEOUT:-3600} bash hack/vm-lane.sh >"$vm_log" 2>&1 &
  vm_pid=$!
fi

if [ -x test/e2e/run.sh ]; then
  echo "== e2e"
  bash test/e2e/run.sh || failed+=("e2e")
fi

echo "== vm lane"
if [ -n "$vm_pid" ]; then
  vm_rc=0
  wait "$vm_pid" || vm_rc=$?
  cat "$vm_log"
  rm -f "$vm_log"
  [ "$vm_rc" -eq 0 ] || failed+=("vm lane")
else
  bash hack/vm-lane.sh || failed+=("vm lane")
fi

if [ "${#failed[@]}" -gt 0 ]; then
  echo "== FAILED: ${failed[*]}"
  exit 1
fi
echo "== all tests passed"
