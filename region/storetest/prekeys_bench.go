package storetest

import (
	"testing"

	"github.com/chatmesh/chatmesh/core"
)

// BenchPrekeys measures TakeBundle, the one contended prekey write. open
// returns a new, empty store for one sub-benchmark (which must implement
// core.PrekeyStore); BenchPrekeys closes it. Sub-benchmarks:
//
//   - TakeBundle: one goroutine taking bundles of one device, each take
//     consuming a one-time key (durable before the next).
//   - TakeBundleParallel: GOMAXPROCS×4 goroutines taking bundles of the
//     same device at once (senders racing for one recipient).
//
// Each reports takes/s besides ns/op. The supply is uploaded before the
// timer starts, in batches of 200 (the most one upload may carry).
func BenchPrekeys(b *testing.B, open func(b *testing.B) core.Store) {
	setup := func(b *testing.B) (core.PrekeyStore, core.DeviceKey) {
		s := open(b)
		b.Cleanup(func() {
			if err := s.Close(); err != nil {
				b.Errorf("Close: %v", err)
			}
		})
		ps, ok := s.(core.PrekeyStore)
		if !ok {
			b.Fatalf("%T does not implement core.PrekeyStore", s)
		}
		dev := core.DeviceKey{User: "bench", Device: 1}
		for first := 0; first < b.N; first += 200 {
			ids := make([]uint32, 0, 200)
			for id := first; id < min(first+200, b.N); id++ {
				ids = append(ids, uint32(id))
			}
			if err := ps.PutPrekeys(b.Context(), dev, fullUpload("bench", ids...)); err != nil {
				b.Fatal(err)
			}
		}
		return ps, dev
	}
	report := func(b *testing.B) {
		if s := b.Elapsed().Seconds(); s > 0 {
			b.ReportMetric(float64(b.N)/s, "takes/s")
		}
	}
	b.Run("TakeBundle", func(b *testing.B) {
		ps, dev := setup(b)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if bd, err := ps.TakeBundle(b.Context(), dev); err != nil || bd.OneTime == nil {
				b.Fatalf("take %d: %v (one-time %v)", i, err, bd.OneTime)
			}
		}
		b.StopTimer()
		report(b)
	})
	b.Run("TakeBundleParallel", func(b *testing.B) {
		ps, dev := setup(b)
		b.ReportAllocs()
		b.SetParallelism(4)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if bd, err := ps.TakeBundle(b.Context(), dev); err != nil || bd.OneTime == nil {
					b.Errorf("take: %v (one-time %v)", err, bd.OneTime)
					return
				}
			}
		})
		b.StopTimer()
		report(b)
	})
}
