package client_test

import (
	"slices"
	"testing"

	"github.com/chatmesh/chatmesh/client"
	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// TestE2EGroupRolesAndConsent drives the rules of PROTOCOL.md §7.5.1
// through the real stack: admins, the last admin, invitations, consent,
// idempotent changes.
func TestE2EGroupRolesAndConsent(t *testing.T) {
	ends := startStack(t)
	ctx := e2eCtx(t)
	alice, _ := e2eUser(t, ends, "alice", false)
	bob, _ := e2eUser(t, ends, "bob", false)
	carol, _ := e2eUser(t, ends, "carol", false)
	dave, _ := e2eUser(t, ends, "dave", false)
	code := func(err error) pb.ErrorCode { return core.Code(err) }
	mustInfo := func(info *pb.ConversationInfo, err error) *pb.ConversationInfo {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return info
	}
	sendWait := func(c *client.Client, conv, body string) uint64 {
		t.Helper()
		id, err := c.Send(ctx, conv, []byte(body))
		if err != nil {
			t.Fatal(err)
		}
		res, err := c.WaitSent(ctx, id)
		if err != nil {
			t.Fatalf("send %q: %v", body, err)
		}
		return res.Seq
	}
	// dave admits only contacts; he has no 1:1 with alice.
	if err := dave.SetPrivacy(ctx, core.Privacy{AddPolicy: pb.AddPolicy_ADD_POLICY_CONTACTS}); err != nil {
		t.Fatal(err)
	}

	// The creator is the only admin; dave is invited, not added.
	info := mustInfo(alice.CreateGroup(ctx, "roles", []string{"bob", "carol", "dave"}))
	g := info.GetConvId()
	if !slices.Equal(info.GetMembers(), []string{"alice", "bob", "carol"}) || !slices.Equal(client.GroupAdmins(info), []string{"alice"}) ||
		!slices.Equal(info.GetInvited(), []string{"dave"}) {
		t.Fatalf("after create: %v", info)
	}
	create := collect(t, bob, 1)[0]
	if gc, ok := create.GroupChange(); !ok || !slices.Equal(gc.Promoted, []string{"alice"}) || !gc.InvitesUser("dave") {
		t.Fatalf("CREATE entry: %+v", gc)
	}

	// Non-admins may do none of the admin ops, and nothing is written.
	for name, err := range map[string]error{
		"add":     func() error { _, err := bob.AddMembers(ctx, g, "carol"); return err }(),
		"remove":  func() error { _, err := bob.RemoveMembers(ctx, g, "alice"); return err }(),
		"promote": func() error { _, err := bob.Promote(ctx, g, "bob"); return err }(),
		"demote":  func() error { _, err := bob.Demote(ctx, g, "alice"); return err }(),
		"title":   func() error { _, err := bob.SetTitle(ctx, g, "mine"); return err }(),
	} {
		if code(err) != pb.ErrorCode_ERROR_CODE_FORBIDDEN {
			t.Fatalf("bob %s: %v, want FORBIDDEN", name, err)
		}
	}

	// Admins promote and set the title.
	info = mustInfo(alice.Promote(ctx, g, "bob"))
	if !slices.Equal(client.GroupAdmins(info), []string{"alice", "bob"}) {
		t.Fatalf("after promote: admins %v", client.GroupAdmins(info))
	}
	if info = mustInfo(bob.SetTitle(ctx, g, "renamed")); info.GetTitle() != "renamed" {
		t.Fatalf("after SET_TITLE: %q", info.GetTitle())
	}

	// The invitee sees the invitation, reads nothing else and cannot send.
	convs, err := dave.ListConversations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if i := slices.IndexFunc(convs, func(c *pb.ConversationInfo) bool { return c.GetConvId() == g }); i < 0 || !slices.Contains(convs[i].GetInvited(), "dave") {
		t.Fatalf("dave's list: %v", convs)
	}
	inv := collect(t, dave, 1)[0]
	if gc, ok := inv.GroupChange(); !ok || gc.Op != pb.MembershipOp_MEMBERSHIP_OP_CREATE || !gc.InvitesUser("dave") {
		t.Fatalf("dave's first entry: %v", inv.Message)
	}
	sendWait(alice, g, "before dave accepts")
	id, _ := dave.Send(ctx, g, []byte("uninvited"))
	if _, err := dave.WaitSent(ctx, id); code(err) != pb.ErrorCode_ERROR_CODE_NOT_MEMBER {
		t.Fatalf("invitee's send: %v, want NOT_MEMBER", err)
	}
	if _, err := dave.FetchHistory(ctx, g, 0, 50); code(err) != pb.ErrorCode_ERROR_CODE_NOT_MEMBER {
		t.Fatalf("invitee's history: %v, want NOT_MEMBER", err)
	}

	// ACCEPT: dave reads from the ACCEPT entry on, nothing before it.
	info = mustInfo(dave.AcceptInvite(ctx, g))
	if !slices.Contains(info.GetMembers(), "dave") || len(info.GetInvited()) != 0 {
		t.Fatalf("after accept: %v", info)
	}
	after := sendWait(alice, g, "after dave accepted")
	got := collect(t, dave, 2)
	if gc, _ := got[0].GroupChange(); gc.Op != pb.MembershipOp_MEMBERSHIP_OP_ACCEPT || !slices.Equal(gc.Users, []string{"dave"}) ||
		got[1].Seq() != after || string(got[1].Body) != "after dave accepted" {
		t.Fatalf("dave after accept: %v / #%d %q", got[0].Message.GetMembership(), got[1].Seq(), got[1].Body)
	}

	// The last admin cannot be demoted; when the last admin (bob, once
	// alice is demoted) leaves, the longest-standing member takes over:
	// alice and carol joined at seq 1, and the tie goes to the lower id.
	mustInfo(bob.Demote(ctx, g, "alice"))
	if _, err := bob.Demote(ctx, g, "bob"); code(err) != pb.ErrorCode_ERROR_CODE_FORBIDDEN {
		t.Fatalf("demoting the last admin: %v, want FORBIDDEN", err)
	}
	info = mustInfo(bob.Leave(ctx, g))
	if !slices.Equal(client.GroupAdmins(info), []string{"alice"}) {
		t.Fatalf("after the last admin left: admins %v of %v", client.GroupAdmins(info), info.GetMembers())
	}

	// A change resent with the same key applies once.
	req := &pb.ModifyMembersRequest{ConvId: g, Op: pb.MembershipOp_MEMBERSHIP_OP_ADD, Users: []string{"bob"}, ClientMsgId: "add-bob-once"}
	first := mustInfo(alice.ModifyMembers(ctx, req))
	again := mustInfo(alice.ModifyMembers(ctx, req))
	if first.GetHeadSeq() != again.GetHeadSeq() {
		t.Fatalf("resent ADD moved the head %d → %d", first.GetHeadSeq(), again.GetHeadSeq())
	}

	// DECLINE and an admin's cancel remove invitations.
	frank, _ := e2eUser(t, ends, "frank", false)
	if err := frank.SetPrivacy(ctx, core.Privacy{AddPolicy: pb.AddPolicy_ADD_POLICY_CONTACTS}); err != nil {
		t.Fatal(err)
	}
	if info = mustInfo(alice.AddMembers(ctx, g, "frank")); !slices.Equal(info.GetInvited(), []string{"frank"}) {
		t.Fatalf("frank not invited: %v", info)
	}
	mustInfo(frank.DeclineInvite(ctx, g))
	if info = mustInfo(alice.AddMembers(ctx, g, "frank")); !slices.Equal(info.GetInvited(), []string{"frank"}) {
		t.Fatalf("frank not invited again: %v", info)
	}
	if info = mustInfo(alice.RemoveMembers(ctx, g, "frank")); len(info.GetInvited()) != 0 {
		t.Fatalf("cancelled invitation still listed: %v", info)
	}
	if _, err := frank.AcceptInvite(ctx, g); err == nil {
		t.Fatal("accepting a cancelled invitation succeeded")
	}
	if gc, _ := collect(t, carol, 1)[0].GroupChange(); gc.Op != pb.MembershipOp_MEMBERSHIP_OP_CREATE {
		t.Fatalf("carol's first entry: %+v", gc)
	}
}
