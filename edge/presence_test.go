package edge_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// TestPresenceOnlyPermittedUsers: a session is subscribed only to the
// users the region's snapshot returned. Events for a user the region did
// not permit are never forwarded — neither those that arrive while the
// snapshot is being read nor later ones — while a permitted user's event
// that arrives meanwhile is held and delivered right after the snapshot.
func TestPresenceOnlyPermittedUsers(t *testing.T) {
	v := newEnv(t, nil)
	c, _ := v.registered("ws", "alice")
	before := v.e.Stats().PresenceHandled
	hookErr := make(chan error, 1)
	v.be.mu.Lock()
	v.be.permit = map[string]bool{"bob": true}
	v.be.beforeSnapshot = func() {
		// Both events reach the edge while the snapshot is in flight.
		var err error
		for _, ev := range []*pb.PresenceEvent{{UserId: "carol", Online: true, LastSeenMs: 5}, {UserId: "bob", Online: true, LastSeenMs: 11}} {
			b, _ := proto.Marshal(&pb.PresenceRecord{Event: ev})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if perr := v.bus.Produce(ctx, core.BusRecord{Topic: "presence", Key: []byte(ev.GetUserId()), Value: b}); perr != nil && err == nil {
				err = perr
			}
			cancel()
		}
		for range 1000 {
			if v.e.Stats().PresenceHandled >= before+2 {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		hookErr <- err
	}
	v.be.mu.Unlock()

	r := c.call(&pb.ClientFrame{Body: &pb.ClientFrame_PresenceSubscribe{PresenceSubscribe: &pb.PresenceSubscribe{Users: []string{"bob", "carol"}}}})
	if err := <-hookErr; err != nil {
		t.Fatal(err)
	}
	if v.e.Stats().PresenceHandled < before+2 {
		t.Fatal("the edge did not handle the events produced during the snapshot")
	}
	if us := r.GetPresence().GetUsers(); len(us) != 1 || us[0].GetUserId() != "bob" {
		t.Fatalf("snapshot %v, want bob only", r)
	}
	// bob's event from the snapshot window arrives after the snapshot; carol's never.
	if p := c.recv().GetPresence(); p.GetUserId() != "bob" || p.GetLastSeenMs() != 11 {
		t.Fatalf("first frame after the snapshot %v, want bob's held event", p)
	}
	v.produce("presence", "carol", &pb.PresenceRecord{Event: &pb.PresenceEvent{UserId: "carol", Online: false, LastSeenMs: 6}})
	v.produce("presence", "bob", &pb.PresenceRecord{Event: &pb.PresenceEvent{UserId: "bob", Online: false, LastSeenMs: 12}})
	if p := c.recv().GetPresence(); p.GetUserId() != "bob" || p.GetLastSeenMs() != 12 {
		t.Fatalf("next frame %v, want bob's offline event (carol is not permitted)", p)
	}

	// A snapshot that permits nobody leaves the session subscribed to nobody.
	v.be.mu.Lock()
	v.be.beforeSnapshot = nil
	v.be.snapshot = nil
	v.be.permit = map[string]bool{}
	v.be.mu.Unlock()
	r = c.call(&pb.ClientFrame{Body: &pb.ClientFrame_PresenceSubscribe{PresenceSubscribe: &pb.PresenceSubscribe{Users: []string{"bob"}}}})
	if len(r.GetPresence().GetUsers()) != 0 {
		t.Fatalf("snapshot %v, want empty", r)
	}
	handled := v.e.Stats().PresenceHandled
	v.produce("presence", "bob", &pb.PresenceRecord{Event: &pb.PresenceEvent{UserId: "bob", Online: true}})
	waitFor(t, func() bool { return v.e.Stats().PresenceHandled > handled })
	c.ping() // the pong is the next frame: bob's event, handled, was not forwarded
}
