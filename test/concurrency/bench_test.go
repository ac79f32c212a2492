package concurrency

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// BenchmarkCreateDeleteParallel creates and deletes volumes on the real
// binary from 1, 4 and 16 goroutines per GOMAXPROCS, each pair on its own
// name. ops/s (create+delete pairs per second) rising with parallelism is
// the proof that calls on different volumes do not queue behind a global
// lock; the store batches concurrent commits into one fsync.
func BenchmarkCreateDeleteParallel(b *testing.B) {
	e := start(b, 32)
	var seq atomic.Int64
	for _, p := range []int{1, 4, 16} {
		b.Run(fmt.Sprintf("parallelism-%d", p), func(b *testing.B) {
			b.SetParallelism(p)
			ctx := context.Background()
			b.RunParallel(func(pb *testing.PB) {
				c := e.clients[int(seq.Add(1))%len(e.clients)]
				for pb.Next() {
					name := fmt.Sprintf("bench-%d", seq.Add(1))
					resp, err := c.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{
						Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20},
						VolumeCapabilities: []*csi.VolumeCapability{mountCap},
					})
					if err != nil {
						b.Error(err)
						return
					}
					if _, err := c.ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: resp.GetVolume().GetVolumeId()}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
		})
	}
}
