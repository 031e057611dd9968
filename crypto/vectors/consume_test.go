package vectors_test

import (
	"bytes"
	"crypto/ecdh"
	"crypto/mlkem"
	"crypto/mlkem/mlkemtest"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/chatmesh/chatmesh/crypto/identity"
	"github.com/chatmesh/chatmesh/crypto/pqxdh"
	"github.com/chatmesh/chatmesh/crypto/prekey"
	"github.com/chatmesh/chatmesh/crypto/ratchet"
	"github.com/chatmesh/chatmesh/crypto/safety"
	"github.com/chatmesh/chatmesh/crypto/senderkey"
	"github.com/chatmesh/chatmesh/crypto/vectors"
)

// keys replays a recorded list of private keys as a randomness stream.
func keys(list []vectors.Hex) *bytes.Reader {
	var b []byte
	for _, k := range list {
		b = append(b, k...)
	}
	return bytes.NewReader(b)
}

func eq(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Fatalf("%s:\n got  %x\n want %x", what, got, want)
	}
}

// TestVectorsConsume uses only the committed JSON and the public APIs of
// the crypto tree: it rebuilds both devices from the recorded keys and
// randomness, reproduces every byte string, and decrypts every message in
// the recorded delivery order — what a second implementation does with
// the file.
func TestVectorsConsume(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("testdata", "e2e-vectors.json"))
	if err != nil {
		t.Fatal(err)
	}
	var v vectors.Vectors
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	if v.Schema != 1 || len(v.Messages) == 0 || len(v.Group.Messages) == 0 {
		t.Fatalf("unexpected vector file: schema %d, %d messages", v.Schema, len(v.Messages))
	}

	// Identities and device lists.
	load := func(p vectors.Party) (*identity.Private, *identity.DeviceList) {
		priv, err := identity.ParsePrivate(append(append([]byte{1}, p.IdentitySeed...), p.IdentityDH...))
		if err != nil {
			t.Fatal(err)
		}
		pub, _ := priv.Public().MarshalBinary()
		eq(t, p.UserID+" identity", pub, p.IdentityPublic)
		l, err := identity.ParseDeviceList(p.DeviceList)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.VerifyUpdate(nil); err != nil {
			t.Fatal(err)
		}
		d, err := l.Device(p.DeviceID)
		if err != nil || !d.Identity.Equal(priv.Public()) || !bytes.Equal(d.NoiseStatic[:], p.NoiseStatic) {
			t.Fatalf("%s device list entry: %v", p.UserID, err)
		}
		again, _ := l.MarshalBinary()
		eq(t, p.UserID+" device list", again, p.DeviceList)
		return priv, l
	}
	alice, _ := load(v.Alice)
	bob, bobList := load(v.Bob)

	// Bob's prekeys, rebuilt from their private halves.
	x := ecdh.X25519()
	spk, err := prekey.NewSignedPrekey(bob, v.Bob.SignedPrekey.ID, bytes.NewReader(v.Bob.SignedPrekey.Private))
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "signed prekey", spk.Public[:], v.Bob.SignedPrekey.Public)
	if spkPriv, err := x.NewPrivateKey(v.Bob.SignedPrekey.Private); err != nil || !spkPriv.Equal(spk.Private) {
		t.Fatalf("signed prekey private key: %v", err)
	}
	enc, _ := spk.SignedPrekey.AppendBinary(nil)
	eq(t, "signed prekey encoding", enc, v.Bob.SignedPrekey.Encoded)
	kpk, err := prekey.NewKEMPrekeyFromSeed(bob, v.Bob.KEMPrekey.ID, v.Bob.KEMPrekey.Seed)
	if err != nil {
		t.Fatal(err)
	}
	enc, _ = kpk.KEMPrekey.AppendBinary(nil)
	eq(t, "kem prekey encoding", enc, v.Bob.KEMPrekey.Encoded)
	otps, err := prekey.NewOneTimePrekeys(v.Bob.OneTimePrekey.ID, 1, bytes.NewReader(v.Bob.OneTimePrekey.Private))
	if err != nil {
		t.Fatal(err)
	}
	enc, _ = otps[0].OneTimePrekey.AppendBinary(nil)
	eq(t, "one-time prekey encoding", enc, v.Bob.OneTimePrekey.Encoded)
	store := &pqxdh.MemoryKeys{}
	store.AddSignedPrekey(spk)
	store.AddKEMPrekey(kpk)
	if err := store.AddOneTimePrekeys(otps); err != nil {
		t.Fatal(err)
	}

	// The bundle as served, checked as Alice checks it.
	bundle, err := prekey.ParseBundle(v.Bundle)
	if err != nil {
		t.Fatal(err)
	}
	if err := bundle.Verify(); err != nil {
		t.Fatal(err)
	}
	bobDev, _ := bobList.Device(v.Bob.DeviceID)
	if !bundle.Identity.Equal(bobDev.Identity) {
		t.Fatal("bundle identity is not the device list's")
	}

	// Alice's session setup with the recorded randomness.
	out, err := pqxdh.Initiate(alice, bobDev.Identity, bundle, pqxdh.Config{
		Rand:    bytes.NewReader(v.Setup.EphemeralPrivate),
		Ratchet: ratchet.Config{Rand: keys(v.Alice.RatchetKeys)},
		Encapsulate: func(ek *mlkem.EncapsulationKey768) ([]byte, []byte, error) {
			return mlkemtest.Encapsulate768(ek, v.Setup.KEMRandom)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "handshake", out.Handshake, v.Setup.Handshake)
	eq(t, "handshake hash (session associated data)", out.Session.AssociatedData(), v.Setup.HandshakeHash)

	sessions := map[string]*ratchet.Session{"alice": out.Session}
	bobRand := keys(v.Bob.RatchetKeys)
	sent := 0
	sendUpTo := func(deliveries int) {
		for sent < len(v.Messages) && v.Messages[sent].SentAfter <= deliveries {
			m := v.Messages[sent]
			sess := sessions[m.From]
			var wire []byte
			var err error
			if m.From == "alice" && !sess.HasReceived() {
				wire, err = out.Seal(m.Plaintext, m.AD)
			} else {
				wire, err = sess.Encrypt(m.Plaintext, m.AD)
			}
			if err != nil {
				t.Fatalf("message %d: %v", m.Index, err)
			}
			eq(t, "message wire", wire, m.Wire)
			if pqxdh.IsInitial(wire) != m.Initial {
				t.Fatalf("message %d: initial %v", m.Index, !m.Initial)
			}
			sent++
		}
	}
	plain := map[int][]byte{}
	for di, d := range v.Deliveries {
		sendUpTo(di)
		m := v.Messages[d.Index]
		if d.Index >= sent {
			t.Fatalf("delivery %d of message %d before it was sent", di, d.Index)
		}
		var pt []byte
		switch {
		case m.Initial && sessions[d.To] == nil:
			acc, err := pqxdh.Accept(bob, store, m.Wire, m.AD, pqxdh.Config{Ratchet: ratchet.Config{Rand: bobRand}})
			if err != nil {
				t.Fatal(err)
			}
			if !acc.Peer.Equal(alice.Public()) {
				t.Fatal("accepted peer is not Alice")
			}
			eq(t, "token", acc.Token[:], v.Setup.Token)
			sessions[d.To], pt = acc.Session, acc.Plaintext
		case m.Initial:
			// A later initial message of the accepted session: Accept
			// refuses it as a replay; the ratchet part opens with the
			// session found by the token.
			if _, err := pqxdh.Accept(bob, store, m.Wire, m.AD, pqxdh.Config{}); !errors.Is(err, pqxdh.ErrReplay) {
				t.Fatalf("message %d: Accept again: %v, want ErrReplay", m.Index, err)
			}
			in, err := pqxdh.ParseInitial(m.Wire)
			if err != nil {
				t.Fatal(err)
			}
			tok := in.Token()
			eq(t, "token", tok[:], v.Setup.Token)
			if pt, err = sessions[d.To].Decrypt(in.Ratchet, m.AD); err != nil {
				t.Fatalf("message %d: %v", m.Index, err)
			}
		default:
			var err error
			if pt, err = sessions[d.To].Decrypt(m.Wire, m.AD); err != nil {
				t.Fatalf("message %d: %v", m.Index, err)
			}
		}
		eq(t, "plaintext", pt, m.Plaintext)
		if n := sessions[d.To].SkippedKeys(); n != d.Skipped {
			t.Fatalf("delivery %d: %d skipped keys, want %d", di, n, d.Skipped)
		}
		plain[d.Index] = pt
	}
	if sent != len(v.Messages) || len(plain) != len(v.Messages) {
		t.Fatalf("sent %d, delivered %d of %d messages", sent, len(plain), len(v.Messages))
	}
	// Every message key is gone: a second delivery of any message fails.
	for _, m := range v.Messages {
		to := "bob"
		if m.From == "bob" {
			to = "alice"
		}
		w := m.Wire
		if m.Initial {
			w = w[pqxdh.HandshakeSize:]
		}
		if _, err := sessions[to].Decrypt(w, m.AD); err == nil {
			t.Fatalf("message %d decrypted twice", m.Index)
		}
	}

	// A second session from the bundle without a one-time prekey.
	n := v.NoOneTime
	nb, err := prekey.ParseBundle(n.Bundle)
	if err != nil || nb.OneTime != nil {
		t.Fatalf("bundle without one-time prekey: %v", err)
	}
	if err := nb.Verify(); err != nil {
		t.Fatal(err)
	}
	o, err := pqxdh.Initiate(alice, bobDev.Identity, nb, pqxdh.Config{
		Rand:    bytes.NewReader(n.Setup.EphemeralPrivate),
		Ratchet: ratchet.Config{Rand: keys(n.AliceRatchetKeys)},
		Encapsulate: func(ek *mlkem.EncapsulationKey768) ([]byte, []byte, error) {
			return mlkemtest.Encapsulate768(ek, n.Setup.KEMRandom)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "handshake without one-time prekey", o.Handshake, n.Setup.Handshake)
	wire, err := o.Seal(n.Message.Plaintext, n.Message.AD)
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "message without one-time prekey", wire, n.Message.Wire)
	acc, err := pqxdh.Accept(bob, store, n.Message.Wire, n.Message.AD, pqxdh.Config{Ratchet: ratchet.Config{Rand: keys(n.BobRatchetKeys)}})
	if err != nil {
		t.Fatal(err)
	}
	eq(t, "plaintext without one-time prekey", acc.Plaintext, n.Message.Plaintext)
	if _, err := pqxdh.Accept(bob, store, n.Message.Wire, n.Message.AD, pqxdh.Config{}); !errors.Is(err, pqxdh.ErrReplay) {
		t.Fatalf("replay of a handshake without one-time prekey: %v", err)
	}

	// Group: the distribution arrived in a pairwise message.
	g := v.Group
	inner := plain[g.DistributionMessage]
	if len(inner) == 0 || inner[0] != 0x02 {
		t.Fatalf("distribution message inner type %x", inner[:1])
	}
	eq(t, "distribution", inner[1:], g.Distribution)
	sender, err := senderkey.NewSender(bytes.NewReader(g.SenderRandom))
	if err != nil {
		t.Fatal(err)
	}
	for _, gm := range g.Messages {
		wire, err := sender.Encrypt(gm.Plaintext, g.AD)
		if err != nil {
			t.Fatal(err)
		}
		eq(t, "group message", wire, gm.Wire)
	}
	dist, err := senderkey.ParseDistribution(inner[1:])
	if err != nil {
		t.Fatal(err)
	}
	recv, err := senderkey.NewReceiver(dist, senderkey.Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range g.DeliveryOrder {
		pt, err := recv.Decrypt(g.Messages[i].Wire, g.AD)
		if err != nil {
			t.Fatalf("group message %d: %v", i, err)
		}
		eq(t, "group plaintext", pt, g.Messages[i].Plaintext)
	}
	if _, err := recv.Decrypt(g.Messages[0].Wire, g.AD); !errors.Is(err, senderkey.ErrDuplicate) {
		t.Fatalf("group replay: %v", err)
	}

	// Safety number.
	sn := safety.Compute(safety.Party{UserID: v.Alice.UserID, IdentityKey: v.Safety.AliceKey},
		safety.Party{UserID: v.Bob.UserID, IdentityKey: v.Safety.BobKey})
	if sn.String() != v.Safety.Digits {
		t.Fatalf("safety number %s, want %s", sn, v.Safety.Digits)
	}
	eq(t, "scannable", sn.Scannable(), v.Safety.Scannable)
	fromBob := safety.Compute(safety.Party{UserID: v.Bob.UserID, IdentityKey: v.Safety.BobKey},
		safety.Party{UserID: v.Alice.UserID, IdentityKey: v.Safety.AliceKey})
	if err := fromBob.VerifyScanned(v.Safety.Scannable); err != nil {
		t.Fatal(err)
	}
}
