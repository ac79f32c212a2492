#!/bin/bash
# Runs inside the test VM, started by hack/vm-lane.sh through
# ../shared/vm/run.sh; not meant to be run by hand.
#
#   vm-lane-guest.sh OUTDIR NAME BINARY PATTERN...
#
# Formats the scratch disk /dev/vdb (ext4) as TMPDIR, so that the tests'
# loop-file filesystems live on a disk rather than in the guest's RAM,
# then runs BINARY once per PATTERN (-test.run), writing its
# -test.v=test2json output to OUTDIR/NAME.<i>.out. It prints one line per
# run and exits non-zero if any run did.
set -u
out=$1 name=$2 bin=$3
shift 3
if [ -b /dev/vdb ]; then
  mkdir -p /scratch
  mkfs.ext4 -q -F -E lazy_itable_init=1,nodiscard /dev/vdb && mount /dev/vdb /scratch || exit 125
  export TMPDIR=/scratch
fi
echo "vm: $(uname -r), TMPDIR=${TMPDIR:-/tmp}, CAIRN_VM_LANE=${CAIRN_VM_LANE:-}"
rc=0 i=0
for pat in "$@"; do
  i=$((i + 1))
  start=$SECONDS
  "$bin" -test.v=test2json -test.count=1 -test.timeout="${CAIRN_VM_TEST_TIMEOUT:-12m}" -test.run "$pat" \
    >"$out/$name.$i.out" 2>&1
  r=$?
  echo "vm: $name -test.run '$pat': exit $r in $((SECONDS - start))s"
  [ "$r" = 0 ] || rc=1
done
exit $rc
