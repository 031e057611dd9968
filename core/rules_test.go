package core

import (
	"errors"
	"slices"
	"strings"
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

// An idempotency key is 1..MaxClientMsgIDLen bytes without control
// characters: at the limit, over it, and with the bytes PostgreSQL's TEXT
// refuses.
func TestValidClientMsgID(t *testing.T) {
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{"01J9ZQ3V5C8W", true},
		{strings.Repeat("a", MaxClientMsgIDLen), true},
		{strings.Repeat("a", MaxClientMsgIDLen+1), false},
		{strings.Repeat("a", 10*MaxClientMsgIDLen), false},
		{"", false},
		{"a\x00b", false},
		{"tab\there", false},
		{"del\x7f", false},
		{"ünïcødé", true},
	} {
		if got := ValidClientMsgID(tc.id); got != tc.ok {
			t.Errorf("ValidClientMsgID(%q) = %v, want %v", tc.id, got, tc.ok)
		}
		err := ValidateSend(&pb.SendRequest{ConvId: "d:a:b", ClientMsgId: tc.id, Envelope: &pb.Envelope{}})
		if (err == nil) != tc.ok {
			t.Errorf("ValidateSend(client_msg_id %q) = %v, want ok=%v", tc.id, err, tc.ok)
		}
		// after_client_msg_id: the same rule, and empty (no predecessor) is fine.
		err = ValidateSend(&pb.SendRequest{ConvId: "d:a:b", ClientMsgId: "m", AfterClientMsgId: tc.id, Envelope: &pb.Envelope{}})
		if want := tc.ok || tc.id == ""; (err == nil) != want {
			t.Errorf("ValidateSend(after_client_msg_id %q) = %v, want ok=%v", tc.id, err, want)
		}
		if err != nil && !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("after_client_msg_id %q: %v, want INVALID_ARGUMENT", tc.id, err)
		}
	}
}
