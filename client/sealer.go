package client

import (
	"bytes"
	"context"

	"github.com/chatmesh/chatmesh/core/pb"
)

// Sealer turns a message body into the envelope the server stores and
// forwards, and back. It is the seam where end-to-end encryption plugs in:
// a Signal-style implementation encrypts per recipient device (or with a
// Sender Key) in Seal and decrypts in Open. The client calls Seal once per
// Send (before the outbox write, so a resend carries the same envelope)
// and Open once per received user message.
type Sealer interface {
	Seal(ctx context.Context, conv string, body []byte) (*pb.Envelope, error)
	Open(ctx context.Context, m *pb.Message) ([]byte, error)
}

// ContentText is the content hint for UTF-8 text bodies.
const ContentText = 1

// InsecurePlaintextSealer puts the body into Envelope.ciphertext AS
// PLAINTEXT. It provides no confidentiality at all: the server, its logs and
// Kafka can read every message. It exists until the end-to-end sealer is
// wired in, and is the default only for that reason.
type InsecurePlaintextSealer struct{}

// Seal implements Sealer without encryption.
func (InsecurePlaintextSealer) Seal(_ context.Context, _ string, body []byte) (*pb.Envelope, error) {
	return &pb.Envelope{Ciphertext: bytes.Clone(body), ContentHint: ContentText}, nil
}

// Open implements Sealer without decryption.
func (InsecurePlaintextSealer) Open(_ context.Context, m *pb.Message) ([]byte, error) {
	return bytes.Clone(m.GetEnvelope().GetCiphertext()), nil
}
