#!/usr/bin/env bash
# Runs every Cairn test: vet, the unit and integration suites with the race
# detector (root tests make their own loop-file filesystems), csi-sanity per
# pool type, the crash harness with its CI kill count, a short run of every
# fuzz target, and the Kubernetes end-to-end test when a cluster is reachable.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== go vet"
go vet ./...

echo "== go test -race"
# -p 1 keeps tests that attach loop devices and mount filesystems from
# competing for the machine's two cores and eight loop devices.
go test -race -p 1 -timeout 45m -count=1 ./...

echo "== fuzz (short)"
if [ -x hack/fuzz.sh ]; then
  bash hack/fuzz.sh "${FUZZ_SECONDS:-5}"
fi

if [ -x test/e2e/run.sh ]; then
  echo "== e2e"
  bash test/e2e/run.sh
fi
echo "== all tests passed"
