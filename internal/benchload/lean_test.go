package benchload

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/chatmesh/chatmesh/core/pb"
)

// fullDelivery is what proto.Unmarshal makes of b, as leanDelivery
// reports it; ok is false if b is not a valid delivery frame.
func fullDelivery(b []byte) (delivery, bool) {
	var f pb.ServerFrame
	if proto.Unmarshal(b, &f) != nil || f.GetDelivery() == nil {
		return delivery{}, false
	}
	m := f.GetDelivery()
	return delivery{conv: m.GetConvId(), seq: m.GetSeq(), kind: m.GetKind(), body: m.GetEnvelope().GetCiphertext()}, true
}

func sameDelivery(a, b delivery) bool {
	return a.conv == b.conv && a.seq == b.seq && a.kind == b.kind && bytes.Equal(a.body, b.body)
}

func randString(r *rand.Rand, n int) string {
	const abc = "abcdefghijklmnopqrstuvwxyz:0123456789é"
	s := []rune(abc)
	out := make([]rune, r.IntN(n+1))
	for i := range out {
		out[i] = s[r.IntN(len(s))]
	}
	return string(out)
}

func randMessage(r *rand.Rand) *pb.Message {
	m := &pb.Message{
		ConvId:      randString(r, 40),
		Seq:         r.Uint64() >> r.IntN(64),
		MsgId:       randString(r, 26),
		ClientMsgId: randString(r, 30),
		SentAtMs:    r.Int64() - r.Int64(),
		Kind:        pb.MessageKind(r.IntN(4) - 1),
		Epoch:       r.Uint64N(1000),
		Region:      randString(r, 8),
	}
	if r.IntN(4) > 0 {
		m.Sender = &pb.DeviceAddr{UserId: randString(r, 20), DeviceId: r.Uint32()}
	}
	if r.IntN(5) > 0 {
		body := make([]byte, r.IntN(3000))
		for i := range body {
			body[i] = byte(r.Uint32())
		}
		m.Envelope = &pb.Envelope{Ciphertext: body, ContentHint: r.Uint32N(3)}
		for range r.IntN(3) {
			m.Envelope.PerDevice = append(m.Envelope.PerDevice, &pb.DeviceCiphertext{
				Device: &pb.DeviceAddr{UserId: randString(r, 5)}, Ciphertext: []byte(randString(r, 50)),
			})
		}
	}
	if r.IntN(5) == 0 {
		m.Membership = &pb.MembershipChange{Op: pb.MembershipOp_MEMBERSHIP_OP_ADD}
	}
	return m
}

// TestLeanDeliveryMatchesProto: on random deliveries (every Message field,
// per-device ciphertexts, a membership change, empty and multi-KiB
// bodies) the fast decoder reads what proto.Unmarshal reads; on frames it
// does not take on it says so, and the caller's proto.Unmarshal decides.
func TestLeanDeliveryMatchesProto(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		f := &pb.ServerFrame{Body: &pb.ServerFrame_Delivery{Delivery: randMessage(r)}}
		b, err := proto.Marshal(f)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := fullDelivery(b)
		got, ok := leanDelivery(b)
		if !ok || !sameDelivery(got, want) {
			t.Fatalf("frame %d: lean %+v ok=%v, proto %+v", i, got, ok, want)
		}
	}

	deliv := func(m *pb.Message) []byte {
		b, err := proto.Marshal(&pb.ServerFrame{Body: &pb.ServerFrame_Delivery{Delivery: m}})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	one := deliv(&pb.Message{ConvId: "d:a:b", Seq: 7, Kind: pb.MessageKind_MESSAGE_KIND_USER, Envelope: &pb.Envelope{Ciphertext: []byte("x")}})
	two := deliv(&pb.Message{Seq: 8, Envelope: &pb.Envelope{ContentHint: 1}})
	resp, _ := proto.Marshal(&pb.ServerFrame{Body: &pb.ServerFrame_Response{Response: &pb.Response{ReqId: 3}}})
	env := func(e *pb.Envelope) []byte { b, _ := proto.Marshal(e); return b }
	// A Message with its envelope twice, built by hand: proto merges them.
	var twoEnv []byte
	twoEnv = protowire.AppendTag(twoEnv, fieldMessageEnvelope, protowire.BytesType)
	twoEnv = protowire.AppendBytes(twoEnv, env(&pb.Envelope{Ciphertext: []byte("a")}))
	twoEnv = protowire.AppendTag(twoEnv, fieldMessageEnvelope, protowire.BytesType)
	twoEnv = protowire.AppendBytes(twoEnv, env(&pb.Envelope{ContentHint: 2}))
	twoEnvFrame := protowire.AppendBytes(protowire.AppendTag(nil, fieldFrameDelivery, protowire.BytesType), twoEnv)
	// conv_id sent as a varint: proto keeps it as an unknown field.
	wrongType := protowire.AppendVarint(protowire.AppendTag(nil, fieldMessageConvID, protowire.VarintType), 5)
	wrongType = protowire.AppendVarint(protowire.AppendTag(wrongType, fieldMessageSeq, protowire.VarintType), 9)
	wrongTypeFrame := protowire.AppendBytes(protowire.AppendTag(nil, fieldFrameDelivery, protowire.BytesType), wrongType)
	emptyDelivery := protowire.AppendBytes(protowire.AppendTag(nil, fieldFrameDelivery, protowire.BytesType), nil)

	for _, c := range []struct {
		name   string
		b      []byte
		leanOK bool
	}{
		{"one delivery", one, true},
		{"empty delivery", emptyDelivery, true},
		{"conv_id with the wrong wire type", wrongTypeFrame, true},
		{"two deliveries (proto merges)", append(append([]byte{}, one...), two...), false},
		{"response", resp, false},
		{"delivery then response (last oneof wins)", append(append([]byte{}, one...), resp...), false},
		{"envelope twice (proto merges)", twoEnvFrame, false},
		{"truncated", one[:len(one)-1], false},
		{"empty frame", nil, false},
	} {
		got, ok := leanDelivery(c.b)
		if ok != c.leanOK {
			t.Errorf("%s: lean ok=%v, want %v", c.name, ok, c.leanOK)
			continue
		}
		if want, wok := fullDelivery(c.b); ok && (!wok || !sameDelivery(got, want)) {
			t.Errorf("%s: lean %+v, proto %+v (ok=%v)", c.name, got, want, wok)
		}
	}
}

// FuzzLeanDelivery: whatever the bytes, the fast decoder never panics,
// and where it and proto.Unmarshal both read a delivery they agree.
func FuzzLeanDelivery(f *testing.F) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 8 {
		b, _ := proto.Marshal(&pb.ServerFrame{Body: &pb.ServerFrame_Delivery{Delivery: randMessage(r)}})
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, ok := leanDelivery(b)
		if !ok {
			return
		}
		if want, wok := fullDelivery(b); wok && !sameDelivery(got, want) {
			t.Fatalf("lean %+v, proto %+v", got, want)
		}
	})
}
