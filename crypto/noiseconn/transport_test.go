package noiseconn

import (
	"bytes"
	"errors"
	"testing"

	"github.com/flynn/noise"
)

// TestTransportMatchesCipherState: our transport cipher writes and reads
// the bytes noise.CipherState does, the counter moves only on success,
// and the last nonce is refused as noise refuses it.
func TestTransportMatchesCipherState(t *testing.T) {
	var k [32]byte
	for i := range k {
		k[i] = byte(i)
	}
	suite := newSuite()
	ref := noise.UnsafeNewCipherState(suite, k, 0)
	send := newTransport(noise.UnsafeNewCipherState(suite, k, 0))
	recv := newTransport(noise.UnsafeNewCipherState(suite, k, 0))
	for i := range 5 {
		pt := bytes.Repeat([]byte{byte(i)}, i*100)
		want, err := ref.Encrypt(nil, nil, pt)
		if err != nil {
			t.Fatal(err)
		}
		got, err := send.encrypt([]byte("x"), pt)
		if err != nil || !bytes.Equal(got[1:], want) || got[0] != 'x' {
			t.Fatalf("message %d: %x (%v), want %x", i, got, err, want)
		}
		bad := bytes.Clone(want)
		bad[0] ^= 1
		if _, err := recv.decrypt(nil, bad); err == nil {
			t.Fatal("a tampered message decrypted")
		}
		if back, err := recv.decrypt(nil, want); err != nil || !bytes.Equal(back, pt) {
			t.Fatalf("message %d did not decrypt after a failure: %v", i, err)
		}
	}
	last := newTransport(noise.UnsafeNewCipherState(suite, k, noise.MaxNonce))
	if _, err := last.encrypt(nil, []byte("a")); err != nil {
		t.Fatalf("the last nonce: %v", err)
	}
	if _, err := last.encrypt(nil, []byte("b")); !errors.Is(err, noise.ErrMaxNonce) {
		t.Fatalf("past the last nonce: %v", err)
	}
}
