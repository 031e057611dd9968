package crypto_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/chatmesh/chatmesh/crypto/identity"
	"github.com/chatmesh/chatmesh/crypto/pqxdh"
	"github.com/chatmesh/chatmesh/crypto/prekey"
	"github.com/chatmesh/chatmesh/crypto/ratchet"
	"github.com/chatmesh/chatmesh/crypto/safety"
	"github.com/chatmesh/chatmesh/crypto/senderkey"
)

// dev is one device of a user, with its published prekeys.
type dev struct {
	user string
	id   uint32
	key  *identity.Private
	keys *pqxdh.MemoryKeys
	spk  *prekey.SignedPrekeyPair
	kem  *prekey.KEMPrekeyPair
	otps []prekey.OneTimePrekeyPair
	next int // next one-time prekey the "server" hands out
}

func newDev(t *testing.T, user string, id uint32) *dev {
	t.Helper()
	k, err := identity.Generate(nil)
	if err != nil {
		t.Fatal(err)
	}
	d := &dev{user: user, id: id, key: k, keys: &pqxdh.MemoryKeys{}}
	d.spk, _ = prekey.NewSignedPrekey(k, 1, nil)
	d.kem, _ = prekey.NewKEMPrekey(k, 1)
	d.otps, _ = prekey.NewOneTimePrekeys(1, 4, nil)
	d.keys.AddSignedPrekey(d.spk)
	d.keys.AddKEMPrekey(d.kem)
	if err := d.keys.AddOneTimePrekeys(d.otps); err != nil {
		t.Fatal(err)
	}
	return d
}

// bundleBytes is what the region serves, as bytes.
func (d *dev) bundleBytes(t *testing.T) []byte {
	kem := d.kem.KEMPrekey
	o := d.otps[d.next].OneTimePrekey
	d.next++
	raw, err := (&prekey.Bundle{Identity: d.key.Public(), SignedPrekey: d.spk.SignedPrekey, KEM: &kem, OneTime: &o}).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func list(t *testing.T, version uint64, signer *dev, devs ...*dev) []byte {
	t.Helper()
	l := &identity.DeviceList{UserID: devs[0].user, Version: version}
	for _, d := range devs {
		l.Devices = append(l.Devices, identity.Device{ID: d.id, Identity: d.key.Public()})
	}
	if err := l.Sign(signer.id, signer.key); err != nil {
		t.Fatal(err)
	}
	raw, _ := l.MarshalBinary()
	return raw
}

// TestScenario runs the client-side crypto of issue 3 end to end: signed
// device lists, one session per device pair (including the sender's other
// device), a 1:1 message fanned out per device, a group message with sender
// keys distributed over those sessions, rotation when a device leaves, and
// the safety number changing when an identity changes.
func TestScenario(t *testing.T) {
	alicePhone, aliceLaptop := newDev(t, "alice", 1), newDev(t, "alice", 2)
	bobPhone, bobTablet := newDev(t, "bob", 1), newDev(t, "bob", 2)

	// Alice's phone learns Bob's device list (first contact) and her own.
	bobList, err := identity.ParseDeviceList(list(t, 1, bobPhone, bobPhone, bobTablet))
	if err != nil {
		t.Fatal(err)
	}
	if err := bobList.VerifyUpdate(nil); err != nil {
		t.Fatal(err)
	}
	aliceList, _ := identity.ParseDeviceList(list(t, 2, alicePhone, alicePhone, aliceLaptop))
	if err := aliceList.VerifyUpdate(nil); err != nil {
		t.Fatal(err)
	}

	// One session per recipient device: Bob's two and Alice's other device.
	type peer struct {
		to   *dev
		out  *pqxdh.Outgoing
		recv *ratchet.Session // the peer's side
	}
	var peers []*peer
	for _, p := range []struct {
		l *identity.DeviceList
		d *dev
	}{{bobList, bobPhone}, {bobList, bobTablet}, {aliceList, aliceLaptop}} {
		entry, err := p.l.Device(p.d.id)
		if err != nil {
			t.Fatal(err)
		}
		b, err := prekey.ParseBundle(p.d.bundleBytes(t))
		if err != nil {
			t.Fatal(err)
		}
		out, err := pqxdh.Initiate(alicePhone.key, entry.Identity, b, pqxdh.Config{})
		if err != nil {
			t.Fatal(err)
		}
		peers = append(peers, &peer{to: p.d, out: out})
	}

	// A 1:1 message: encrypted once per device; each device decrypts only its own.
	const text = "canary-7f3a meet at noon"
	adFor := func(d *dev) []byte { return []byte(fmt.Sprintf("d:alice:bob|%s:%d", d.user, d.id)) }
	envelope := map[string][]byte{}
	for _, p := range peers {
		ct, err := p.out.Seal([]byte(text), adFor(p.to))
		if err != nil {
			t.Fatal(err)
		}
		envelope[fmt.Sprint(p.to.user, p.to.id)] = ct
	}
	for _, p := range peers {
		own := envelope[fmt.Sprint(p.to.user, p.to.id)]
		acc, err := pqxdh.Accept(p.to.key, p.to.keys, own, adFor(p.to), pqxdh.Config{})
		if err != nil {
			t.Fatalf("%s:%d: %v", p.to.user, p.to.id, err)
		}
		if string(acc.Plaintext) != text || !acc.Peer.Equal(alicePhone.key.Public()) {
			t.Fatalf("%s:%d: wrong plaintext or sender", p.to.user, p.to.id)
		}
		p.recv = acc.Session
		for other, ct := range envelope { // another device's ciphertext is useless here
			if other != fmt.Sprint(p.to.user, p.to.id) {
				if _, err := pqxdh.Accept(p.to.key, p.to.keys, ct, adFor(p.to), pqxdh.Config{}); err == nil {
					t.Fatalf("%s:%d decrypted %s's ciphertext", p.to.user, p.to.id, other)
				}
			}
		}
		// First reply: the session is now a plain ratchet.
		r, _ := p.recv.Encrypt([]byte("ack"), adFor(p.to))
		if _, err := p.out.Session.Decrypt(r, adFor(p.to)); err != nil {
			t.Fatal(err)
		}
	}

	// Group: Alice's phone distributes a sender key over the pairwise sessions.
	groupAD := []byte("g:01JGROUP|alice:1")
	sender, _ := senderkey.NewSender(nil)
	receivers := map[*dev]*senderkey.Receiver{}
	distribute := func(s *senderkey.Sender, to []*peer) {
		dist, _ := s.Distribution().MarshalBinary()
		for _, p := range to {
			ct, err := p.out.Session.Encrypt(dist, adFor(p.to))
			if err != nil {
				t.Fatal(err)
			}
			raw, err := p.recv.Decrypt(ct, adFor(p.to))
			if err != nil {
				t.Fatal(err)
			}
			d, err := senderkey.ParseDistribution(raw)
			if err != nil {
				t.Fatal(err)
			}
			if receivers[p.to], err = senderkey.NewReceiver(d, senderkey.Config{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	distribute(sender, peers)
	gm, _ := sender.Encrypt([]byte("group canary-91bc"), groupAD)
	for d, r := range receivers {
		if pt, err := r.Decrypt(gm, groupAD); err != nil || string(pt) != "group canary-91bc" {
			t.Fatalf("%s:%d group: %v", d.user, d.id, err)
		}
	}
	// Bob's tablet leaves: rotate, distribute to the remaining devices only.
	rotated, _ := senderkey.NewSender(nil)
	tablet := receivers[bobTablet]
	distribute(rotated, []*peer{peers[0], peers[2]})
	gm2, _ := rotated.Encrypt([]byte("after the tablet left"), groupAD)
	if _, err := tablet.Decrypt(gm2, groupAD); !errors.Is(err, senderkey.ErrUnknownKey) {
		t.Fatalf("departed device read the rotated key: %v", err)
	}
	if _, err := receivers[bobPhone].Decrypt(gm2, groupAD); err != nil {
		t.Fatal(err)
	}

	// Safety numbers: equal on both sides; a new identity for Bob's phone
	// (reinstall, or a server substituting keys) changes the number, and the
	// server cannot publish it without a trusted device's signature.
	enc := func(p identity.Public) []byte { b, _ := p.MarshalBinary(); return b }
	a := safety.Compute(safety.Party{UserID: "alice", IdentityKey: enc(alicePhone.key.Public())}, safety.Party{UserID: "bob", IdentityKey: enc(bobPhone.key.Public())})
	b := safety.Compute(safety.Party{UserID: "bob", IdentityKey: enc(bobPhone.key.Public())}, safety.Party{UserID: "alice", IdentityKey: enc(alicePhone.key.Public())})
	if a.String() != b.String() {
		t.Fatal("safety numbers differ between the parties")
	}
	imposter := newDev(t, "bob", 1)
	forged, _ := identity.ParseDeviceList(list(t, 2, imposter, imposter, bobTablet))
	if err := forged.VerifyUpdate(bobList); !errors.Is(err, identity.ErrBadSignature) && !errors.Is(err, identity.ErrUntrustedSigner) {
		t.Fatalf("server-forged device list accepted: %v", err)
	}
	changed := safety.Compute(safety.Party{UserID: "alice", IdentityKey: enc(alicePhone.key.Public())}, safety.Party{UserID: "bob", IdentityKey: enc(imposter.key.Public())})
	if changed.Digits() == a.Digits() {
		t.Fatal("identity change not visible in the safety number")
	}
}
