package core

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/chatmesh/chatmesh/core/pb"
)

// group builds a state: admins, members and invited users, joined in the
// order given (admins first).
func groupState(admins, members, invited []string) *ConvState {
	var ms []Member
	seq := uint64(1)
	for _, u := range admins {
		ms = append(ms, Member{User: u, JoinedSeq: seq, Admin: true})
		seq++
	}
	for _, u := range members {
		ms = append(ms, Member{User: u, JoinedSeq: seq})
		seq++
	}
	for _, u := range invited {
		ms = append(ms, Member{User: u, JoinedSeq: seq, Invited: true})
		seq++
	}
	return NewConvState(Conversation{ID: "g:x", Kind: pb.ConversationKind_CONVERSATION_KIND_GROUP, Head: seq, Title: "t"}, ms, nil)
}

func everyone(users ...string) map[string]UserFacts {
	f := map[string]UserFacts{}
	for _, u := range users {
		f[u] = UserFacts{Exists: true}
	}
	return f
}

func TestPlanGroupChange(t *testing.T) {
	req := func(op pb.MembershipOp, users ...string) *pb.ModifyMembersRequest {
		return &pb.ModifyMembersRequest{ConvId: "g:x", Op: op, Users: users, ClientMsgId: "k"}
	}
	type want struct {
		err                                  error
		add, remove, invite, promote, demote []string
		noop                                 bool
	}
	st := groupState([]string{"alice"}, []string{"bob", "carol"}, []string{"ivy"})
	facts := everyone("dave", "erin", "bob")
	facts["shy"] = UserFacts{Exists: true, Policy: pb.AddPolicy_ADD_POLICY_CONTACTS}
	facts["friend"] = UserFacts{Exists: true, Policy: pb.AddPolicy_ADD_POLICY_CONTACTS, Contact: true}
	for _, tc := range []struct {
		name  string
		actor string
		req   *pb.ModifyMembersRequest
		want  want
	}{
		{"admin adds, duplicates and members ignored", "alice", req(pb.MembershipOp_MEMBERSHIP_OP_ADD, "dave", "bob", "dave"), want{add: []string{"dave"}}},
		{"add of a member is a no-op", "alice", req(pb.MembershipOp_MEMBERSHIP_OP_ADD, "bob"), want{noop: true}},
		{"non-admin cannot add", "bob", req(pb.MembershipOp_MEMBERSHIP_OP_ADD, "dave"), want{err: ErrForbidden}},
		{"outsider gets not found", "mallory", req(pb.MembershipOp_MEMBERSHIP_OP_ADD, "dave"), want{err: ErrNotFound}},
		{"unknown user", "alice", req(pb.MembershipOp_MEMBERSHIP_OP_ADD, "ghost"), want{err: ErrNotFound}},
		{"contacts-only user is invited", "alice", req(pb.MembershipOp_MEMBERSHIP_OP_ADD, "shy", "friend"), want{add: []string{"friend"}, invite: []string{"shy"}}},
		{"non-admin cannot remove", "bob", req(pb.MembershipOp_MEMBERSHIP_OP_REMOVE, "carol"), want{err: ErrForbidden}},
		{"admin removes member and invitation", "alice", req(pb.MembershipOp_MEMBERSHIP_OP_REMOVE, "carol", "ivy", "nobody"), want{remove: []string{"carol", "ivy"}}},
		{"anyone leaves", "carol", req(pb.MembershipOp_MEMBERSHIP_OP_LEAVE), want{remove: []string{"carol"}}},
		{"last admin leaves: the longest-standing member is promoted", "alice", req(pb.MembershipOp_MEMBERSHIP_OP_LEAVE), want{remove: []string{"alice"}, promote: []string{"bob"}}},
		{"last admin removed by self: heir promoted", "alice", req(pb.MembershipOp_MEMBERSHIP_OP_REMOVE, "alice", "bob"), want{remove: []string{"alice", "bob"}, promote: []string{"carol"}}},
		{"promote", "alice", req(pb.MembershipOp_MEMBERSHIP_OP_PROMOTE, "bob"), want{promote: []string{"bob"}}},
		{"promote an invited user refused", "alice", req(pb.MembershipOp_MEMBERSHIP_OP_PROMOTE, "ivy"), want{err: ErrInvalidArgument}},
		{"non-admin cannot promote", "bob", req(pb.MembershipOp_MEMBERSHIP_OP_PROMOTE, "bob"), want{err: ErrForbidden}},
		{"last admin cannot demote self", "alice", req(pb.MembershipOp_MEMBERSHIP_OP_DEMOTE, "alice"), want{err: ErrForbidden}},
		{"demote a non-admin is a no-op", "alice", req(pb.MembershipOp_MEMBERSHIP_OP_DEMOTE, "bob"), want{noop: true}},
		{"invited cannot send changes", "ivy", req(pb.MembershipOp_MEMBERSHIP_OP_LEAVE), want{err: ErrNotMember}},
		{"invited accepts", "ivy", req(pb.MembershipOp_MEMBERSHIP_OP_ACCEPT), want{add: []string{"ivy"}}},
		{"invited declines", "ivy", req(pb.MembershipOp_MEMBERSHIP_OP_DECLINE), want{remove: []string{"ivy"}}},
		{"member accepting again is a no-op", "bob", req(pb.MembershipOp_MEMBERSHIP_OP_ACCEPT), want{noop: true}},
		{"outsider cannot accept", "mallory", req(pb.MembershipOp_MEMBERSHIP_OP_ACCEPT), want{err: ErrNotFound}},
		{"bad op", "alice", req(pb.MembershipOp_MEMBERSHIP_OP_CREATE, "x"), want{err: ErrInvalidArgument}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := PlanGroupChange(st, tc.actor, tc.req, facts)
			if tc.want.err != nil {
				if !errors.Is(err, tc.want.err) {
					t.Fatalf("err = %v, want %v", err, tc.want.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.NoOp != tc.want.noop {
				t.Fatalf("noop = %v", p.NoOp)
			}
			for name, pair := range map[string][2][]string{
				"add": {p.Add, tc.want.add}, "remove": {p.Remove, tc.want.remove}, "invite": {p.Invite, tc.want.invite},
				"promote": {p.Promote, tc.want.promote}, "demote": {p.Demote, tc.want.demote},
			} {
				if !slices.Equal(pair[0], pair[1]) {
					t.Errorf("%s = %v, want %v", name, pair[0], pair[1])
				}
			}
		})
	}
}

func TestPlanGroupChangeTitleAndAdmins(t *testing.T) {
	st := groupState([]string{"alice", "bob"}, []string{"carol"}, nil)
	p, err := PlanGroupChange(st, "alice", &pb.ModifyMembersRequest{ConvId: "g:x", Op: pb.MembershipOp_MEMBERSHIP_OP_SET_TITLE, Title: "new"}, nil)
	if err != nil || p.Title == nil || *p.Title != "new" || p.Change.GetTitle() != "new" {
		t.Fatalf("title: %+v %v", p, err)
	}
	if _, err := PlanGroupChange(st, "carol", &pb.ModifyMembersRequest{ConvId: "g:x", Op: pb.MembershipOp_MEMBERSHIP_OP_SET_TITLE, Title: "x"}, nil); !errors.Is(err, ErrForbidden) {
		t.Fatalf("member sets title: %v", err)
	}
	// One of two admins may demote the other, not both at once.
	if p, err := PlanGroupChange(st, "alice", &pb.ModifyMembersRequest{ConvId: "g:x", Op: pb.MembershipOp_MEMBERSHIP_OP_DEMOTE, Users: []string{"bob"}}, nil); err != nil || !slices.Equal(p.Demote, []string{"bob"}) {
		t.Fatalf("demote: %+v %v", p, err)
	}
	if _, err := PlanGroupChange(st, "alice", &pb.ModifyMembersRequest{ConvId: "g:x", Op: pb.MembershipOp_MEMBERSHIP_OP_DEMOTE, Users: []string{"bob", "alice"}}, nil); !errors.Is(err, ErrForbidden) {
		t.Fatalf("demote every admin: %v", err)
	}
	// An admin leaving while another admin stays promotes nobody.
	if p, err := PlanGroupChange(st, "alice", &pb.ModifyMembersRequest{ConvId: "g:x", Op: pb.MembershipOp_MEMBERSHIP_OP_LEAVE}, nil); err != nil || len(p.Promote) != 0 {
		t.Fatalf("leave with another admin: %+v %v", p, err)
	}
}

func TestGroupLimitCountsInvitations(t *testing.T) {
	var members []string
	for i := 0; i < MaxGroupMembers-2; i++ {
		members = append(members, fmt.Sprintf("u%03d", i))
	}
	st := groupState([]string{"admin"}, members, []string{"pending"}) // 500 known
	facts := everyone("new")
	_, err := PlanGroupChange(st, "admin", &pb.ModifyMembersRequest{ConvId: "g:x", Op: pb.MembershipOp_MEMBERSHIP_OP_ADD, Users: []string{"new"}}, facts)
	if !errors.Is(err, ErrGroupFull) {
		t.Fatalf("add past the limit (invitation counted): %v", err)
	}
	// Adding the invited user directly does not grow the group.
	facts["pending"] = UserFacts{Exists: true}
	if p, err := PlanGroupChange(st, "admin", &pb.ModifyMembersRequest{ConvId: "g:x", Op: pb.MembershipOp_MEMBERSHIP_OP_ADD, Users: []string{"pending"}}, facts); err != nil || !slices.Equal(p.Add, []string{"pending"}) {
		t.Fatalf("add invited: %+v %v", p, err)
	}
}

func TestPlanCreateGroup(t *testing.T) {
	id := GroupID("owner", "01J0000000000000000000000A")
	if !IsGroupID(id) || !GroupCreatedBy(id, "owner") || GroupCreatedBy(id, "mallory") || GroupCreatedBy("g:01J0000000000000000000000A", "owner") {
		t.Fatalf("group id binding broken: %s", id)
	}
	members := make([]string, MaxGroupMembers-1)
	for i := range members {
		members[i] = fmt.Sprintf("u%d", i)
	}
	facts := everyone(members...)
	p, err := PlanCreateGroup("owner", &pb.CreateGroupRequest{ConvId: id, Members: members}, facts)
	if err != nil || len(p.Add) != MaxGroupMembers || !slices.Equal(p.Promote, []string{"owner"}) || !slices.Equal(p.Change.GetPromoted(), []string{"owner"}) {
		t.Fatalf("exactly %d members: %v", MaxGroupMembers, err)
	}
	if _, err := PlanCreateGroup("owner", &pb.CreateGroupRequest{ConvId: id, Members: append(members, "one-more")}, everyone(append(members, "one-more")...)); !errors.Is(err, ErrGroupFull) {
		t.Fatalf("%d members: %v", MaxGroupMembers+1, err)
	}
	if _, err := PlanCreateGroup("mallory", &pb.CreateGroupRequest{ConvId: id}, nil); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("someone else's id: %v", err)
	}
	facts = everyone("bob")
	facts["shy"] = UserFacts{Exists: true, Policy: pb.AddPolicy_ADD_POLICY_CONTACTS}
	p, err = PlanCreateGroup("owner", &pb.CreateGroupRequest{ConvId: id, Members: []string{"shy", "bob"}}, facts)
	if err != nil || !slices.Equal(p.Add, []string{"bob", "owner"}) || !slices.Equal(p.Invite, []string{"shy"}) || !slices.Equal(p.Change.GetInvited(), []string{"shy"}) {
		t.Fatalf("consent at create: %+v %v", p, err)
	}
}

func TestConvStateApplyAndCursors(t *testing.T) {
	st := groupState([]string{"alice"}, []string{"bob"}, []string{"ivy"})
	head := st.Conv.Head
	// A user entry by bob, then ivy accepts.
	st.Apply(AppendRequest{}, &pb.Message{Seq: head + 1, Kind: pb.MessageKind_MESSAGE_KIND_USER, Sender: &pb.DeviceAddr{UserId: "bob", DeviceId: 1}})
	st.Apply(AppendRequest{AddMembers: []string{"ivy"}}, &pb.Message{Seq: head + 2, Kind: pb.MessageKind_MESSAGE_KIND_MEMBERSHIP})
	if !st.IsMember("ivy") || st.Members["ivy"].JoinedSeq != head+2 || st.Conv.Head != head+2 {
		t.Fatalf("accept not applied: %+v", st.Members["ivy"])
	}
	// ivy's ack covers bob's message from before she joined: no receipt range.
	ivy := DeviceKey{"ivy", 1}
	mv, ok, err := st.PlanCursor(ivy, CursorDelivered, head+2)
	if err != nil || !ok || mv.From != head+1 {
		t.Fatalf("join point: %+v %v %v", mv, ok, err)
	}
	if s, complete := st.ReceiptSenders(mv); !complete || len(s) != 0 {
		t.Fatalf("receipt for entries before joining: %v", s)
	}
	// alice's ack covers bob's entry: bob gets a receipt.
	alice := DeviceKey{"alice", 1}
	st.Cursors[alice] = Cursor{Conv: "g:x", Device: alice, Delivered: head} // acked all before the state was loaded
	mv, ok, _ = st.PlanCursor(alice, CursorDelivered, 1000)
	if !ok || mv.Seq != head+2 {
		t.Fatalf("clamp to head: %+v", mv)
	}
	if s, complete := st.ReceiptSenders(mv); !complete || !slices.Equal(s, []string{"bob"}) {
		t.Fatalf("senders: %v %v", s, complete)
	}
	st.MoveCursor(mv)
	if _, ok, _ := st.PlanCursor(alice, CursorDelivered, head+2); ok {
		t.Fatal("a repeated ack moved the cursor")
	}
	// An older range than the window was loaded with: not complete.
	mv, ok, _ = st.PlanCursor(DeviceKey{"bob", 1}, CursorRead, head+2)
	if _, complete := st.ReceiptSenders(mv); !ok || complete {
		t.Fatalf("window must not claim entries before it: %+v", mv)
	}
	if _, _, err := st.PlanCursor(DeviceKey{"mallory", 1}, CursorRead, 1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("outsider cursor: %v", err)
	}
	// Several entries by the same senders, and the acker's own: each
	// other sender once, sorted.
	h := st.Conv.Head
	for i, u := range []string{"ivy", "bob", "alice", "ivy", "bob"} {
		st.Apply(AppendRequest{}, &pb.Message{Seq: h + uint64(i) + 1, Kind: pb.MessageKind_MESSAGE_KIND_USER, Sender: &pb.DeviceAddr{UserId: u, DeviceId: 1}})
	}
	mv, ok, _ = st.PlanCursor(alice, CursorDelivered, h+5)
	if s, complete := st.ReceiptSenders(mv); !ok || !complete || !slices.Equal(s, []string{"bob", "ivy"}) {
		t.Fatalf("senders of repeated entries: %v %v", s, complete)
	}
}

// The recent-senders window covers at least recentMax user entries once
// that many were applied, answers a move inside it without a scan, and
// says so when a move reaches before it. A direct conversation keeps none.
func TestConvStateRecentWindow(t *testing.T) {
	st := groupState([]string{"alice"}, []string{"bob", "ivy"}, nil)
	h := st.Conv.Head
	alice := DeviceKey{"alice", 1}
	st.Cursors[alice] = Cursor{Conv: "g:x", Device: alice, Delivered: h}
	const n = 2*recentMax + 37 // past two trims
	for i := uint64(1); i <= n; i++ {
		u := "bob"
		if i == n-recentMax+1 {
			u = "ivy" // the oldest entry a full window must still hold
		}
		st.Apply(AppendRequest{}, &pb.Message{Seq: h + i, Kind: pb.MessageKind_MESSAGE_KIND_USER, Sender: &pb.DeviceAddr{UserId: u, DeviceId: 1}})
		if len(st.recent) > 2*recentMax {
			t.Fatalf("window grew to %d entries", len(st.recent))
		}
		if from := h + max(i, recentMax) - recentMax; !complete(st, alice, from, h+i) {
			t.Fatalf("after %d entries, a move over the last %d was not answered from the window", i, h+i-from)
		}
	}
	at := func(from, seq uint64) ([]string, bool) {
		return st.ReceiptSenders(CursorMove{Conv: "g:x", Dev: alice, Kind: CursorDelivered, From: from, Seq: seq})
	}
	if s, complete := at(h+n-recentMax, h+n); !complete || !slices.Equal(s, []string{"bob", "ivy"}) {
		t.Fatalf("a move over the last %d entries: %v complete=%v", recentMax, s, complete)
	}
	if s, complete := at(h+n-recentMax+1, h+n); !complete || !slices.Equal(s, []string{"bob"}) {
		t.Fatalf("a move after ivy's entry: %v complete=%v", s, complete)
	}
	if s, complete := at(h+n-recentMax-1, h+n-recentMax+1); !complete || !slices.Equal(s, []string{"bob", "ivy"}) {
		t.Fatalf("a move ending at ivy's entry: %v complete=%v", s, complete)
	}
	if _, complete := at(h, h+n); complete {
		t.Fatal("a move from before the window claimed to be complete")
	}
	d := NewConvState(Conversation{ID: DirectConvID("alice", "bob"), Kind: pb.ConversationKind_CONVERSATION_KIND_DIRECT, Head: 1},
		[]Member{{User: "alice", JoinedSeq: 1}, {User: "bob", JoinedSeq: 1}}, nil)
	for i := uint64(2); i < 100; i++ {
		d.Apply(AppendRequest{}, &pb.Message{Seq: i, Kind: pb.MessageKind_MESSAGE_KIND_USER, Sender: &pb.DeviceAddr{UserId: "bob", DeviceId: 1}})
	}
	if len(d.recent) != 0 {
		t.Fatalf("a direct conversation kept %d recent entries", len(d.recent))
	}
	if s, complete := d.ReceiptSenders(CursorMove{Conv: d.Conv.ID, Dev: alice, From: 1, Seq: 99}); !complete || !slices.Equal(s, []string{"bob"}) {
		t.Fatalf("direct receipt: %v %v", s, complete)
	}
}

func complete(st *ConvState, dev DeviceKey, from, seq uint64) bool {
	_, ok := st.ReceiptSenders(CursorMove{Conv: st.Conv.ID, Dev: dev, Kind: CursorDelivered, From: from, Seq: seq})
	return ok
}

// TestGroupIDVector pins the creator binding of PROTOCOL.md §7.5 so a
// second implementation can check its own.
func TestGroupIDVector(t *testing.T) {
	if got, want := GroupID("owner", "01J0000000000000000000000A"), "g:01J0000000000000000000000AKV2DHYZZWZ"; got != want {
		t.Fatalf("GroupID = %q, want %q (PROTOCOL.md §7.5)", got, want)
	}
}

// When the last admin left while only invitations remained, the first to
// accept becomes an admin: a group never has members and no admin.
func TestAcceptPromotesWhenNoAdmin(t *testing.T) {
	st := groupState(nil, nil, []string{"ivy", "joe"})
	p, err := PlanGroupChange(st, "ivy", &pb.ModifyMembersRequest{ConvId: "g:x", Op: pb.MembershipOp_MEMBERSHIP_OP_ACCEPT}, nil)
	if err != nil || !slices.Equal(p.Add, []string{"ivy"}) || !slices.Equal(p.Promote, []string{"ivy"}) || !slices.Equal(p.Change.GetPromoted(), []string{"ivy"}) {
		t.Fatalf("accept into an admin-less group: %+v %v", p, err)
	}
	st = groupState([]string{"alice"}, nil, []string{"ivy"})
	if p, _ := PlanGroupChange(st, "ivy", &pb.ModifyMembersRequest{ConvId: "g:x", Op: pb.MembershipOp_MEMBERSHIP_OP_ACCEPT}, nil); len(p.Promote) != 0 {
		t.Fatalf("accept with an admin present promoted %v", p.Promote)
	}
}

// TestMembersAt: the recipients of an entry are the members who had
// joined by its seq, sorted, invitations left out; the shared list is
// rebuilt when Apply changes the membership and kept otherwise.
func TestMembersAt(t *testing.T) {
	st := groupState([]string{"alice"}, []string{"carol", "bob"}, []string{"ivy"})
	head := st.Conv.Head
	all := st.MembersAt(head)
	if !slices.Equal(all, []string{"alice", "bob", "carol"}) {
		t.Fatalf("members at head: %v", all)
	}
	if changed := st.Apply(AppendRequest{}, &pb.Message{Seq: head + 1, Kind: pb.MessageKind_MESSAGE_KIND_USER, Sender: &pb.DeviceAddr{UserId: "bob", DeviceId: 1}}); changed {
		t.Fatal("a user message reported a membership change")
	}
	if again := st.MembersAt(head + 1); &again[0] != &all[0] {
		t.Fatal("the list was built again without a membership change")
	}
	if !st.Apply(AppendRequest{AddMembers: []string{"ivy", "dan"}}, &pb.Message{Seq: head + 2, Kind: pb.MessageKind_MESSAGE_KIND_MEMBERSHIP}) {
		t.Fatal("an add did not report a membership change")
	}
	if got := st.MembersAt(head + 2); !slices.Equal(got, []string{"alice", "bob", "carol", "dan", "ivy"}) {
		t.Fatalf("members after the add: %v", got)
	}
	// A resend of the user entry at head+1 goes to those who had joined.
	if got := st.MembersAt(head + 1); !slices.Equal(got, []string{"alice", "bob", "carol"}) {
		t.Fatalf("recipients of an earlier entry: %v", got)
	}
	if !slices.Equal(all, []string{"alice", "bob", "carol"}) {
		t.Fatalf("a list handed out earlier was modified: %v", all)
	}
	if !st.Apply(AppendRequest{RemoveMembers: []string{"bob"}}, &pb.Message{Seq: head + 3, Kind: pb.MessageKind_MESSAGE_KIND_MEMBERSHIP}) {
		t.Fatal("a removal did not report a membership change")
	}
	if got := st.MembersAt(head + 3); !slices.Equal(got, []string{"alice", "carol", "dan", "ivy"}) {
		t.Fatalf("members after the removal: %v", got)
	}
}
