package region_test

import (
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// BenchmarkHistoryPeakHeap: sessions concurrently ask history(limit 1000)
// of a conversation of 200 entries of 60 KB (12 MB), and the benchmark
// reports the peak Go heap seen while they run (sampled with
// runtime.ReadMemStats), minus the heap before. Reads are bounded in bytes
// per request and in number per process, so the peak stays near
// MaxConcurrentReads pages whatever the number of sessions. No timing is
// asserted.
//
//	go test ./region -run '^$' -bench HistoryPeakHeap -benchtime 20x
func BenchmarkHistoryPeakHeap(b *testing.B) {
	r := newReadRig(b)
	conv := core.DirectConvID("alice", "bob")
	const n = 200
	for i := 1; i <= n; i++ {
		r.appendEntry(conv, entry(b, conv, "alice", fmt.Sprint(i), uint64(i), 60_000), "alice", "bob")
	}
	bob := core.DeviceKey{User: "bob", Device: 1}
	for _, sessions := range []int{1, 16, 64, 256} {
		b.Run(fmt.Sprintf("sessions=%d", sessions), func(b *testing.B) {
			runtime.GC()
			var base runtime.MemStats
			runtime.ReadMemStats(&base)
			var peak atomic.Uint64
			stop := make(chan struct{})
			sampled := make(chan struct{})
			go func() {
				defer close(sampled)
				var ms runtime.MemStats
				for {
					runtime.ReadMemStats(&ms)
					if ms.HeapAlloc > peak.Load() {
						peak.Store(ms.HeapAlloc)
					}
					select {
					case <-stop:
						return
					case <-time.After(2 * time.Millisecond):
					}
				}
			}()
			var refused, entries atomic.Int64
			b.ResetTimer()
			for range b.N {
				var wg sync.WaitGroup
				for s := range sessions {
					wg.Go(func() {
						f := &pb.ClientFrame{Body: &pb.ClientFrame_History{History: &pb.HistoryRequest{
							ConvId: conv, BeforeSeq: uint64(n + 1 - s%n), Limit: core.MaxPageSize,
						}}}
						resp, err := r.api.Query(r.ctx, bob, f)
						switch {
						case err != nil:
							b.Error(err)
						case resp.GetError() != nil:
							refused.Add(1)
						default:
							entries.Add(int64(len(resp.GetHistory().GetMessages())))
						}
					})
				}
				wg.Wait()
			}
			b.StopTimer()
			close(stop)
			<-sampled
			over := int64(peak.Load()) - int64(base.HeapAlloc)
			b.ReportMetric(float64(over)/(1<<20), "peak-heap-MB")
			b.ReportMetric(float64(entries.Load())/float64(b.N*sessions), "entries/req")
			b.ReportMetric(float64(refused.Load()), "refused")
		})
	}
}
