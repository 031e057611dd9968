package ratchet

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"fmt"
	"testing"
)

var ad = []byte("conv")

func pair(t testing.TB, cfg Config) (alice, bob *Session) {
	t.Helper()
	var sk [32]byte
	rand.Read(sk[:])
	bobKey, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	h := []byte("handshake hash")
	if alice, err = NewInitiator(sk, h, bobKey.PublicKey().Bytes(), cfg); err != nil {
		t.Fatal(err)
	}
	if bob, err = NewResponder(sk, h, bobKey, cfg); err != nil {
		t.Fatal(err)
	}
	return alice, bob
}

func enc(t testing.TB, s *Session, msg string) []byte {
	t.Helper()
	ct, err := s.Encrypt([]byte(msg), ad)
	if err != nil {
		t.Fatal(err)
	}
	return ct
}

func mustDecrypt(t testing.TB, s *Session, ct []byte, want string) {
	t.Helper()
	pt, err := s.Decrypt(ct, ad)
	if err != nil {
		t.Fatalf("decrypt %q: %v", want, err)
	}
	if string(pt) != want {
		t.Fatalf("decrypted %q, want %q", pt, want)
	}
}

func snapshot(t testing.TB, s *Session) []byte {
	t.Helper()
	b, err := s.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestConversation(t *testing.T) {
	alice, bob := pair(t, Config{})
	if bob.CanSend() {
		t.Fatal("responder can send before receiving")
	}
	if _, err := bob.Encrypt([]byte("x"), ad); !errors.Is(err, ErrNotReady) {
		t.Fatalf("responder encrypt before receive: %v", err)
	}
	// Alternating bursts exercise DH ratchet steps in both directions.
	for round := range 20 {
		for i := range round%4 + 1 {
			m := fmt.Sprintf("a%d.%d", round, i)
			mustDecrypt(t, bob, enc(t, alice, m), m)
		}
		for i := range round%3 + 1 {
			m := fmt.Sprintf("b%d.%d", round, i)
			mustDecrypt(t, alice, enc(t, bob, m), m)
		}
	}
	if alice.SkippedKeys() != 0 || bob.SkippedKeys() != 0 {
		t.Fatal("skipped keys left after in-order delivery")
	}
}

// Out of order (within and across DH ratchet steps), lost, and re-sent.
func TestOutOfOrderLostAndResent(t *testing.T) {
	alice, bob := pair(t, Config{})
	a := make([][]byte, 6)
	for i := range a {
		a[i] = enc(t, alice, fmt.Sprint("a", i))
	}
	// Bob gets a5, a1, a3 (a0, a2, a4 delayed).
	for _, i := range []int{5, 1, 3} {
		mustDecrypt(t, bob, a[i], fmt.Sprint("a", i))
	}
	// Bob replies (new DH ratchet), Alice replies (another step).
	b0 := enc(t, bob, "b0")
	mustDecrypt(t, alice, b0, "b0")
	a6 := enc(t, alice, "a6")
	mustDecrypt(t, bob, a6, "a6")
	// The delayed messages of the old chain arrive after the step.
	for _, i := range []int{4, 0, 2} {
		mustDecrypt(t, bob, a[i], fmt.Sprint("a", i))
	}
	if bob.SkippedKeys() != 0 {
		t.Fatalf("bob still holds %d skipped keys", bob.SkippedKeys())
	}
	// Lost: b1 is never delivered; b2 and later still decrypt.
	_ = enc(t, bob, "b1")
	b2 := enc(t, bob, "b2")
	mustDecrypt(t, alice, b2, "b2")
	if alice.SkippedKeys() != 1 {
		t.Fatalf("alice skipped keys %d, want 1 (for the lost b1)", alice.SkippedKeys())
	}
	// Re-sent: a client that did not see the server ack resends the same
	// ciphertext; the first copy decrypts, the second is a duplicate.
	a7 := enc(t, alice, "a7")
	mustDecrypt(t, bob, a7, "a7")
	if _, err := bob.Decrypt(a7, ad); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("re-delivered a7: %v", err)
	}
	if _, err := bob.Decrypt(a[3], ad); !errors.Is(err, ErrDuplicate) && !errors.Is(err, ErrDecrypt) {
		t.Fatalf("re-delivered a3 from an old chain: %v", err)
	}
	mustDecrypt(t, bob, enc(t, alice, "a8"), "a8")
	mustDecrypt(t, alice, enc(t, bob, "b3"), "b3")
}

// Replayed and tampered messages are rejected and leave the state byte for
// byte unchanged; the session continues.
func TestReplayAndTamperLeaveStateUnchanged(t *testing.T) {
	alice, bob := pair(t, Config{})
	m0 := enc(t, alice, "zero")
	mustDecrypt(t, bob, m0, "zero")
	m1 := enc(t, alice, "one")
	m2 := enc(t, alice, "two")
	mustDecrypt(t, bob, m2, "two") // m1 now a skipped key
	before := snapshot(t, bob)

	cases := map[string][]byte{"replay m0": m0, "replay m2": m2}
	for i := range m1 {
		bad := bytes.Clone(m1)
		bad[i] ^= 0x01
		cases[fmt.Sprintf("m1 byte %d", i)] = bad
	}
	// A header claiming a new ratchet key (forces a DH step on the copy).
	nk := bytes.Clone(m1)
	nk[5] ^= 0x80
	cases["new ratchet key"] = nk
	cases["truncated"] = m1[:HeaderSize+3]
	for name, msg := range cases {
		if _, err := bob.Decrypt(msg, ad); err == nil {
			t.Fatalf("%s: accepted", name)
		}
		if !bytes.Equal(before, snapshot(t, bob)) {
			t.Fatalf("%s: state changed by a rejected message", name)
		}
	}
	if _, err := bob.Decrypt(m1, []byte("other ad")); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("wrong associated data: %v", err)
	}
	mustDecrypt(t, bob, m1, "one")
	mustDecrypt(t, alice, enc(t, bob, "continue"), "continue")
	mustDecrypt(t, bob, enc(t, alice, "and on"), "and on")
}

// MAX_SKIP and the total cap bound the skipped-key store.
func TestSkipBounds(t *testing.T) {
	cfg := Config{MaxSkip: 10, MaxSkippedTotal: 15}
	alice, bob := pair(t, cfg)
	mustDecrypt(t, bob, enc(t, alice, "first"), "first")
	var msgs [][]byte
	for i := range 12 {
		msgs = append(msgs, enc(t, alice, fmt.Sprint(i)))
	}
	before := snapshot(t, bob)
	if _, err := bob.Decrypt(msgs[11], ad); !errors.Is(err, ErrTooManySkipped) {
		t.Fatalf("skip 11 > MaxSkip 10: %v", err)
	}
	if !bytes.Equal(before, snapshot(t, bob)) {
		t.Fatal("state changed by a too-far message")
	}
	mustDecrypt(t, bob, msgs[10], "10") // skips exactly 10
	if bob.SkippedKeys() != 10 {
		t.Fatalf("skipped %d, want 10", bob.SkippedKeys())
	}
	// New chain: 8 more skipped → total 18 > 15, the oldest 3 are evicted.
	mustDecrypt(t, alice, enc(t, bob, "reply"), "reply")
	var more [][]byte
	for i := range 9 {
		more = append(more, enc(t, alice, fmt.Sprint("n", i)))
	}
	mustDecrypt(t, bob, more[8], "n8")
	if bob.SkippedKeys() != 15 {
		t.Fatalf("skipped %d, want cap 15", bob.SkippedKeys())
	}
	if _, err := bob.Decrypt(msgs[0], ad); err == nil {
		t.Fatal("evicted key still decrypts")
	}
	mustDecrypt(t, bob, msgs[5], "5")
	mustDecrypt(t, bob, more[0], "n0")
}

// Post-compromise security: Bob's whole state leaks to Eve, who then
// follows the conversation passively (she sees every ciphertext). She can
// read what is encrypted with keys derivable from the leak: the rest of
// Alice's current chain, and Alice's next chain (it is keyed by DH with
// Bob's current ratchet private key, which leaked). Bob's next DH ratchet
// step uses a fresh key Eve never sees; from then on nothing decrypts.
func TestPostCompromiseSecurity(t *testing.T) {
	alice, bob := pair(t, Config{})
	mustDecrypt(t, bob, enc(t, alice, "a0"), "a0")
	mustDecrypt(t, alice, enc(t, bob, "b0"), "b0")
	mustDecrypt(t, bob, enc(t, alice, "a1"), "a1")

	eve, err := Unmarshal(snapshot(t, bob), Config{}) // the leak
	if err != nil {
		t.Fatal(err)
	}
	// Same chain after the leak: readable by Eve (the leak is real).
	a2 := enc(t, alice, "a2")
	mustDecrypt(t, eve, a2, "a2")
	mustDecrypt(t, bob, a2, "a2")

	// Bob replies (still from the leaked ratchet key); Alice steps.
	mustDecrypt(t, alice, enc(t, bob, "b1"), "b1")
	a3 := enc(t, alice, "a3")
	mustDecrypt(t, eve, a3, "a3") // keyed by DH(Alice new, Bob leaked)
	mustDecrypt(t, bob, a3, "a3") // Bob steps: fresh ratchet key pair

	// Bob's step is the healing one: Alice's next chain is keyed by
	// DH(Alice newer, Bob fresh); neither private key is Eve's.
	mustDecrypt(t, alice, enc(t, bob, "b2"), "b2")
	before := snapshot(t, eve)
	for i := range 3 {
		m := enc(t, alice, fmt.Sprint("healed", i))
		if _, err := eve.Decrypt(m, ad); err == nil {
			t.Fatalf("eve read message %d sent after the healing DH ratchet step", i)
		}
		mustDecrypt(t, bob, m, fmt.Sprint("healed", i))
	}
	// And a fresh copy of the leak cannot either.
	stale, _ := Unmarshal(before, Config{})
	if _, err := stale.Decrypt(enc(t, alice, "healed 3"), ad); err == nil {
		t.Fatal("stale leaked state read a healed message")
	}
}

// Forward secrecy: once a message is decrypted its key is gone; the later
// state (even fully leaked) cannot decrypt it, nor earlier chains.
func TestForwardSecrecy(t *testing.T) {
	alice, bob := pair(t, Config{})
	var old [][]byte
	for i := range 3 {
		m := enc(t, alice, fmt.Sprint("old", i))
		old = append(old, m)
		mustDecrypt(t, bob, m, fmt.Sprint("old", i))
	}
	mustDecrypt(t, alice, enc(t, bob, "r"), "r")
	mustDecrypt(t, bob, enc(t, alice, "new"), "new")

	leaked, err := Unmarshal(snapshot(t, bob), Config{})
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range old {
		if _, err := leaked.Decrypt(m, ad); err == nil {
			t.Fatalf("later state decrypted old message %d", i)
		}
	}
	// Nothing of the delivered messages survives in the state: no skipped keys.
	if leaked.SkippedKeys() != 0 {
		t.Fatal("leaked state holds message keys of delivered messages")
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	alice, bob := pair(t, Config{})
	var pending [][]byte
	for i := range 5 {
		m := enc(t, alice, fmt.Sprint(i))
		if i%2 == 0 {
			pending = append(pending, m)
			continue
		}
		mustDecrypt(t, bob, m, fmt.Sprint(i))
	}
	raw := snapshot(t, bob)
	bob2, err := Unmarshal(raw, Config{})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw, snapshot(t, bob2)) {
		t.Fatal("marshal(unmarshal(x)) != x")
	}
	mustDecrypt(t, bob2, pending[0], "0")
	mustDecrypt(t, bob2, pending[2], "4")
	mustDecrypt(t, alice, enc(t, bob2, "from restored"), "from restored")
	for n := range len(raw) {
		if _, err := Unmarshal(raw[:n], Config{}); err == nil {
			t.Fatalf("truncated state (%d of %d bytes) accepted", n, len(raw))
		}
	}
}

func BenchmarkEncryptDecrypt(b *testing.B) {
	for _, size := range []int{64, 1024} {
		pt := make([]byte, size)
		b.Run(fmt.Sprintf("oneway/%dB", size), func(b *testing.B) {
			alice, bob := pair(b, Config{})
			b.SetBytes(int64(size))
			for i := 0; i < b.N; i++ {
				ct, err := alice.Encrypt(pt, ad)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := bob.Decrypt(ct, ad); err != nil {
					b.Fatal(err)
				}
			}
		})
		// Ping-pong: every message is a DH ratchet step (two X25519 per side).
		b.Run(fmt.Sprintf("pingpong/%dB", size), func(b *testing.B) {
			alice, bob := pair(b, Config{})
			b.SetBytes(int64(size))
			for i := 0; i < b.N; i++ {
				from, to := alice, bob
				if i%2 == 1 {
					from, to = bob, alice
				}
				ct, err := from.Encrypt(pt, ad)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := to.Decrypt(ct, ad); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkMarshalUnmarshal(b *testing.B) {
	alice, bob := pair(b, Config{})
	for i := range 100 {
		ct := enc(b, alice, "x")
		if i%2 == 0 {
			continue // leave skipped keys in bob's state
		}
		if _, err := bob.Decrypt(ct, ad); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		raw, _ := bob.MarshalBinary()
		if _, err := Unmarshal(raw, Config{}); err != nil {
			b.Fatal(err)
		}
	}
}

// A well-formed message from another session (a server injecting traffic
// it holds keys for, or mixing up conversations) is rejected and changes
// nothing.
func TestInjectedFromOtherSession(t *testing.T) {
	alice, bob := pair(t, Config{})
	mallory, _ := pair(t, Config{})
	mustDecrypt(t, bob, enc(t, alice, "hello"), "hello")
	before := snapshot(t, bob)
	for i := range 3 {
		if _, err := bob.Decrypt(enc(t, mallory, fmt.Sprint("inject", i)), ad); !errors.Is(err, ErrDecrypt) {
			t.Fatalf("injected message %d: %v", i, err)
		}
	}
	if !bytes.Equal(before, snapshot(t, bob)) {
		t.Fatal("injected messages changed the state")
	}
	mustDecrypt(t, bob, enc(t, alice, "still fine"), "still fine")
}
