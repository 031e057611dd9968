package client

import (
	"testing"

	"github.com/chatmesh/chatmesh/core/pb"
)

// TestPresenceResubscribeReportsState: after a reconnect the client
// subscribes again, and the answer's state becomes PresenceEvents: a
// change that happened while no session was up (no push could carry it)
// reaches the app. Before, the answer was dropped and the app kept
// showing bob online.
func TestPresenceResubscribeReportsState(t *testing.T) {
	p := newTestPeer(t)
	p.presence = map[string]*pb.PresenceEvent{"bob": {UserId: "bob", Online: true}}
	alice, _ := registered(t, p, "alice")
	ctx := testCtx(t)
	ps, err := alice.SubscribePresence(ctx, []string{"bob"})
	if err != nil || len(ps) != 1 || !ps[0].Online {
		t.Fatalf("subscribe: %v %v", ps, err)
	}
	// bob goes offline while alice's session is down.
	p.mu.Lock()
	p.presence["bob"] = &pb.PresenceEvent{UserId: "bob", Online: false, LastSeenMs: 1234}
	p.mu.Unlock()
	p.dropAll()
	for {
		select {
		case ev := <-alice.Events():
			if pe, ok := ev.(PresenceEvent); ok {
				if pe.User != "bob" || pe.Online || pe.LastSeenMs != 1234 {
					t.Fatalf("presence after reconnect: %+v", pe)
				}
				return
			}
		case <-ctx.Done():
			t.Fatal("no PresenceEvent after the reconnect")
		}
	}
}
