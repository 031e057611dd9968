package pqxdh

import (
	"bytes"
	"testing"
)

// FuzzAccept feeds arbitrary initial messages to a responder. Nothing but
// the genuine message may be accepted, and no rejected input may consume a
// one-time prekey.
func FuzzAccept(f *testing.F) {
	alice, bob := newDevice(f, 0), newDevice(f, 1)
	out, err := Initiate(alice.id, bob.id.Public(), bob.bundle(0), Config{})
	if err != nil {
		f.Fatal(err)
	}
	genuine, _ := out.Seal([]byte("hi"), ad)
	f.Add(genuine)
	f.Add(genuine[:HandshakeSize])
	f.Fuzz(func(t *testing.T, msg []byte) {
		if in, err := ParseInitial(msg); err == nil && len(in.Handshake) != HandshakeSize {
			t.Fatal("bad handshake slice")
		}
		keys := &MemoryKeys{}
		keys.AddSignedPrekey(bob.spk)
		keys.AddKEMPrekey(bob.kem)
		if err := keys.AddOneTimePrekeys(bob.otps); err != nil {
			t.Fatal(err)
		}
		_, err := Accept(bob.id, keys, msg, ad, Config{})
		if err == nil && !bytes.Equal(msg, genuine) {
			t.Fatalf("accepted a non-genuine message")
		}
		if err != nil && keys.OneTimeCount() != 1 {
			t.Fatal("rejected message consumed a one-time prekey")
		}
	})
}
