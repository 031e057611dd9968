package senderkey

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"fmt"
	"testing"

	"github.com/chatmesh/chatmesh/crypto/ratchet"
)

var ad = []byte("g:01J group / alice:1")

func newPair(t testing.TB) (*Sender, *Receiver) {
	t.Helper()
	s, err := NewSender(nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := s.Distribution().MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	d, err := ParseDistribution(raw)
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewReceiver(d, Config{})
	if err != nil {
		t.Fatal(err)
	}
	return s, r
}

func enc(t testing.TB, s *Sender, m string) []byte {
	t.Helper()
	ct, err := s.Encrypt([]byte(m), ad)
	if err != nil {
		t.Fatal(err)
	}
	return ct
}

func dec(t testing.TB, r *Receiver, ct []byte, want string) {
	t.Helper()
	pt, err := r.Decrypt(ct, ad)
	if err != nil || string(pt) != want {
		t.Fatalf("decrypt %q: got %q, %v", want, pt, err)
	}
}

func state(t testing.TB, r *Receiver) []byte {
	t.Helper()
	b, _ := r.MarshalBinary()
	return b
}

func TestOrderedOutOfOrderAndDuplicates(t *testing.T) {
	s, r := newPair(t)
	var ms [][]byte
	for i := range 10 {
		ms = append(ms, enc(t, s, fmt.Sprint(i)))
	}
	for _, i := range []int{0, 3, 1, 9, 2, 8, 4, 5, 7, 6} {
		dec(t, r, ms[i], fmt.Sprint(i))
	}
	before := state(t, r)
	for i := range ms {
		if _, err := r.Decrypt(ms[i], ad); !errors.Is(err, ErrDuplicate) {
			t.Fatalf("replay %d: %v", i, err)
		}
	}
	if !bytes.Equal(before, state(t, r)) {
		t.Fatal("replays changed the receiver")
	}
}

func TestTamperedAndForgedRejected(t *testing.T) {
	s, r := newPair(t)
	dec(t, r, enc(t, s, "first"), "first")
	m := enc(t, s, "second")
	before := state(t, r)
	for i := range m {
		bad := bytes.Clone(m)
		bad[i] ^= 0x04
		if _, err := r.Decrypt(bad, ad); err == nil {
			t.Fatalf("byte %d flipped: accepted", i)
		}
	}
	if _, err := r.Decrypt(m, []byte("another group")); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("wrong context: %v", err)
	}
	// A member who holds the chain key (every member does) but not the
	// signing key forges a message: the signature check rejects it.
	forger := &Sender{keyID: s.keyID, iteration: s.iteration, chain: s.chain}
	fs, _ := NewSender(nil)
	forger.sign = fs.sign
	if _, err := r.Decrypt(enc(t, forger, "forged"), ad); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("forgery: %v", err)
	}
	if !bytes.Equal(before, state(t, r)) {
		t.Fatal("rejected messages changed the receiver")
	}
	dec(t, r, m, "second")
}

func TestBoundsRotationAndLateJoiner(t *testing.T) {
	s, err := NewSender(nil)
	if err != nil {
		t.Fatal(err)
	}
	early := enc(t, s, "before join")
	r, err := NewReceiver(s.Distribution(), Config{MaxSkip: 5, MaxSkipped: 3})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Decrypt(early, ad); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("late joiner read an earlier message: %v", err)
	}
	var ms [][]byte
	for i := range 8 {
		ms = append(ms, enc(t, s, fmt.Sprint(i)))
	}
	if _, err := r.Decrypt(ms[6], ad); !errors.Is(err, ErrTooFarAhead) {
		t.Fatalf("6 ahead with MaxSkip 5: %v", err)
	}
	dec(t, r, ms[5], "5") // 5 skipped, cap 3 keeps 2,3,4
	if _, err := r.Decrypt(ms[0], ad); err == nil {
		t.Fatal("evicted skipped key still decrypts")
	}
	dec(t, r, ms[3], "3")
	// Rotation (a member left): a new sender key; the old receiver cannot
	// read it, a receiver from the new distribution can.
	s2, _ := NewSender(nil)
	r2, _ := NewReceiver(s2.Distribution(), Config{})
	m := enc(t, s2, "after rotation")
	if _, err := r.Decrypt(m, ad); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("old receiver on rotated key: %v", err)
	}
	dec(t, r2, m, "after rotation")
}

func TestStateRoundTrip(t *testing.T) {
	s, r := newPair(t)
	a, b, c := enc(t, s, "a"), enc(t, s, "b"), enc(t, s, "c")
	dec(t, r, c, "c")
	rawS, _ := s.MarshalBinary()
	s2, err := ParseSender(rawS)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := ParseReceiver(state(t, r), Config{})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(state(t, r), state(t, r2)) {
		t.Fatal("receiver round trip differs")
	}
	dec(t, r2, a, "a")
	dec(t, r2, b, "b")
	dec(t, r2, enc(t, s2, "d"), "d")
}

// BenchmarkGroupSend500 is one message to a 500-member group: the sender
// encrypts and signs once, 499 member devices verify and decrypt.
func BenchmarkGroupSend500(b *testing.B) {
	const members = 500
	s, err := NewSender(nil)
	if err != nil {
		b.Fatal(err)
	}
	rs := make([]*Receiver, members-1)
	for i := range rs {
		if rs[i], err = NewReceiver(s.Distribution(), Config{}); err != nil {
			b.Fatal(err)
		}
	}
	pt := make([]byte, 256)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ct, err := s.Encrypt(pt, ad)
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range rs {
			if _, err := r.Decrypt(ct, ad); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkGroupSendEncryptOnly is the sender's side alone.
func BenchmarkGroupSendEncryptOnly(b *testing.B) {
	s, _ := NewSender(nil)
	pt := make([]byte, 256)
	for i := 0; i < b.N; i++ {
		if _, err := s.Encrypt(pt, ad); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDistribution500 is the cost of (re)keying a 500-member group
// once: a new sender key, its distribution message encrypted over 499
// established pairwise ratchet sessions and decrypted by each member.
func BenchmarkDistribution500(b *testing.B) {
	const members = 500
	type pw struct{ a, b *ratchet.Session }
	pairs := make([]pw, members-1)
	for i := range pairs {
		var sk [32]byte
		rand.Read(sk[:])
		k, _ := ecdh.X25519().GenerateKey(rand.Reader)
		a, err := ratchet.NewInitiator(sk, nil, k.PublicKey().Bytes(), ratchet.Config{})
		if err != nil {
			b.Fatal(err)
		}
		bb, err := ratchet.NewResponder(sk, nil, k, ratchet.Config{})
		if err != nil {
			b.Fatal(err)
		}
		pairs[i] = pw{a, bb}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s, err := NewSender(nil)
		if err != nil {
			b.Fatal(err)
		}
		dist, _ := s.Distribution().MarshalBinary()
		for _, p := range pairs {
			ct, err := p.a.Encrypt(dist, ad)
			if err != nil {
				b.Fatal(err)
			}
			raw, err := p.b.Decrypt(ct, ad)
			if err != nil {
				b.Fatal(err)
			}
			d, err := ParseDistribution(raw)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := NewReceiver(d, Config{}); err != nil {
				b.Fatal(err)
			}
		}
	}
}
