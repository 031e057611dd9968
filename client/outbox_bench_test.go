package client

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkOutboxSettle: a device back online with n queued messages in
// convs conversations sends and settles them all (window 32, 64 in
// flight, each ack removing its entry) — the outbox's scheduling work
// only, no network.
func BenchmarkOutboxSettle(b *testing.B) {
	for _, c := range []struct{ n, convs int }{{1000, 1}, {10000, 1}, {100000, 1}, {10000, 100}, {100000, 100}, {10000, 10000}} {
		b.Run(fmt.Sprintf("n=%d/convs=%d", c.n, c.convs), func(b *testing.B) {
			for range b.N {
				b.StopTimer()
				ob, err := OpenOutbox(b.TempDir())
				if err != nil {
					b.Fatal(err)
				}
				for i := range c.n {
					ob.mu.Lock()
					e := &outboxEntry{n: ob.next, req: sreq(fmt.Sprintf("c%d", i%c.convs), fmt.Sprintf("m%d", i))}
					ob.next++
					ob.mu.Unlock()
					ob.insert(e)
				}
				b.StartTimer()
				now := time.Now()
				inflight := []string{}
				for ob.Len() > 0 {
					picks, _ := ob.sendable(now, 32, 64-len(inflight))
					for _, p := range picks {
						inflight = append(inflight, p.GetClientMsgId())
					}
					if len(inflight) == 0 {
						b.Fatal("nothing in flight and nothing picked")
					}
					// The oldest send is answered.
					if !ob.has(inflight[0]) {
						b.Fatal("in-flight entry missing")
					}
					ob.acked("c0", 32)
					if _, err := ob.Remove(inflight[0]); err != nil {
						b.Fatal(err)
					}
					inflight = inflight[1:]
				}
				b.StopTimer()
				_ = ob.Close()
				b.StartTimer()
			}
		})
	}
}
