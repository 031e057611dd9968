package senderkey

import (
	"bytes"
	"testing"
)

func FuzzParse(f *testing.F) {
	s, r := newPair(f)
	d, _ := s.Distribution().MarshalBinary()
	sb, _ := s.MarshalBinary()
	enc(f, s, "skip")
	dec(f, r, enc(f, s, "x"), "x")
	rb, _ := r.MarshalBinary()
	f.Add(d)
	f.Add(sb)
	f.Add(rb)
	f.Fuzz(func(t *testing.T, b []byte) {
		if d, err := ParseDistribution(b); err == nil {
			if again, _ := d.MarshalBinary(); !bytes.Equal(again, b) {
				t.Fatal("distribution not canonical")
			}
		}
		if s, err := ParseSender(b); err == nil {
			if again, _ := s.MarshalBinary(); !bytes.Equal(again, b) {
				t.Fatal("sender not canonical")
			}
		}
		if r, err := ParseReceiver(b, Config{}); err == nil {
			if again, _ := r.MarshalBinary(); !bytes.Equal(again, b) {
				t.Fatal("receiver not canonical")
			}
		}
	})
}

func FuzzDecrypt(f *testing.F) {
	s, r := newPair(f)
	m0 := enc(f, s, "zero")
	f.Add(m0)
	f.Add(enc(f, s, "one"))
	dec(f, r, m0, "zero")
	base := state(f, r)
	f.Fuzz(func(t *testing.T, msg []byte) {
		rr, err := ParseReceiver(base, Config{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := rr.Decrypt(msg, ad); err != nil && !bytes.Equal(base, state(t, rr)) {
			t.Fatal("rejected message changed the receiver")
		}
	})
}
