package client_test

import (
	"testing"

	"github.com/chatmesh/chatmesh/client"
	"github.com/chatmesh/chatmesh/core"
)

// TestE2EPresenceOnlyForPeers runs the presence rules through the whole
// stack: a stranger's subscription returns nothing about non-peers and
// delivers none of their live events; a peer gets both; a user who hides
// last seen shows online/offline to peers but never a last-seen time.
func TestE2EPresenceOnlyForPeers(t *testing.T) {
	ends := startStack(t)
	ctx := e2eCtx(t)
	alice, _ := e2eUser(t, ends, "alice", false)
	bob, _ := e2eUser(t, ends, "bob", true)
	mallory, _ := e2eUser(t, ends, "mallory", false)
	dave, _ := e2eUser(t, ends, "dave", false)
	for _, p := range [][2]*client.Client{{alice, bob}, {mallory, dave}} {
		to, _ := p[1].Device()
		id, err := p[0].SendDirect(ctx, to.User, []byte("hi"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p[0].WaitSent(ctx, id); err != nil {
			t.Fatal(err)
		}
	}

	ps, err := mallory.SubscribePresence(ctx, []string{"alice", "bob", "dave"})
	if err != nil || len(ps) != 1 || ps[0].User != "dave" || !ps[0].Online {
		t.Fatalf("mallory's snapshot %+v %v, want dave online only", ps, err)
	}
	ps, err = alice.SubscribePresence(ctx, []string{"bob", "dave"})
	if err != nil || len(ps) != 1 || ps[0].User != "bob" || !ps[0].Online {
		t.Fatalf("alice's snapshot %+v %v, want bob online only", ps, err)
	}

	// bob hides his last seen, then leaves: alice (a peer) sees him go
	// offline with no time.
	if err := bob.SetPrivacy(ctx, core.Privacy{HideLastSeen: true}); err != nil {
		t.Fatal(err)
	}
	bob.Close()
	ev := waitEvent(t, alice, "bob offline", func(ev client.Event) bool {
		p, ok := ev.(client.PresenceEvent)
		return ok && p.User == "bob" && !p.Online
	}).(client.PresenceEvent)
	if ev.LastSeenMs != 0 {
		t.Fatalf("bob hides his last seen, alice got %+v", ev)
	}
	ps, err = alice.SubscribePresence(ctx, []string{"bob"})
	if err != nil || len(ps) != 1 || ps[0].Online || ps[0].LastSeenMs != 0 {
		t.Fatalf("alice's snapshot of bob after he left: %+v %v", ps, err)
	}

	// dave leaves after bob. The presence topic has one partition
	// (region.Start), so mallory's session gets events in production
	// order: anything about bob would arrive before dave's offline event.
	dave.Close()
	waitEvent(t, mallory, "dave offline", func(ev client.Event) bool {
		p, ok := ev.(client.PresenceEvent)
		if ok && p.User != "dave" {
			t.Fatalf("mallory got a presence event about a non-peer: %+v", p)
		}
		return ok && !p.Online && p.LastSeenMs != 0
	})
}
