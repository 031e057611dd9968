package edge_test

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core"
	"github.com/chatmesh/chatmesh/core/pb"
	"github.com/chatmesh/chatmesh/edge"
)

// sized returns an envelope whose encoding is exactly n bytes.
func sized(t *testing.T, n int) *pb.Envelope {
	t.Helper()
	env := &pb.Envelope{Ciphertext: make([]byte, n)}
	for proto.Size(env) > n {
		env.Ciphertext = env.Ciphertext[:len(env.Ciphertext)-1]
	}
	if proto.Size(env) != n {
		t.Fatalf("no envelope of exactly %d bytes", n)
	}
	return env
}

// TestSizeLimits: what the edge accepts is what it advertises, and
// anything it accepts can be pushed back out. An envelope of exactly
// max_envelope_bytes with the longest ids is accepted, and the delivery
// the region builds from it reaches the recipient by push; one byte more
// is MESSAGE_TOO_LARGE; a frame one byte above max_frame_bytes is
// FRAME_TOO_LARGE; the session keeps working after each refusal, and
// nothing refused is produced.
func TestSizeLimits(t *testing.T) {
	v := newEnv(t, nil)
	ingress := v.tail("ingress")
	senderID, recipientID := strings.Repeat("s", core.MaxUserIDLen), strings.Repeat("r", core.MaxUserIDLen)
	sender, sdev := v.registered("ws", senderID)
	recipient, rdev := v.registered("ws", recipientID)
	if h := sender.hello; h.GetMaxFrameBytes() != core.MaxClientFrameBytes || h.GetMaxEnvelopeBytes() != core.MaxEnvelopeBytes {
		t.Fatalf("server hello %v", h)
	}
	conv := core.DirectConvID(senderID, recipientID)
	cmid := strings.Repeat("c", core.MaxClientMsgIDLen)
	sendFrame := func(reqID uint64, env *pb.Envelope) *pb.ClientFrame {
		return &pb.ClientFrame{ReqId: reqID, Body: &pb.ClientFrame_Send{Send: &pb.SendRequest{ConvId: conv, ClientMsgId: cmid, Envelope: env}}}
	}

	// Exactly the maximum: accepted and produced.
	env := sized(t, core.MaxEnvelopeBytes)
	if n := proto.Size(sendFrame(1<<62, env)); n > core.MaxClientFrameBytes {
		t.Fatalf("a maximal send takes %d bytes, above max_frame_bytes %d", n, core.MaxClientFrameBytes)
	}
	// Naming the longest predecessor (PROTOCOL.md §7.1.2) still fits.
	withAfter := sendFrame(1<<62, env)
	withAfter.GetSend().AfterClientMsgId = strings.Repeat("p", core.MaxClientMsgIDLen)
	if n := proto.Size(withAfter); n > core.MaxClientFrameBytes {
		t.Fatalf("a maximal send naming its predecessor takes %d bytes, above max_frame_bytes %d", n, core.MaxClientFrameBytes)
	}
	sender.send(sendFrame(1, env))
	var ir pb.IngressRecord
	select {
	case rec := <-ingress:
		if err := proto.Unmarshal(rec.Value, &ir); err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the maximal send was not produced")
	}
	if !proto.Equal(ir.GetSend().GetEnvelope(), env) {
		t.Fatal("envelope changed on the way to ingress")
	}
	// The delivery, built as the sequencer builds it, fits and is pushed.
	m := &pb.Message{
		ConvId: conv, Seq: 1 << 40, MsgId: "01ARZ3NDEKTSV4RRFFQ69G5FAV", Sender: sdev.Addr(),
		ClientMsgId: cmid, SentAtMs: time.Now().UnixMilli(), Kind: pb.MessageKind_MESSAGE_KIND_USER, Envelope: ir.GetSend().GetEnvelope(),
	}
	if n := proto.Size(m); n > core.MaxMessageBytes {
		t.Fatalf("stored entry of %d bytes exceeds MaxMessageBytes", n)
	}
	v.produce(edge.EdgeTopic("e1"), conv, &pb.EdgeRecord{Targets: []*pb.DeviceAddr{rdev.Addr()},
		Frame: &pb.ServerFrame{Body: &pb.ServerFrame_Delivery{Delivery: m}}})
	if d := recipient.recv().GetDelivery(); !proto.Equal(d, m) {
		t.Fatalf("recipient did not get the maximal delivery (%d bytes)", proto.Size(d))
	}

	// One byte more: MESSAGE_TOO_LARGE, nothing produced, session fine.
	produced := v.e.Stats().Produced
	if r := sender.call(sendFrame(0, sized(t, core.MaxEnvelopeBytes+1))); r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_MESSAGE_TOO_LARGE {
		t.Fatalf("envelope of max+1: %v", r)
	}
	sender.ping()

	// A frame of exactly max_frame_bytes is read (and refused for its
	// envelope); one byte more is FRAME_TOO_LARGE.
	frame := func(reqID uint64, n int) []byte {
		f := sendFrame(reqID, &pb.Envelope{Ciphertext: make([]byte, n)})
		for proto.Size(f) > n {
			f.GetSend().GetEnvelope().Ciphertext = f.GetSend().GetEnvelope().Ciphertext[:len(f.GetSend().GetEnvelope().GetCiphertext())-1]
		}
		b, _ := proto.Marshal(f)
		if len(b) != n {
			t.Fatalf("no frame of exactly %d bytes", n)
		}
		return b
	}
	sender.sendRaw(frame(41, core.MaxClientFrameBytes))
	if r := sender.recv().GetResponse(); r.GetReqId() != 41 || r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_MESSAGE_TOO_LARGE {
		t.Fatalf("frame of max_frame_bytes: %v", r)
	}
	sender.sendRaw(frame(42, core.MaxClientFrameBytes+1))
	if r := sender.recv().GetResponse(); r.GetReqId() != 42 || r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_FRAME_TOO_LARGE {
		t.Fatalf("frame of max_frame_bytes+1: %v", r)
	}
	sender.ping()
	if st := v.e.Stats(); st.Produced != produced {
		t.Fatalf("refused sends were produced: %d -> %d", produced, st.Produced)
	}
}

// TestFrameTooLargeToSend: a frame the edge cannot encrypt (above the
// Noise limit) never ends the session: a Response becomes an INTERNAL
// error for the same request, anything else is dropped, and both are
// counted.
func TestFrameTooLargeToSend(t *testing.T) {
	v := newEnv(t, nil)
	c, dev := v.registered("ws", "big")
	rt, _ := v.be.route(dev)
	topic := edge.EdgeTopic("e1")
	huge := make([]byte, core.MaxFramePlaintext)
	v.produce(topic, "k", &pb.EdgeRecord{Targets: []*pb.DeviceAddr{dev.Addr()}, Frame: &pb.ServerFrame{Body: &pb.ServerFrame_Delivery{
		Delivery: &pb.Message{ConvId: "g:x", Seq: 1, Envelope: &pb.Envelope{Ciphertext: huge}}}}})
	v.produce(topic, "k", &pb.EdgeRecord{SessionId: rt.Session, Frame: &pb.ServerFrame{Body: &pb.ServerFrame_Response{
		Response: &pb.Response{ReqId: 555, Error: &pb.Error{Code: pb.ErrorCode_ERROR_CODE_NOT_FOUND, Detail: string(huge)}}}}})
	if r := c.recv().GetResponse(); r.GetReqId() != 555 || r.GetError().GetCode() != pb.ErrorCode_ERROR_CODE_INTERNAL {
		t.Fatalf("oversized response: got %v", r)
	}
	c.ping()
	if st := v.e.Stats(); st.TooLargeToSend != 2 || st.WriteErrors != 0 {
		t.Fatalf("stats %+v", st)
	}
}
