package edge

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// openRecorder is a test double of the region that records SessionOpened.
type openRecorder struct {
	oneDevice
	mu     sync.Mutex
	opened []uint64
}

func (o *openRecorder) SessionOpened(_ context.Context, r core.Route) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.opened = append(o.opened, r.Session)
	return nil
}

// TestNewestGenerationWins: sessions of one device are ordered by their
// generation (handshake completion on this edge), not by when their
// backend calls return. An older session that arrives after a newer one
// is installed loses without touching the route; a newer one replaces the
// installed one.
func TestNewestGenerationWins(t *testing.T) {
	dev := core.DeviceKey{User: "a", Device: 1}
	be := &openRecorder{oneDevice: oneDevice{dev}}
	e, err := New(Config{ID: "e1"}, be, &recordingBus{})
	if err != nil {
		t.Fatal(err)
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	defer e.cancel()
	mk := func(gen uint64) *session {
		s := &session{e: e, id: 100 + gen, gen: gen, stop: make(chan struct{})}
		s.bucket.Store(newBucket(1, 1, time.Now()))
		return s
	}
	ctx := context.Background()
	g2, g1, g3 := mk(2), mk(1), mk(3)
	for _, s := range []*session{g2, g1, g3} {
		if err := s.becomeDevice(ctx, dev); err != nil {
			t.Fatal(err)
		}
	}
	if got := e.byDevice[dev]; got != g3 || e.sessions[g3.id] != g3 || e.sessions[g1.id] != nil {
		t.Fatalf("installed %v, sessions %v", got, e.sessions)
	}
	if len(be.opened) != 2 || be.opened[0] != g2.id || be.opened[1] != g3.id {
		t.Fatalf("SessionOpened for %v, want [%d %d] (the older one must not touch the route)", be.opened, g2.id, g3.id)
	}
	for name, s := range map[string]*session{"gen 1 (late)": g1, "gen 2 (replaced)": g2} {
		if s.live() || s.final.Load().GetCode() != pb.ErrorCode_ERROR_CODE_REPLACED || s.final.Load().GetReconnect() {
			t.Fatalf("%s: live %v, final %v", name, s.live(), s.final.Load())
		}
	}
	if g1.opened || !g2.opened || !g3.live() {
		t.Fatalf("opened: g1 %v g2 %v; g3 live %v", g1.opened, g2.opened, g3.live())
	}
	if e.Stats().Replaced != 2 || len(e.devLocks) != 0 {
		t.Fatalf("replaced %d, device locks left %d", e.Stats().Replaced, len(e.devLocks))
	}
}
