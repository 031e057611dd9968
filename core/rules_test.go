package core

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/chatmesh/chatmesh/core/pb"
)

func TestIDs(t *testing.T) {
	for _, tc := range []struct {
		id   string
		kind pb.ConversationKind
	}{
		{DirectConvID("bob", "alice"), pb.ConversationKind_CONVERSATION_KIND_DIRECT},
		{"d:alice:bob", pb.ConversationKind_CONVERSATION_KIND_DIRECT},
		{"d:bob:alice", pb.ConversationKind_CONVERSATION_KIND_UNSPECIFIED}, // not canonical
		{"d:alice:alice", pb.ConversationKind_CONVERSATION_KIND_UNSPECIFIED},
		{"d:alice", pb.ConversationKind_CONVERSATION_KIND_UNSPECIFIED},
		{"g:01HZX3", pb.ConversationKind_CONVERSATION_KIND_GROUP},
		{"g:", pb.ConversationKind_CONVERSATION_KIND_UNSPECIFIED},
		{"g:a-b", pb.ConversationKind_CONVERSATION_KIND_UNSPECIFIED},
		{"x:1", pb.ConversationKind_CONVERSATION_KIND_UNSPECIFIED},
	} {
		if got := KindOf(tc.id); got != tc.kind {
			t.Errorf("KindOf(%q) = %v, want %v", tc.id, got, tc.kind)
		}
	}
	for id, ok := range map[string]bool{"alice": true, "a.b-c_d": true, "": false, "Alice": false, ".a": false, "a:b": false, string(make([]byte, 65)): false} {
		if ValidUserID(id) != ok {
			t.Errorf("ValidUserID(%q) != %v", id, ok)
		}
	}
}

func TestPlanModify(t *testing.T) {
	cur := MemberSet{"alice": 1, "bob": 1}
	req := func(op pb.MembershipOp, users ...string) *pb.ModifyMembersRequest {
		return &pb.ModifyMembersRequest{ConvId: "g:x", Op: op, Users: users}
	}
	p, err := PlanModify("alice", cur, req(pb.MembershipOp_MEMBERSHIP_OP_ADD, "carol", "bob", "carol"))
	if err != nil || !slices.Equal(p.Add, []string{"carol"}) || p.NoOp {
		t.Fatalf("add: %+v %v", p, err)
	}
	p, err = PlanModify("alice", cur, req(pb.MembershipOp_MEMBERSHIP_OP_ADD, "bob"))
	if err != nil || !p.NoOp {
		t.Fatalf("add existing must be a no-op: %+v %v", p, err)
	}
	if _, err := PlanModify("mallory", cur, req(pb.MembershipOp_MEMBERSHIP_OP_ADD, "eve")); !errors.Is(err, ErrNotMember) {
		t.Fatalf("non-member add: %v", err)
	}
	p, err = PlanModify("bob", cur, req(pb.MembershipOp_MEMBERSHIP_OP_LEAVE))
	if err != nil || !slices.Equal(p.Remove, []string{"bob"}) {
		t.Fatalf("leave: %+v %v", p, err)
	}
	big := MemberSet{}
	for i := 0; i < MaxGroupMembers; i++ {
		big[fmt.Sprintf("u%d", i)] = 1
	}
	if _, err := PlanModify("u0", big, req(pb.MembershipOp_MEMBERSHIP_OP_ADD, "newbie")); !errors.Is(err, ErrGroupFull) {
		t.Fatalf("add past limit: %v", err)
	}
	if _, err := PlanModify("alice", cur, req(pb.MembershipOp_MEMBERSHIP_OP_CREATE, "x")); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("bad op: %v", err)
	}
}

func TestPlanCreateGroupLimit(t *testing.T) {
	members := make([]string, MaxGroupMembers-1)
	for i := range members {
		members[i] = fmt.Sprintf("u%d", i)
	}
	if _, err := PlanCreateGroup("owner", &pb.CreateGroupRequest{ConvId: "g:a", Members: members}); err != nil {
		t.Fatalf("exactly %d members: %v", MaxGroupMembers, err)
	}
	members = append(members, "one-more")
	if _, err := PlanCreateGroup("owner", &pb.CreateGroupRequest{ConvId: "g:a", Members: members}); !errors.Is(err, ErrGroupFull) {
		t.Fatalf("%d members: %v", MaxGroupMembers+1, err)
	}
}

func TestForDeviceStripsOthers(t *testing.T) {
	me := DeviceKey{"bob", 2}
	m := &pb.Message{ConvId: "d:alice:bob", Seq: 3, Envelope: &pb.Envelope{Ciphertext: []byte("shared"), PerDevice: []*pb.DeviceCiphertext{
		{Device: DeviceKey{"bob", 1}.Addr(), Ciphertext: []byte("for bob.1")},
		{Device: me.Addr(), Ciphertext: []byte("for bob.2")},
		{Device: DeviceKey{"alice", 2}.Addr(), Ciphertext: []byte("for alice.2")},
	}}}
	got := ForDevice(m, me)
	if len(got.GetEnvelope().GetPerDevice()) != 1 || string(got.GetEnvelope().GetPerDevice()[0].GetCiphertext()) != "for bob.2" {
		t.Fatalf("per-device: %v", got.GetEnvelope().GetPerDevice())
	}
	if len(m.GetEnvelope().GetPerDevice()) != 3 {
		t.Fatal("ForDevice modified its input")
	}
	if got.GetSeq() != 3 || string(got.GetEnvelope().GetCiphertext()) != "shared" {
		t.Fatal("ForDevice lost fields")
	}
}

func TestSendersToNotify(t *testing.T) {
	msgs := []*pb.Message{
		{Kind: pb.MessageKind_MESSAGE_KIND_USER, Sender: DeviceKey{"alice", 1}.Addr()},
		{Kind: pb.MessageKind_MESSAGE_KIND_USER, Sender: DeviceKey{"bob", 1}.Addr()},
		{Kind: pb.MessageKind_MESSAGE_KIND_MEMBERSHIP, Sender: DeviceKey{"carol", 1}.Addr()},
		{Kind: pb.MessageKind_MESSAGE_KIND_USER, Sender: DeviceKey{"alice", 2}.Addr()},
	}
	if got := SendersToNotify("bob", msgs); !slices.Equal(got, []string{"alice"}) {
		t.Fatalf("got %v", got)
	}
}
