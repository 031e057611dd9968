package region_test

import (
	"testing"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
)

// TestDirectImplicitCreation: the first send of one of the two users
// creates the 1:1 conversation with both as members (seq 1 is that
// message: there is no creation entry); a send to a user who does not
// exist is NOT_FOUND with the detail PROTOCOL.md §7.1.1 quotes, and a
// third user's send is the outsider answer. Nothing is stored for either.
func TestDirectImplicitCreation(t *testing.T) {
	h := newHarness(t)
	alice := h.register("alice", 1)
	h.register("bob", 2)
	carol := h.register("carol", 3)
	conv := core.DirectConvID("bob", "alice")
	if conv != "d:alice:bob" {
		t.Fatalf("conversation id %q", conv)
	}
	h.send(alice, 1, 1, conv, "m1", "hi")
	h.send(alice, 1, 2, core.DirectConvID("alice", "zed"), "m2", "to nobody")
	h.send(carol, 3, 1, conv, "c1", "intrude")
	recs := h.waitFor("answers", func(recs []*pb.EdgeRecord) bool {
		return len(responses(recs, 1)) == 2 && len(responses(recs, 3)) == 1
	})
	if ack := responses(recs, 1)[1].GetSend(); ack.GetSeq() != 1 {
		t.Fatalf("first send: %v", responses(recs, 1)[1])
	}
	ms, err := h.store.Members(h.ctx, conv)
	if err != nil || len(ms) != 2 {
		t.Fatalf("members %v, %v", ms, err)
	}
	if e := responses(recs, 1)[2].GetError(); e.GetCode() != pb.ErrorCode_ERROR_CODE_NOT_FOUND || e.GetDetail() != "send to d:alice:zed: user zed: core: not found" {
		t.Fatalf("send to an unknown user: %v", e)
	}
	if _, err := h.store.Conversation(h.ctx, core.DirectConvID("alice", "zed")); err == nil {
		t.Fatal("a conversation with an unknown user was stored")
	}
	if e := responses(recs, 3)[1].GetError(); e.GetCode() != pb.ErrorCode_ERROR_CODE_NOT_FOUND || e.GetDetail() != "send: no such conversation" {
		t.Fatalf("send by a third user: %v", e)
	}
}

// TestTypingHasNoReply: typing is answered only when refused (an
// outsider gets NOT_FOUND "typing: no such conversation"); accepted, it
// produces the event for the other members' devices and no Response. The
// sender's own devices get no typing event.
func TestTypingHasNoReply(t *testing.T) {
	h := newHarness(t)
	alice := h.register("alice", 1)
	bob := h.register("bob", 2)
	carol := h.register("carol", 3)
	conv := core.DirectConvID("alice", "bob")
	h.send(alice, 1, 1, conv, "m1", "hi")
	h.waitFor("ack", func(recs []*pb.EdgeRecord) bool { return responses(recs, 1)[1] != nil })
	typing := func(dev core.DeviceKey, session, reqID uint64) {
		h.ingress(dev, session, reqID, &pb.IngressRecord{Op: &pb.IngressRecord_Typing{Typing: &pb.TypingRequest{ConvId: conv, Typing: true}}}, conv)
	}
	typing(alice, 1, 7)
	typing(carol, 3, 8)
	h.send(alice, 1, 9, conv, "m2", "marker") // same partition: answered after the typing
	recs := h.waitFor("marker and refusal", func(recs []*pb.EdgeRecord) bool {
		return responses(recs, 1)[9] != nil && responses(recs, 3)[8] != nil
	})
	if r := responses(recs, 1)[7]; r != nil {
		t.Fatalf("typing was answered: %v", r)
	}
	if e := responses(recs, 3)[8].GetError(); e.GetCode() != pb.ErrorCode_ERROR_CODE_NOT_FOUND || e.GetDetail() != "typing: no such conversation" {
		t.Fatalf("outsider typing: %v", e)
	}
	var to []core.DeviceKey
	for _, r := range recs {
		if r.GetFrame().GetTyping() != nil {
			for _, t := range r.GetTargets() {
				to = append(to, core.KeyOf(t))
			}
		}
	}
	if len(to) != 1 || to[0] != bob {
		t.Fatalf("typing event went to %v, want [%v]", to, bob)
	}
}

// TestRegisterRequiresIdentityKey: identity_key (32 bytes) is required;
// without it (or with another length) registration is INVALID_ARGUMENT
// before anything else is checked, and nothing is stored.
func TestRegisterRequiresIdentityKey(t *testing.T) {
	h := newHarness(t)
	static := make([]byte, 32)
	static[0] = 1
	for _, key := range [][]byte{nil, make([]byte, 31)} {
		_, err := h.api.Register(h.ctx, static, &pb.RegisterRequest{UserId: "erin", IdentityKey: key, IdentityProof: make([]byte, 64)})
		if w := core.ToWire(err); w.GetCode() != pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT || w.GetDetail() != "register: keys must be 32 bytes: core: invalid argument" {
			t.Fatalf("identity_key %d bytes: %v", len(key), w)
		}
	}
	if _, err := h.store.User(h.ctx, "erin"); err == nil {
		t.Fatal("user stored")
	}
}
