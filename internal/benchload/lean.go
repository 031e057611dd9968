package benchload

import (
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/chatmesh/chatmesh/core/pb"
)

// Field numbers read by leanDelivery (proto/chatmesh/v1/chatmesh.proto).
const (
	fieldFrameDelivery     = 2 // ServerFrame.delivery
	fieldMessageConvID     = 1 // Message.conv_id
	fieldMessageSeq        = 2 // Message.seq
	fieldMessageKind       = 7 // Message.kind
	fieldMessageEnvelope   = 8 // Message.envelope
	fieldEnvelopeCiphertxt = 1 // Envelope.ciphertext
)

// delivery is what the load side reads from a pushed Message.
type delivery struct {
	conv string
	seq  uint64
	kind pb.MessageKind
	body []byte // aliases the frame
}

// leanDelivery reads a ServerFrame that is a delivery with protowire,
// taking only the fields the load side uses, as the Centrifugo side
// reads its Replies: a full proto.Unmarshal of every pushed Message (its
// sender, ids, region, UTF-8 checks of each string) was a fifth of the
// load process's CPU in a 500-member group, CPU the server on the same
// cores did not get. ok is false for every other frame, and for a
// delivery whose encoding the fast path does not take on (a repeated
// oneof or envelope, which proto merges; a wire-level error): the caller
// then decodes the frame with proto.Unmarshal, which also reports the
// errors. Fields it skips are checked only for wire structure.
func leanDelivery(b []byte) (d delivery, ok bool) {
	var msg []byte
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return d, false
		}
		b = b[n:]
		if num != fieldFrameDelivery || typ != protowire.BytesType || msg != nil {
			return d, false // another body, or a delivery twice (merged by proto)
		}
		v, m := protowire.ConsumeBytes(b)
		if m < 0 {
			return d, false
		}
		msg, b = v, b[m:]
		if msg == nil {
			msg = []byte{}
		}
	}
	if msg == nil {
		return d, false
	}
	envSeen := false
	for len(msg) > 0 {
		num, typ, n := protowire.ConsumeTag(msg)
		if n < 0 {
			return d, false
		}
		msg = msg[n:]
		switch {
		case num == fieldMessageConvID && typ == protowire.BytesType:
			v, m := protowire.ConsumeBytes(msg)
			if m < 0 {
				return d, false
			}
			d.conv, msg = string(v), msg[m:]
		case num == fieldMessageSeq && typ == protowire.VarintType:
			v, m := protowire.ConsumeVarint(msg)
			if m < 0 {
				return d, false
			}
			d.seq, msg = v, msg[m:]
		case num == fieldMessageKind && typ == protowire.VarintType:
			v, m := protowire.ConsumeVarint(msg)
			if m < 0 {
				return d, false
			}
			d.kind, msg = pb.MessageKind(int32(v)), msg[m:]
		case num == fieldMessageEnvelope && typ == protowire.BytesType:
			v, m := protowire.ConsumeBytes(msg)
			if m < 0 || envSeen {
				return d, false
			}
			envSeen, msg = true, msg[m:]
			body, ok := leanCiphertext(v)
			if !ok {
				return d, false
			}
			d.body = body
		default:
			m := protowire.ConsumeFieldValue(num, typ, msg)
			if m < 0 {
				return d, false
			}
			msg = msg[m:]
		}
	}
	return d, true
}

// leanCiphertext reads Envelope.ciphertext (the last one, as proto does
// for a repeated scalar), skipping the other fields.
func leanCiphertext(env []byte) (body []byte, ok bool) {
	for len(env) > 0 {
		num, typ, n := protowire.ConsumeTag(env)
		if n < 0 {
			return nil, false
		}
		env = env[n:]
		if num == fieldEnvelopeCiphertxt && typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(env)
			if m < 0 {
				return nil, false
			}
			body, env = v, env[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, env)
		if m < 0 {
			return nil, false
		}
		env = env[m:]
	}
	return body, true
}
