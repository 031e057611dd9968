package ratchet

import (
	"bytes"
	"testing"
)

func FuzzUnmarshal(f *testing.F) {
	alice, bob := pair(f, Config{})
	enc(f, alice, "skipped")
	if _, err := bob.Decrypt(enc(f, alice, "x"), ad); err != nil {
		f.Fatal(err)
	}
	f.Add(snapshot(f, bob))
	f.Add(snapshot(f, alice))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Unmarshal(data, Config{})
		if err != nil {
			return
		}
		if again := snapshot(t, s); !bytes.Equal(again, data) {
			t.Fatal("not canonical")
		}
		if s.CanSend() {
			if _, err := s.Encrypt([]byte("p"), nil); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// FuzzDecrypt: arbitrary messages never panic, and a rejected message leaves
// the state unchanged.
func FuzzDecrypt(f *testing.F) {
	alice, bob := pair(f, Config{MaxSkip: 50})
	first := enc(f, alice, "first")
	f.Add(first)
	f.Add(enc(f, alice, "second"))
	if _, err := bob.Decrypt(first, ad); err != nil {
		f.Fatal(err)
	}
	base := snapshot(f, bob)
	f.Fuzz(func(t *testing.T, msg []byte) {
		s, err := Unmarshal(base, Config{MaxSkip: 50})
		if err != nil {
			t.Fatal(err)
		}
		_, _ = ParseHeader(msg)
		if _, err := s.Decrypt(msg, ad); err != nil && !bytes.Equal(base, snapshot(t, s)) {
			t.Fatal("rejected message changed the state")
		}
	})
}
