package client

import (
	"errors"
	"slices"
	"testing"

	"github.com/chatmesh/chatmesh/core/pb"
)

// TestGroupRequestsCarryStableKeys: every group change sends the op, users
// and title it names with a client_msg_id, a fresh one per call, and a
// call whose answer is lost with the session resends under the SAME key —
// so the region applies it once (issue 6, defect 11: membership changes
// applied twice after a crash because their key came from the head).
func TestGroupRequestsCarryStableKeys(t *testing.T) {
	p := newTestPeer(t)
	alice, _ := registered(t, p, "alice")
	const g = "g:01J8ZC0000000000000000000A"
	ctx := testCtx(t)
	calls := []struct {
		name  string
		call  func() (*pb.ConversationInfo, error)
		op    pb.MembershipOp
		users []string
		title string
	}{
		{"add", func() (*pb.ConversationInfo, error) { return alice.AddMembers(ctx, g, "bob", "carol") }, pb.MembershipOp_MEMBERSHIP_OP_ADD, []string{"bob", "carol"}, ""},
		{"remove", func() (*pb.ConversationInfo, error) { return alice.RemoveMembers(ctx, g, "carol") }, pb.MembershipOp_MEMBERSHIP_OP_REMOVE, []string{"carol"}, ""},
		{"promote", func() (*pb.ConversationInfo, error) { return alice.Promote(ctx, g, "bob") }, pb.MembershipOp_MEMBERSHIP_OP_PROMOTE, []string{"bob"}, ""},
		{"demote", func() (*pb.ConversationInfo, error) { return alice.Demote(ctx, g, "bob") }, pb.MembershipOp_MEMBERSHIP_OP_DEMOTE, []string{"bob"}, ""},
		{"title", func() (*pb.ConversationInfo, error) { return alice.SetTitle(ctx, g, "new title") }, pb.MembershipOp_MEMBERSHIP_OP_SET_TITLE, nil, "new title"},
		{"accept", func() (*pb.ConversationInfo, error) { return alice.AcceptInvite(ctx, g) }, pb.MembershipOp_MEMBERSHIP_OP_ACCEPT, nil, ""},
		{"decline", func() (*pb.ConversationInfo, error) { return alice.DeclineInvite(ctx, g) }, pb.MembershipOp_MEMBERSHIP_OP_DECLINE, nil, ""},
		{"leave", func() (*pb.ConversationInfo, error) { return alice.Leave(ctx, g) }, pb.MembershipOp_MEMBERSHIP_OP_LEAVE, nil, ""},
	}
	keys := map[string]bool{}
	for _, tc := range calls {
		p.mu.Lock()
		p.dropModify = 1 // the first answer is lost with the session
		p.modifies = nil
		p.mu.Unlock()
		info, err := tc.call()
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if info.GetConvId() != g {
			t.Fatalf("%s: info for %q", tc.name, info.GetConvId())
		}
		p.mu.Lock()
		got := slices.Clone(p.modifies)
		p.mu.Unlock()
		if len(got) != 2 {
			t.Fatalf("%s: %d requests reached the server, want the lost one and its resend", tc.name, len(got))
		}
		first := got[0]
		if first.GetConvId() != g || first.GetOp() != tc.op || !slices.Equal(first.GetUsers(), tc.users) || first.GetTitle() != tc.title {
			t.Fatalf("%s: request %v", tc.name, first)
		}
		if k := first.GetClientMsgId(); k == "" || len(k) > 64 || got[1].GetClientMsgId() != k {
			t.Fatalf("%s: keys %q then %q, want one non-empty key of at most 64 bytes", tc.name, k, got[1].GetClientMsgId())
		}
		if keys[first.GetClientMsgId()] {
			t.Fatalf("%s: key %q reused from an earlier call", tc.name, first.GetClientMsgId())
		}
		keys[first.GetClientMsgId()] = true
	}
	p.mu.Lock()
	applied := len(p.convs[g])
	p.mu.Unlock()
	if applied != len(calls) {
		t.Fatalf("%d changes applied for %d calls", applied, len(calls))
	}

	// A caller-chosen key is kept.
	if _, err := alice.ModifyMembers(ctx, &pb.ModifyMembersRequest{ConvId: g, Op: pb.MembershipOp_MEMBERSHIP_OP_ADD, Users: []string{"dave"}, ClientMsgId: "mine"}); err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	last := p.modifies[len(p.modifies)-1]
	p.mu.Unlock()
	if last.GetClientMsgId() != "mine" {
		t.Fatalf("caller's key replaced by %q", last.GetClientMsgId())
	}

	// Bad arguments are refused before anything is sent.
	for _, bad := range []func() error{
		func() error { _, err := alice.Promote(ctx, "d:alice:bob", "bob"); return err },
		func() error { _, err := alice.AddMembers(ctx, g, "Not Valid"); return err },
		func() error { _, err := alice.SetTitle(ctx, g, string(make([]byte, 201))); return err },
	} {
		if err := bad(); !errors.Is(err, ErrBadArgument) {
			t.Fatalf("bad argument: %v", err)
		}
	}
}

// TestGroupChangeDecoding: membership entries decode into GroupChange
// with the role and invitation fields; user messages do not.
func TestGroupChangeDecoding(t *testing.T) {
	ev := MessageEvent{Message: &pb.Message{ConvId: "g:x", Seq: 7, Kind: pb.MessageKind_MESSAGE_KIND_MEMBERSHIP,
		Membership: &pb.MembershipChange{Op: pb.MembershipOp_MEMBERSHIP_OP_LEAVE, Actor: "alice", Users: []string{"alice"}, Promoted: []string{"bob"}}}}
	g, ok := ev.GroupChange()
	if !ok || g.Conv != "g:x" || g.Seq != 7 || g.Op != pb.MembershipOp_MEMBERSHIP_OP_LEAVE || g.Actor != "alice" ||
		!slices.Equal(g.NewAdmins(), []string{"bob"}) || g.InvitesUser("bob") {
		t.Fatalf("leave: %+v ok=%v admins %v", g, ok, g.NewAdmins())
	}
	ev.Message.Membership = &pb.MembershipChange{Op: pb.MembershipOp_MEMBERSHIP_OP_CREATE, Actor: "alice", Users: []string{"bob"},
		Invited: []string{"carol"}, Promoted: []string{"alice"}, Title: "t"}
	g, _ = ev.GroupChange()
	if !g.InvitesUser("carol") || g.InvitesUser("bob") || g.Title != "t" || !slices.Equal(g.NewAdmins(), []string{"alice"}) {
		t.Fatalf("create: %+v", g)
	}
	ev.Message.Membership = &pb.MembershipChange{Op: pb.MembershipOp_MEMBERSHIP_OP_PROMOTE, Actor: "alice", Users: []string{"dave", "bob"}}
	g, _ = ev.GroupChange()
	if !slices.Equal(g.NewAdmins(), []string{"bob", "dave"}) {
		t.Fatalf("promote: admins %v", g.NewAdmins())
	}
	if _, ok := (MessageEvent{Message: &pb.Message{Kind: pb.MessageKind_MESSAGE_KIND_USER}}).GroupChange(); ok {
		t.Fatal("a user message decoded as a group change")
	}
	info := &pb.ConversationInfo{Members: []string{"a", "b", "c"}, AdminIndexes: []uint32{0, 2, 9}}
	if got := GroupAdmins(info); !slices.Equal(got, []string{"a", "c"}) {
		t.Fatalf("GroupAdmins = %v", got)
	}
}
