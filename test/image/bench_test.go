//go:build linux

package image

import (
	"testing"
)

// BenchmarkStagePublish measures NodeStageVolume + NodePublishVolume of an
// image volume through the real binary, for mount access (loop attach,
// fsck of the existing ext4, mount, bind mount) and block access (loop
// attach, bind mount of the device). Unpublish and unstage run outside the
// timer. The volume is formatted once, before the timer starts.
func BenchmarkStagePublish(b *testing.B) {
	for _, tc := range []struct {
		name  string
		block bool
	}{{"mount", false}, {"block", true}} {
		b.Run(tc.name, func(b *testing.B) {
			e := newEnv(b, "ext4", 1<<30)
			c := mountCap("")
			if tc.block {
				c = blockCap()
			}
			v := e.create("bench-"+tc.name, 64*mib, c, nil, nil)
			e.stagePublish(v)
			e.unpublishUnstage(v)
			b.ResetTimer()
			for range b.N {
				e.stagePublish(v)
				b.StopTimer()
				e.unpublishUnstage(v)
				b.StartTimer()
			}
		})
	}
}
