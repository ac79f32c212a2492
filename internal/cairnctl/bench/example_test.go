package bench_test

import (
	"os"

	"github.com/cairn-csi/cairn/internal/cairnctl/bench"
)

// WriteTable prints a Result (what Run returns, and what --json-out
// holds) for a human.
func ExampleWriteTable() {
	res := &bench.Result{
		Driver: bench.DriverInfo{Name: "cairn.csi.dev", VendorVersion: "v0.1.0", NodeID: "node-1"},
		Config: bench.ConfigView{Volumes: 200, Concurrency: 16, LifecycleRuns: 10, CapacityBytes: 64 << 20, DataBytes: 256 << 20, AccessType: "mount",
			RSSVolumes: 1000, DataTimeout: "10m0s"},
		Warnings: []string{"no --work-dir: the lifecycle and data phases were not run"},
		Phases: []bench.Phase{
			{Name: bench.PhaseCreateSequential, Ops: 200, Concurrency: 1, TotalSeconds: 2.5, OpsPerSecond: 80,
				Latency: bench.Latency{P50: 0.0121, P99: 0.0187, Max: 0.0213}},
			{Name: bench.PhaseDataWrite, Ops: 1, Concurrency: 1, TotalSeconds: 0.5, Bytes: 256 << 20, BytesPerSecond: 512 << 20, Note: "fsync'd"},
		},
		Skipped: []bench.Skip{{Phase: bench.PhaseDataClone, Reason: "the controller does not advertise CLONE_VOLUME"}},
		RSS: bench.RSS{Known: true, PID: 4242, BeforeBytes: 20 << 20, MidBytes: 21 << 20, AfterBytes: 22 << 20,
			MidVolumes: 500, Volumes: 1000, BytesPerVolume: 2097},
		Cleanup: bench.Cleanup{Actions: 401},
	}
	bench.WriteTable(os.Stdout, res)
	// Output:
	// driver    cairn.csi.dev v0.1.0 on node node-1
	// config    200 volumes of 64 MiB, 16 concurrent callers, 10 lifecycles, 256 MiB of data, mount access
	// data      --data-timeout 10m0s per call; page cache kept (no --drop-caches)
	// WARNING   no --work-dir: the lifecycle and data phases were not run
	//
	// PHASE              OPS  ERRORS  TIME   OPS/S  P50     P99     MAX     NOTE
	// create/sequential  200  0       2.5s   80.0   12.1ms  18.7ms  21.3ms
	// data/write         1    0       500ms  -      -       -       -       256 MiB at 512 MiB/s; fsync'd
	//
	// skipped
	//   data/clone  the controller does not advertise CLONE_VOLUME
	//
	// driver RSS   pid 4242: 20 MiB with none of the bench's volumes, 21 MiB with 500, 22 MiB with 1000: +2 MiB per 1,000 volumes (slope from 500 to 1000)
	// cleanup      401 actions, 0 errors
}
