package edge_test

import (
	"testing"

	"github.com/chatmesh/chatmesh/core/pb"
)

// TestMalformedDirectIDs: a 1:1 id with the users unordered or equal
// (a conversation with oneself, "d:x:x") is malformed: INVALID_ARGUMENT
// with the detail PROTOCOL.md §7.1.1 quotes, answered by the edge before
// anything is written.
func TestMalformedDirectIDs(t *testing.T) {
	v := newEnv(t, nil)
	c, _ := v.registered("ws", "alice")
	for _, conv := range []string{"d:alice:alice", "d:bob:alice", "d:alice", "d:alice:Bob"} {
		r := c.call(&pb.ClientFrame{Body: &pb.ClientFrame_Send{Send: &pb.SendRequest{ConvId: conv, ClientMsgId: "m1", Envelope: &pb.Envelope{Ciphertext: []byte("x")}}}})
		e := r.GetError()
		if e.GetCode() != pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT || e.GetDetail() != "send: malformed conversation id: core: invalid argument" {
			t.Fatalf("%s: %v", conv, r)
		}
	}
}
