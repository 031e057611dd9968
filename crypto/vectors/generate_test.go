package vectors

import (
	"bytes"
	"crypto/ed25519"
	"crypto/mlkem"
	"crypto/mlkem/mlkemtest"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/chatmesh/chatmesh/crypto/identity"
	"github.com/chatmesh/chatmesh/crypto/pqxdh"
	"github.com/chatmesh/chatmesh/crypto/prekey"
	"github.com/chatmesh/chatmesh/crypto/ratchet"
	"github.com/chatmesh/chatmesh/crypto/safety"
	"github.com/chatmesh/chatmesh/crypto/senderkey"
)

var update = flag.Bool("update", false, "rewrite testdata/e2e-vectors.json")

// File is the committed vector file.
var File = filepath.Join("testdata", "e2e-vectors.json")

const randomnessLabel = "chatmesh e2e vector: "

// rnd is the fixed "randomness" of a label.
func rnd(label string) []byte {
	s := sha256.Sum256([]byte(randomnessLabel + label))
	return s[:]
}

// keyStream hands out rnd("<prefix> 1"), rnd("<prefix> 2"), ... as a
// byte stream (each ratchet key pair reads one 32-byte block) and records
// the blocks.
type keyStream struct {
	prefix string
	buf    []byte
	out    *[]Hex
}

func (k *keyStream) Read(p []byte) (int, error) {
	for len(k.buf) < len(p) {
		b := rnd(fmt.Sprintf("%s %d", k.prefix, len(*k.out)+1))
		*k.out = append(*k.out, b)
		k.buf = append(k.buf, b...)
	}
	n := copy(p, k.buf)
	k.buf = k.buf[n:]
	return n, nil
}

// next is the model's view of the same stream (it must draw the same keys
// in the same order, or the bytes differ).
func modelStream(prefix string) func() []byte {
	i := 0
	return func() []byte { i++; return rnd(fmt.Sprintf("%s %d", prefix, i)) }
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func check(cond bool, format string, a ...any) {
	if !cond {
		panic(fmt.Sprintf("vector model disagrees with the code: "+format, a...))
	}
}

func lp(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// pairAD and groupAD as E2E.md §9.1 specifies them (client/e2ee checks its
// own functions against the vector file).
func pairAD(conv, from, to string) []byte {
	return lp(lp(lp([]byte("chatmesh-e2ee-pair-v1"), conv), from), to)
}

func groupAD(conv, from string) []byte {
	return lp(lp([]byte("chatmesh-e2ee-group-v1"), conv), from)
}

// groupID is PROTOCOL.md §7.5's creator-bound group id.
func groupID(creator, nonce string) string {
	sum := sha256.Sum256([]byte("chatmesh-group-v1" + creator + "\x00" + nonce))
	return "g:" + nonce + base32.StdEncoding.EncodeToString(sum[:])[:10]
}

type device struct {
	priv  *identity.Private
	party *Party
}

func newDevice(user string, id uint32) device {
	seed, dh := rnd(user+" identity ed25519"), rnd(user+" identity x25519")
	priv := must(identity.Generate(bytes.NewReader(cat(seed, dh))))
	pub := priv.Public()
	noise := x25519Public(rnd(user + " noise static"))
	p := &Party{UserID: user, DeviceID: id, IdentitySeed: seed, IdentityDH: dh,
		IdentityPublic: must(pub.MarshalBinary()), NoiseStatic: noise, RatchetKeys: []Hex{}}
	// The model: the binding signature and the encoding.
	edPub := ed25519.NewKeyFromSeed(seed).Public().(ed25519.PublicKey)
	bind := ed25519.Sign(ed25519.NewKeyFromSeed(seed), cat([]byte("chatmesh-identity-dh-v1"), x25519Public(dh)))
	check(bytes.Equal(p.IdentityPublic, cat([]byte{1}, edPub, x25519Public(dh), bind)), "identity encoding")
	l := &identity.DeviceList{UserID: user, Version: 1, Devices: []identity.Device{{ID: id, Identity: pub, NoiseStatic: [32]byte(noise)}}}
	must(0, l.Sign(id, priv))
	p.DeviceList = must(l.MarshalBinary())
	signed := cat([]byte{1, byte(len(user))}, []byte(user), binary.BigEndian.AppendUint64(nil, 1), []byte{0, 1}, be32(id), p.IdentityPublic, noise, be32(id))
	check(bytes.Equal(p.DeviceList, cat(signed, ed25519.Sign(ed25519.NewKeyFromSeed(seed), cat([]byte("chatmesh-device-list-v1"), signed)))), "device list")
	return device{priv: priv, party: p}
}

// Generate builds the vector set.
func Generate() (v *Vectors, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	v = &Vectors{
		Comment: []string{
			"chatmesh end-to-end test vectors; E2E.md section 11 explains every field.",
			"Regenerate: go test ./crypto/vectors -run Golden -update (the file must not change).",
		},
		Schema:          1,
		RandomnessLabel: randomnessLabel,
		DirectConv:      "d:alice:bob",
		GroupConv:       groupID("alice", "01J0000000000000000000000A"),
	}
	alice, bob := newDevice("alice", 1), newDevice("bob", 1)
	aliceAddr, bobAddr := "alice.1", "bob.1"

	// Bob's prekeys.
	spk := must(prekey.NewSignedPrekey(bob.priv, 1, bytes.NewReader(rnd("bob signed prekey"))))
	kemSeed := cat(rnd("bob kem prekey d"), rnd("bob kem prekey z"))
	kpk := must(prekey.NewKEMPrekeyFromSeed(bob.priv, 1, kemSeed))
	otps := must(prekey.NewOneTimePrekeys(7, 1, bytes.NewReader(rnd("bob one-time prekey"))))
	otp := otps[0]
	bobSign := ed25519.NewKeyFromSeed(bob.party.IdentitySeed)
	spkSigned := cat([]byte("chatmesh-signed-prekey-v1"), be32(1), spk.Public[:])
	kemSigned := cat([]byte("chatmesh-kem-prekey-v1"), be32(1), kpk.Public)
	check(bytes.Equal(spk.Signature[:], ed25519.Sign(bobSign, spkSigned)), "signed prekey signature")
	check(bytes.Equal(kpk.Signature[:], ed25519.Sign(bobSign, kemSigned)), "kem prekey signature")
	bob.party.SignedPrekey = &SignedPrekey{ID: 1, Private: rnd("bob signed prekey"), Public: spk.Public[:], Signed: spkSigned,
		Signature: spk.Signature[:], Encoded: must(spk.SignedPrekey.AppendBinary(nil))}
	bob.party.KEMPrekey = &KEMPrekey{ID: 1, Seed: kemSeed, Public: kpk.Public, Signed: kemSigned,
		Signature: kpk.Signature[:], Encoded: must(kpk.KEMPrekey.AppendBinary(nil))}
	bob.party.OneTimePrekey = &OneTime{ID: 7, Private: rnd("bob one-time prekey"), Public: otp.Public[:],
		Encoded: must(otp.OneTimePrekey.AppendBinary(nil))}
	bundle := &prekey.Bundle{Identity: bob.priv.Public(), SignedPrekey: spk.SignedPrekey, KEM: &kpk.KEMPrekey, OneTime: &otp.OneTimePrekey}
	v.Bundle = must(bundle.MarshalBinary())
	check(bytes.Equal(v.Bundle, cat([]byte{1, 3}, bob.party.IdentityPublic, bob.party.SignedPrekey.Encoded,
		bob.party.KEMPrekey.Encoded, bob.party.OneTimePrekey.Encoded)), "bundle encoding")

	// Alice: session setup from the bundle as served.
	served := must(prekey.ParseBundle(v.Bundle))
	bobList := must(identity.ParseDeviceList(bob.party.DeviceList))
	must(0, bobList.VerifyUpdate(nil))
	ephPriv, kemRandom := rnd("alice ephemeral"), rnd("alice kem encapsulation")
	aliceStream := &keyStream{prefix: "alice ratchet key", out: &alice.party.RatchetKeys}
	bobStream := &keyStream{prefix: "bob ratchet key", out: &bob.party.RatchetKeys}
	var kemSS, kemCT []byte
	out := must(pqxdh.Initiate(alice.priv, bobList.Devices[0].Identity, served, pqxdh.Config{
		Rand:    bytes.NewReader(ephPriv),
		Ratchet: ratchet.Config{Rand: aliceStream},
		Encapsulate: func(ek *mlkem.EncapsulationKey768) ([]byte, []byte, error) {
			ss, ct, err := mlkemtest.Encapsulate768(ek, kemRandom)
			kemSS, kemCT = ss, ct
			return ss, ct, err
		},
	}))
	// The model of E2E.md §6, then Bob's decapsulation must agree.
	dk := must(mlkem.NewDecapsulationKey768(kemSeed))
	check(bytes.Equal(must(dk.Decapsulate(kemCT)), kemSS), "kem decapsulation")
	m := modelInitiate(alice.party.IdentityDH, alice.party.IdentityPublic, bob.party.IdentityPublic, spk.Public[:],
		x25519Public(bob.party.IdentityDH), otp.Public[:], ephPriv, kemSS, kemCT, 1, 1, 7)
	check(bytes.Equal(out.Handshake, cat(m.header, m.noiseMsg)), "handshake bytes")
	check(bytes.Equal(out.Session.AssociatedData(), m.h), "handshake hash")
	token := sha256.Sum256(out.Handshake)
	v.Setup = Setup{EphemeralPrivate: ephPriv, EphemeralPublic: x25519Public(ephPriv), KEMRandom: kemRandom,
		KEMCiphertext: kemCT, KEMSharedSecret: kemSS, DHEphIdentity: m.dhEI, DHEphOneTime: m.dhEO,
		DHEphSigned: m.dhES, DHIdentSigned: m.dhSS, PSK: m.psk, Header: m.header, Prologue: m.prologue,
		NoiseMessage: m.noiseMsg, Handshake: out.Handshake, HandshakeHash: m.h, SplitKey1: m.k1, SplitKey2: m.k2,
		RootKey: m.sk, Token: token[:]}

	// Bob's key store.
	keys := &pqxdh.MemoryKeys{}
	keys.AddSignedPrekey(spk)
	keys.AddKEMPrekey(kpk)
	must(0, keys.AddOneTimePrekeys(otps))

	// ---- pairwise messages
	aliceModel := modelInitiator(m.sk, m.h, spk.Public[:], modelStream("alice ratchet key"))
	bobModel := modelResponder(m.sk, m.h, rnd("bob signed prekey"), modelStream("bob ratchet key"))
	aliceSess := out.Session
	var bobSess *ratchet.Session
	type side struct {
		name, addr, peer string
		model            *modelRatchet
		sess             func() *ratchet.Session
	}
	sides := map[string]side{
		"alice": {"alice", aliceAddr, bobAddr, aliceModel, func() *ratchet.Session { return aliceSess }},
		"bob":   {"bob", bobAddr, aliceAddr, bobModel, func() *ratchet.Session { return bobSess }},
	}
	send := func(from, conv string, inner []byte) int {
		s := sides[from]
		ad := pairAD(conv, s.addr, s.peer)
		sess := s.sess()
		var wire []byte
		initial := from == "alice" && !sess.HasReceived()
		if initial {
			wire = must(out.Seal(inner, ad))
		} else {
			wire = must(sess.Encrypt(inner, ad))
		}
		rec := s.model.encrypt(inner, ad)
		ratchetPart := wire
		if initial {
			ratchetPart = wire[pqxdh.HandshakeSize:]
			check(bytes.Equal(wire[:pqxdh.HandshakeSize], out.Handshake), "handshake prefix")
		}
		check(bytes.Equal(ratchetPart, rec.wire), "message %d bytes", len(v.Messages))
		v.Messages = append(v.Messages, Message{Index: len(v.Messages), From: from, SentAfter: len(v.Deliveries), Plaintext: inner, AD: ad, Initial: initial,
			RatchetKey: rec.ratchetPub, PN: rec.pn, N: rec.n, ChainKey: rec.ck, MessageKey: rec.mk, AEADKey: rec.key,
			Nonce: rec.nonce, FullAD: rec.fullAD, Wire: wire})
		return len(v.Messages) - 1
	}
	deliver := func(i int, note string) []byte {
		msg := v.Messages[i]
		to := "bob"
		if msg.From == "bob" {
			to = "alice"
		}
		s := sides[to]
		var pt []byte
		switch {
		case to == "bob" && bobSess == nil:
			acc := must(pqxdh.Accept(bob.priv, keys, msg.Wire, msg.AD, pqxdh.Config{Ratchet: ratchet.Config{Rand: bobStream}}))
			check(acc.Peer.Equal(alice.priv.Public()), "accepted peer")
			bobSess, pt = acc.Session, acc.Plaintext
		case msg.Initial:
			in := must(pqxdh.ParseInitial(msg.Wire))
			check(in.Token() == token, "token")
			pt = must(s.sess().Decrypt(in.Ratchet, msg.AD))
		default:
			pt = must(s.sess().Decrypt(msg.Wire, msg.AD))
		}
		ratchetPart := msg.Wire
		if msg.Initial {
			ratchetPart = msg.Wire[pqxdh.HandshakeSize:]
		}
		mpt := must(s.model.decrypt(ratchetPart, msg.AD))
		check(bytes.Equal(pt, msg.Plaintext) && bytes.Equal(mpt, msg.Plaintext), "plaintext of message %d", i)
		check(len(s.model.skipped) == s.sess().SkippedKeys(), "skipped keys after message %d", i)
		v.Deliveries = append(v.Deliveries, Delivery{Index: i, To: to, Skipped: s.sess().SkippedKeys(), Note: note})
		return pt
	}
	body := func(s string) []byte { return append([]byte{0x01}, s...) }

	m0 := send("alice", v.DirectConv, body("Hi Bob, this is Alice."))
	m1 := send("alice", v.DirectConv, body("Second message before any reply."))
	m2 := send("alice", v.DirectConv, body("Third."))
	deliver(m0, "session setup: pqxdh accept, first message")
	deliver(m2, "out of order: message 1 is skipped, its key kept")
	m3 := send("bob", v.DirectConv, body("Hello Alice!"))
	deliver(m3, "first reply: Alice's ratchet steps; the handshake prefix stops")
	m4 := send("alice", v.DirectConv, body("New sending chain."))
	deliver(m4, "Bob's ratchet steps")
	deliver(m1, "late: initial message of the old chain, opened with the skipped key (token known, so not accepted again)")
	m5 := send("bob", v.DirectConv, body("one"))
	m6 := send("bob", v.DirectConv, body("two"))
	deliver(m6, "out of order within a chain")
	deliver(m5, "the skipped key")

	// ---- a second session from a bundle without a one-time prekey.
	{
		n := &v.NoOneTime
		n.AliceRatchetKeys, n.BobRatchetKeys = []Hex{}, []Hex{}
		b := &prekey.Bundle{Identity: bob.priv.Public(), SignedPrekey: spk.SignedPrekey, KEM: &kpk.KEMPrekey}
		n.Bundle = must(b.MarshalBinary())
		check(bytes.Equal(n.Bundle, cat([]byte{1, 1}, bob.party.IdentityPublic, bob.party.SignedPrekey.Encoded, bob.party.KEMPrekey.Encoded)), "bundle without one-time prekey")
		eph, kr := rnd("alice ephemeral (no one-time)"), rnd("alice kem encapsulation (no one-time)")
		var ss, ct []byte
		o := must(pqxdh.Initiate(alice.priv, bobList.Devices[0].Identity, must(prekey.ParseBundle(n.Bundle)), pqxdh.Config{
			Rand:    bytes.NewReader(eph),
			Ratchet: ratchet.Config{Rand: &keyStream{prefix: "alice ratchet key (no one-time)", out: &n.AliceRatchetKeys}},
			Encapsulate: func(ek *mlkem.EncapsulationKey768) ([]byte, []byte, error) {
				s, c, err := mlkemtest.Encapsulate768(ek, kr)
				ss, ct = s, c
				return s, c, err
			},
		}))
		mm := modelInitiate(alice.party.IdentityDH, alice.party.IdentityPublic, bob.party.IdentityPublic, spk.Public[:],
			x25519Public(bob.party.IdentityDH), nil, eph, ss, ct, 1, 1, 0)
		check(bytes.Equal(o.Handshake, cat(mm.header, mm.noiseMsg)), "handshake without one-time prekey")
		check(bytes.Equal(o.Session.AssociatedData(), mm.h), "handshake hash without one-time prekey")
		tok := sha256.Sum256(o.Handshake)
		n.Setup = Setup{EphemeralPrivate: eph, EphemeralPublic: x25519Public(eph), KEMRandom: kr,
			KEMCiphertext: ct, KEMSharedSecret: ss, DHEphIdentity: mm.dhEI, DHEphOneTime: Hex{},
			DHEphSigned: mm.dhES, DHIdentSigned: mm.dhSS, PSK: mm.psk, Header: mm.header, Prologue: mm.prologue,
			NoiseMessage: mm.noiseMsg, Handshake: o.Handshake, HandshakeHash: mm.h, SplitKey1: mm.k1, SplitKey2: mm.k2,
			RootKey: mm.sk, Token: tok[:]}
		model := modelInitiator(mm.sk, mm.h, spk.Public[:], modelStream("alice ratchet key (no one-time)"))
		inner := body("Hello again, without a one-time prekey.")
		ad := pairAD(v.DirectConv, aliceAddr, bobAddr)
		wire := must(o.Seal(inner, ad))
		rec := model.encrypt(inner, ad)
		check(bytes.Equal(wire[pqxdh.HandshakeSize:], rec.wire), "message without one-time prekey")
		n.Message = Message{Index: 0, From: "alice", Plaintext: inner, AD: ad, Initial: true, RatchetKey: rec.ratchetPub,
			PN: rec.pn, N: rec.n, ChainKey: rec.ck, MessageKey: rec.mk, AEADKey: rec.key, Nonce: rec.nonce, FullAD: rec.fullAD, Wire: wire}
		acc := must(pqxdh.Accept(bob.priv, keys, wire, ad, pqxdh.Config{Ratchet: ratchet.Config{
			Rand: &keyStream{prefix: "bob ratchet key (no one-time)", out: &n.BobRatchetKeys}}}))
		check(bytes.Equal(acc.Plaintext, inner) && acc.Token == tok, "accept without one-time prekey")
		_, err := pqxdh.Accept(bob.priv, keys, wire, ad, pqxdh.Config{})
		check(errors.Is(err, pqxdh.ErrReplay), "replay without one-time prekey: %v", err)
	}

	// ---- group: Alice's sender key, distributed over the pairwise session.
	g := &v.Group
	g.SenderRandom = cat(rnd("alice sender key id")[:4], rnd("alice sender chain key"), rnd("alice sender signing seed"))
	sender := must(senderkey.NewSender(bytes.NewReader(g.SenderRandom)))
	g.Distribution = must(sender.Distribution().MarshalBinary())
	signSeed := g.SenderRandom[36:]
	signKey := ed25519.NewKeyFromSeed(signSeed)
	check(bytes.Equal(g.Distribution, cat([]byte{1}, g.SenderRandom[:4], be32(0), g.SenderRandom[4:36], signKey.Public().(ed25519.PublicKey))), "distribution")
	g.DistributionMessage = send("alice", v.GroupConv, append([]byte{0x02}, g.Distribution...))
	inner := deliver(g.DistributionMessage, "sender key distribution (inner type 2) for the group")
	recv := must(senderkey.NewReceiver(must(senderkey.ParseDistribution(inner[1:])), senderkey.Config{}))
	g.AD = groupAD(v.GroupConv, aliceAddr)
	chain := g.SenderRandom[4:36]
	keyID := binary.BigEndian.Uint32(g.SenderRandom[:4])
	for i, text := range []string{"Hello group.", "Second group message.", "Third."} {
		wire := must(sender.Encrypt([]byte(text), g.AD))
		var rec groupRecord
		chain, rec = modelGroupEncrypt(chain, keyID, uint32(i), signKey, []byte(text), g.AD)
		check(bytes.Equal(wire, rec.wire), "group message %d", i)
		g.Messages = append(g.Messages, GroupMessage{Iteration: uint32(i), Plaintext: []byte(text), ChainKey: rec.ck,
			MessageKey: rec.mk, AEADKey: rec.key, Nonce: rec.nonce, Signed: rec.signed, Wire: wire})
	}
	g.DeliveryOrder = []int{0, 2, 1}
	for _, i := range g.DeliveryOrder {
		pt := must(recv.Decrypt(g.Messages[i].Wire, g.AD))
		check(bytes.Equal(pt, g.Messages[i].Plaintext), "group plaintext %d", i)
	}

	// ---- safety number (client/e2ee: each side's key is the concatenated
	// identities of its devices, in device-list order).
	sn := safety.Compute(safety.Party{UserID: "alice", IdentityKey: alice.party.IdentityPublic},
		safety.Party{UserID: "bob", IdentityKey: bob.party.IdentityPublic})
	la, lb := modelFingerprint("alice", alice.party.IdentityPublic), modelFingerprint("bob", bob.party.IdentityPublic)
	da, db := modelDigits(la), modelDigits(lb)
	if da > db {
		da, db = db, da
	}
	check(sn.Digits() == da+db, "safety digits")
	check(bytes.Equal(sn.Scannable(), cat([]byte{1}, la[:32], lb[:32])), "scannable")
	v.Safety = Safety{AliceKey: alice.party.IdentityPublic, BobKey: bob.party.IdentityPublic, Digits: sn.String(), Scannable: sn.Scannable()}

	v.Alice, v.Bob = *alice.party, *bob.party
	return v, nil
}

// Encode is the canonical file form: indented JSON and a final newline.
func Encode(v *Vectors) ([]byte, error) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// TestVectorsGolden regenerates the vectors and requires the committed
// file to be identical (-update rewrites it).
func TestVectorsGolden(t *testing.T) {
	v, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Encode(v)
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile(File, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(File)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("regenerated vectors differ from %s (%d vs %d bytes): the wire format changed, or the file was edited", File, len(got), len(want))
	}
	// Deterministic: a second run gives the same bytes.
	v2, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	again, _ := Encode(v2)
	if !bytes.Equal(again, got) {
		t.Fatal("generation is not deterministic")
	}
}
