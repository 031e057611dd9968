package pqxdh

import (
	"bytes"
	"crypto/mlkem"
	"errors"
	"sync"
	"testing"

	"github.com/chatmesh/chatmesh/crypto/identity"
	"github.com/chatmesh/chatmesh/crypto/prekey"
	"github.com/chatmesh/chatmesh/crypto/ratchet"
)

type device struct {
	id   *identity.Private
	keys *MemoryKeys
	spk  *prekey.SignedPrekeyPair
	kem  *prekey.KEMPrekeyPair
	otps []prekey.OneTimePrekeyPair
}

func newDevice(t testing.TB, oneTime int) *device {
	t.Helper()
	id, err := identity.Generate(nil)
	if err != nil {
		t.Fatal(err)
	}
	d := &device{id: id, keys: &MemoryKeys{}}
	if d.spk, err = prekey.NewSignedPrekey(id, 1, nil); err != nil {
		t.Fatal(err)
	}
	if d.kem, err = prekey.NewKEMPrekey(id, 1); err != nil {
		t.Fatal(err)
	}
	if d.otps, err = prekey.NewOneTimePrekeys(100, oneTime, nil); err != nil {
		t.Fatal(err)
	}
	d.keys.AddSignedPrekey(d.spk)
	d.keys.AddKEMPrekey(d.kem)
	if err := d.keys.AddOneTimePrekeys(d.otps); err != nil {
		t.Fatal(err)
	}
	return d
}

// bundle is what an honest server returns; otp < 0 means none left.
func (d *device) bundle(otp int) *prekey.Bundle {
	k := d.kem.KEMPrekey
	b := &prekey.Bundle{Identity: d.id.Public(), SignedPrekey: d.spk.SignedPrekey, KEM: &k}
	if otp >= 0 {
		o := d.otps[otp].OneTimePrekey
		b.OneTime = &o
	}
	return b
}

// roundTrip pushes the bundle through its wire encoding, as the server would.
func roundTrip(t testing.TB, b *prekey.Bundle) *prekey.Bundle {
	t.Helper()
	raw, err := b.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	out, err := prekey.ParseBundle(raw)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

var ad = []byte("conv d:alice:bob")

func TestSessionSetupAndConversation(t *testing.T) {
	for _, withOTP := range []bool{true, false} {
		alice, bob := newDevice(t, 0), newDevice(t, 3)
		otp := -1
		if withOTP {
			otp = 1
		}
		out, err := Initiate(alice.id, bob.id.Public(), roundTrip(t, bob.bundle(otp)), Config{})
		if err != nil {
			t.Fatal(err)
		}
		first, err := out.Seal([]byte("hello bob"), ad)
		if err != nil {
			t.Fatal(err)
		}
		if HandshakeSize != 1327 || !IsInitial(first) {
			t.Fatalf("initial message: HandshakeSize %d (documented 1327), IsInitial %v", HandshakeSize, IsInitial(first))
		}
		if out.Session.HasReceived() {
			t.Fatal("initiator has received before any reply")
		}
		acc, err := Accept(bob.id, bob.keys, first, ad, Config{})
		if err != nil {
			t.Fatalf("otp=%v: %v", withOTP, err)
		}
		if string(acc.Plaintext) != "hello bob" {
			t.Fatalf("plaintext %q", acc.Plaintext)
		}
		if !acc.Peer.Equal(alice.id.Public()) {
			t.Fatal("bob did not learn alice's identity")
		}
		wantOTPs := 3
		if withOTP {
			wantOTPs = 2
		}
		if got := bob.keys.OneTimeCount(); got != wantOTPs {
			t.Fatalf("one-time prekeys left %d, want %d", got, wantOTPs)
		}
		// Bob replies over the ratchet; Alice switches to plain ratchet messages.
		reply, err := acc.Session.Encrypt([]byte("hi alice"), ad)
		if err != nil {
			t.Fatal(err)
		}
		if IsInitial(reply) {
			t.Fatal("ratchet message classified as initial")
		}
		pt, err := out.Session.Decrypt(reply, ad)
		if err != nil || string(pt) != "hi alice" {
			t.Fatalf("reply: %q %v", pt, err)
		}
		if !out.Session.HasReceived() {
			t.Fatal("HasReceived false after the reply")
		}
		m, _ := out.Session.Encrypt([]byte("third"), ad)
		if pt, err := acc.Session.Decrypt(m, ad); err != nil || string(pt) != "third" {
			t.Fatalf("third: %q %v", pt, err)
		}
	}
}

// Every message before the first reply carries the handshake; if the first
// one is lost or reordered, a later one starts the session, and the earlier
// one, when it arrives, is routed to the existing session by its token.
func TestMessagesBeforeReply(t *testing.T) {
	alice, bob := newDevice(t, 1), newDevice(t, 1)
	out, err := Initiate(alice.id, bob.id.Public(), bob.bundle(0), Config{})
	if err != nil {
		t.Fatal(err)
	}
	m1, _ := out.Seal([]byte("one"), ad)
	m2, _ := out.Seal([]byte("two"), ad)
	acc, err := Accept(bob.id, bob.keys, m2, ad, Config{})
	if err != nil || string(acc.Plaintext) != "two" {
		t.Fatalf("m2: %v", err)
	}
	sessions := map[[32]byte]*ratchet.Session{acc.Token: acc.Session}
	_, err = Accept(bob.id, bob.keys, m1, ad, Config{})
	if !errors.Is(err, ErrReplay) {
		t.Fatalf("second initial message: got %v, want ErrReplay", err)
	}
	in, _ := ParseInitial(m1)
	pt, err := sessions[in.Token()].Decrypt(in.Ratchet, ad)
	if err != nil || string(pt) != "one" {
		t.Fatalf("m1 via token: %q %v", pt, err)
	}
	// A true replay is harmless: the handshake is refused, the ratchet
	// message key is gone.
	if _, err := Accept(bob.id, bob.keys, m1, ad, Config{}); !errors.Is(err, ErrReplay) {
		t.Fatalf("replay: %v", err)
	}
	if _, err := sessions[in.Token()].Decrypt(in.Ratchet, ad); !errors.Is(err, ratchet.ErrDuplicate) {
		t.Fatalf("replayed ratchet message: %v", err)
	}
}

// Malicious server, case 1: a swapped bundle.
func TestSwappedBundleRejected(t *testing.T) {
	alice, bob, mallory := newDevice(t, 0), newDevice(t, 1), newDevice(t, 1)
	// (a) Mallory's own, validly signed bundle served for Bob: the identity
	// differs from the one in Bob's verified device list.
	if _, err := Initiate(alice.id, bob.id.Public(), mallory.bundle(0), Config{}); !errors.Is(err, ErrIdentityMismatch) {
		t.Fatalf("foreign bundle: %v", err)
	}
	// (b) Bob's identity but Mallory's signed prekey (signature by Mallory).
	b := bob.bundle(0)
	b.SignedPrekey = mallory.spk.SignedPrekey
	if _, err := Initiate(alice.id, bob.id.Public(), b, Config{}); !errors.Is(err, prekey.ErrBadSignature) {
		t.Fatalf("swapped signed prekey: %v", err)
	}
	// (c) Mallory's KEM key under Bob's identity.
	b = bob.bundle(0)
	k := mallory.kem.KEMPrekey
	b.KEM = &k
	if _, err := Initiate(alice.id, bob.id.Public(), b, Config{}); !errors.Is(err, prekey.ErrBadSignature) {
		t.Fatalf("swapped kem prekey: %v", err)
	}
	// (d) A flipped bit in the served bytes.
	raw, _ := bob.bundle(0).MarshalBinary()
	raw[len(raw)-10] ^= 1 // inside the one-time prekey: unsigned, so accepted...
	bb, err := prekey.ParseBundle(raw)
	if err != nil {
		t.Fatal(err)
	}
	out, err := Initiate(alice.id, bob.id.Public(), bb, Config{})
	if err != nil {
		t.Fatal(err)
	}
	// ...but then Bob cannot complete the handshake: the DH with the
	// substituted one-time key differs. Detected, not silently accepted.
	m, _ := out.Seal([]byte("x"), ad)
	if _, err := Accept(bob.id, bob.keys, m, ad, Config{}); !errors.Is(err, ErrHandshake) {
		t.Fatalf("substituted one-time prekey: %v", err)
	}
	raw, _ = bob.bundle(0).MarshalBinary()
	raw[200] ^= 1 // inside the signed part
	if bb, err := prekey.ParseBundle(raw); err == nil {
		if _, err := Initiate(alice.id, bob.id.Public(), bb, Config{}); err == nil {
			t.Fatal("bundle with a flipped signed byte was accepted")
		}
	}
}

// Malicious server, case 2: the KEM part is dropped (downgrade to classic).
func TestKEMDroppedRejected(t *testing.T) {
	alice, bob := newDevice(t, 0), newDevice(t, 1)
	b := bob.bundle(0)
	b.KEM = nil
	b = roundTrip(t, b)
	if _, err := Initiate(alice.id, bob.id.Public(), b, Config{}); !errors.Is(err, prekey.ErrMissingKEM) {
		t.Fatalf("got %v, want ErrMissingKEM", err)
	}
}

// Malicious server, case 3: the initial message is replayed; with a one-time
// prekey, also concurrently: exactly one Accept wins.
func TestReplayedInitialMessage(t *testing.T) {
	for _, withOTP := range []bool{true, false} {
		alice, bob := newDevice(t, 1), newDevice(t, 1)
		otp := -1
		if withOTP {
			otp = 0
		}
		out, _ := Initiate(alice.id, bob.id.Public(), bob.bundle(otp), Config{})
		m, _ := out.Seal([]byte("once"), ad)
		const n = 8
		var wg sync.WaitGroup
		var mu sync.Mutex
		ok, replays := 0, 0
		for range n {
			wg.Go(func() {
				_, err := Accept(bob.id, bob.keys, m, ad, Config{})
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					ok++
				case errors.Is(err, ErrReplay):
					replays++
				default:
					t.Errorf("otp=%v: unexpected %v", withOTP, err)
				}
			})
		}
		wg.Wait()
		if ok != 1 || replays != n-1 {
			t.Fatalf("otp=%v: %d sessions, %d replays; want 1 and %d", withOTP, ok, replays, n-1)
		}
	}
}

// Malicious server, case 4: injected or modified initial messages are
// rejected and consume nothing, so the genuine message still works.
func TestInjectedInitialMessage(t *testing.T) {
	alice, bob, mallory := newDevice(t, 0), newDevice(t, 1), newDevice(t, 0)
	out, _ := Initiate(alice.id, bob.id.Public(), bob.bundle(0), Config{})
	m, _ := out.Seal([]byte("genuine"), ad)
	regions := map[string]int{
		"header ids":     3,
		"kem ciphertext": 500,
		"ephemeral":      headerSize + 5,
		"static":         headerSize + 40,
		"payload":        headerSize + 120,
		"ratchet header": HandshakeSize + 10,
		"ratchet body":   len(m) - 3,
	}
	for name, off := range regions {
		bad := bytes.Clone(m)
		bad[off] ^= 0x40
		if _, err := Accept(bob.id, bob.keys, bad, ad, Config{}); err == nil {
			t.Fatalf("%s: modified initial message accepted", name)
		}
	}
	if _, err := Accept(bob.id, bob.keys, m, []byte("other conversation"), Config{}); err == nil {
		t.Fatal("initial message accepted under different associated data")
	}
	// Mallory, knowing Bob's public bundle, starts a session claiming to be Alice:
	// she can only prove her own static key, so Bob learns Mallory's identity.
	mout, _ := Initiate(mallory.id, bob.id.Public(), bob.bundle(-1), Config{})
	mm, _ := mout.Seal([]byte("I am alice"), ad)
	acc, err := Accept(bob.id, bob.keys, mm, ad, Config{})
	if err != nil {
		t.Fatal(err)
	}
	if acc.Peer.Equal(alice.id.Public()) || !acc.Peer.Equal(mallory.id.Public()) {
		t.Fatal("impersonation: Bob was told the sender is Alice")
	}
	// The genuine message still works: nothing was consumed by the fakes.
	acc, err = Accept(bob.id, bob.keys, m, ad, Config{})
	if err != nil || string(acc.Plaintext) != "genuine" {
		t.Fatalf("genuine after injections: %v", err)
	}
	if bob.keys.OneTimeCount() != 0 {
		t.Fatal("one-time prekey not consumed")
	}
}

// An initial message made for Bob and delivered to Carol (who holds prekeys
// with the same ids) fails: the prologue binds Bob's identity and the DHs
// need Bob's private keys.
func TestWrongRecipient(t *testing.T) {
	alice, bob, carol := newDevice(t, 0), newDevice(t, 1), newDevice(t, 1)
	out, _ := Initiate(alice.id, bob.id.Public(), bob.bundle(0), Config{})
	m, _ := out.Seal([]byte("for bob"), ad)
	if _, err := Accept(carol.id, carol.keys, m, ad, Config{}); err == nil {
		t.Fatal("carol accepted a message for bob")
	}
}

func BenchmarkSessionSetup(b *testing.B) {
	alice, bob := newDevice(b, 0), newDevice(b, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		out, err := Initiate(alice.id, bob.id.Public(), bob.bundle(i), Config{})
		if err != nil {
			b.Fatal(err)
		}
		m, err := out.Seal([]byte("hello"), ad)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := Accept(bob.id, bob.keys, m, ad, Config{}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkInitiate(b *testing.B) {
	alice, bob := newDevice(b, 1), newDevice(b, 1)
	bundle := bob.bundle(0)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := Initiate(alice.id, bob.id.Public(), bundle, Config{}); err != nil {
			b.Fatal(err)
		}
	}
}

// A server that hands the same one-time prekey to two senders: at most one
// session is created from it; the other sender's message is refused (it
// must fetch a new bundle), never silently accepted.
func TestOneTimePrekeyServedTwice(t *testing.T) {
	alice, carol, bob := newDevice(t, 0), newDevice(t, 0), newDevice(t, 1)
	oa, _ := Initiate(alice.id, bob.id.Public(), bob.bundle(0), Config{})
	oc, _ := Initiate(carol.id, bob.id.Public(), bob.bundle(0), Config{})
	ma, _ := oa.Seal([]byte("a"), ad)
	mc, _ := oc.Seal([]byte("c"), ad)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, m := range [][]byte{ma, mc} {
		wg.Go(func() { _, errs[i] = Accept(bob.id, bob.keys, m, ad, Config{}) })
	}
	wg.Wait()
	if (errs[0] == nil) == (errs[1] == nil) {
		t.Fatalf("want exactly one success, got %v / %v", errs[0], errs[1])
	}
	for _, err := range errs {
		if err != nil && !errors.Is(err, ErrReplay) {
			t.Fatalf("loser: %v", err)
		}
	}
}

// kemSwapKeys serves a different ML-KEM decapsulation key under the right id.
type kemSwapKeys struct {
	*MemoryKeys
	other *prekey.KEMPrekeyPair
}

func (k kemSwapKeys) KEMPrekey(uint32) (*mlkem.DecapsulationKey768, error) {
	return k.other.Private, nil
}

// The ML-KEM shared secret is part of the key schedule: with every classical
// key right but the wrong decapsulation key, the handshake fails. (If the KEM
// secret were not mixed in, a future quantum attacker breaking X25519 alone
// would recover the session.)
func TestKEMSecretIsInKeySchedule(t *testing.T) {
	alice, bob := newDevice(t, 0), newDevice(t, 1)
	other, err := prekey.NewKEMPrekey(bob.id, 1)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := Initiate(alice.id, bob.id.Public(), bob.bundle(0), Config{})
	m, _ := out.Seal([]byte("pq"), ad)
	if _, err := Accept(bob.id, kemSwapKeys{bob.keys, other}, m, ad, Config{}); !errors.Is(err, ErrHandshake) {
		t.Fatalf("wrong KEM key: got %v, want ErrHandshake", err)
	}
	if _, err := Accept(bob.id, bob.keys, m, ad, Config{}); err != nil {
		t.Fatalf("right KEM key: %v", err)
	}
}
