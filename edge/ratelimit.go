package edge

import (
	"sync"
	"time"

	"github.com/chatmesh/chatmesh/core"
)

// bucket is a token bucket: rate tokens per second up to burst. A bucket
// belongs to a device's session and is handed over to the session that
// replaces it (so reconnecting does not refill it); the mutex covers the
// short overlap of the two.
type bucket struct {
	mu          sync.Mutex
	rate, burst float64
	t           core.Tokens
}

func newBucket(rate float64, burst int, now time.Time) *bucket {
	return &bucket{rate: rate, burst: float64(burst), t: core.Tokens{N: float64(burst), Last: now}}
}

// take spends one token if there is one.
func (b *bucket) take(now time.Time) bool {
	ok, _ := b.takeN(now, 1)
	return ok
}

// takeN spends n tokens if there are that many; otherwise it takes nothing
// and returns how long until there will be (n above the burst never passes:
// callers clamp).
func (b *bucket) takeN(now time.Time, n float64) (bool, time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.t.Take(now, n, b.rate, b.burst)
}

// refund gives back n tokens taken by takeN (a later limit refused the frame).
func (b *bucket) refund(n float64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.t.Refund(n, b.burst)
}
