package storetest

import (
	"testing"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// testPrivacy: settings default to the zero value, round-trip, are
// replaced whole, are per user, and an unknown user is ErrNotFound.
func testPrivacy(t *testing.T, s core.Store) {
	ctx := t.Context()
	register(t, s, "alice", 1, true)
	register(t, s, "bob", 1, true)
	get := func(user string) core.Privacy {
		t.Helper()
		p, err := s.Privacy(ctx, user)
		if err != nil {
			t.Fatalf("Privacy(%s): %v", user, err)
		}
		return p
	}
	set := func(user string, p core.Privacy) {
		t.Helper()
		if err := s.SetPrivacy(ctx, user, p); err != nil {
			t.Fatalf("SetPrivacy(%s, %+v): %v", user, p, err)
		}
	}
	equal(t, "never set", get("alice"), core.Privacy{})

	hidden := core.Privacy{HideLastSeen: true, AddPolicy: pb.AddPolicy_ADD_POLICY_CONTACTS}
	set("alice", hidden)
	equal(t, "after set", get("alice"), hidden)
	equal(t, "other user untouched", get("bob"), core.Privacy{})

	shown := core.Privacy{HideLastSeen: false, AddPolicy: pb.AddPolicy_ADD_POLICY_EVERYONE}
	set("alice", shown)
	equal(t, "replaced", get("alice"), shown)
	set("alice", core.Privacy{})
	equal(t, "back to zero", get("alice"), core.Privacy{})

	_, err := s.Privacy(ctx, "nobody")
	wantErr(t, "Privacy(unknown user)", err, core.ErrNotFound)
	wantErr(t, "SetPrivacy(unknown user)", s.SetPrivacy(ctx, "nobody", hidden), core.ErrNotFound)
	_, err = s.Privacy(ctx, "nobody")
	wantErr(t, "Privacy(unknown user) after a failed set", err, core.ErrNotFound)
}
