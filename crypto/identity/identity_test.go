package identity

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"testing"
)

func gen(t testing.TB) *Private {
	t.Helper()
	p, err := Generate(nil)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPublicRoundTripAndBinding(t *testing.T) {
	p := gen(t)
	raw, err := p.Public().MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) != PublicSize {
		t.Fatalf("size %d", len(raw))
	}
	q, err := ParsePublic(raw)
	if err != nil {
		t.Fatal(err)
	}
	if !q.Equal(p.Public()) {
		t.Fatal("round trip changed the identity")
	}
	// Binding: someone else's X25519 key under p's Ed25519 key is refused.
	other := gen(t).Public()
	forged := p.Public()
	forged.DH = other.DH
	if err := forged.Verify(); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("rebound x25519 key: %v", err)
	}
	raw2, _ := forged.MarshalBinary()
	if _, err := ParsePublic(raw2); err == nil {
		t.Fatal("ParsePublic accepted a rebound key")
	}
	priv, _ := p.MarshalBinary()
	p2, err := ParsePrivate(priv)
	if err != nil {
		t.Fatal(err)
	}
	if !p2.Public().Equal(p.Public()) {
		t.Fatal("private round trip changed the identity")
	}
}

// The link signature must be exactly the byte string the region checks.
func TestLinkSignatureFormat(t *testing.T) {
	existing, newDev := gen(t), gen(t)
	noiseStatic := bytes.Repeat([]byte{7}, 32)
	idKey := newDev.Public().Sign
	sig := existing.SignLink("alice", noiseStatic, idKey)
	want := append(append(append([]byte("chatmesh-link-v1"), "alice"...), noiseStatic...), idKey...)
	if !ed25519.Verify(existing.Public().Sign, want, sig) {
		t.Fatal("signature is not over chatmesh-link-v1||user_id||noise_static||identity_key")
	}
	if err := VerifyLink(existing.Public().Sign, "alice", noiseStatic, idKey, sig); err != nil {
		t.Fatal(err)
	}
	if err := VerifyLink(existing.Public().Sign, "alicf", noiseStatic, idKey, sig); err == nil {
		t.Fatal("link verified for another user")
	}
	if err := VerifyLink(newDev.Public().Sign, "alice", noiseStatic, idKey, sig); err == nil {
		t.Fatal("link verified under the new device's own key")
	}
}

func device(id uint32, p *Private) Device {
	d := Device{ID: id, Identity: p.Public()}
	d.NoiseStatic[0] = byte(id)
	return d
}

func TestDeviceListTrust(t *testing.T) {
	phone, laptop, rogue := gen(t), gen(t), gen(t)
	v1 := &DeviceList{UserID: "alice", Version: 1, Devices: []Device{device(1, phone)}}
	if err := v1.Sign(1, phone); err != nil {
		t.Fatal(err)
	}
	raw, _ := v1.MarshalBinary()
	got, err := ParseDeviceList(raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := got.VerifyUpdate(nil); err != nil {
		t.Fatalf("first contact: %v", err)
	}
	// v2 adds the laptop, signed by the phone: accepted.
	v2 := &DeviceList{UserID: "alice", Version: 2, Devices: []Device{device(2, laptop), device(1, phone)}}
	if err := v2.Sign(1, phone); err != nil {
		t.Fatal(err)
	}
	if err := v2.VerifyUpdate(v1); err != nil {
		t.Fatalf("update signed by trusted device: %v", err)
	}
	if d, err := v2.Device(2); err != nil || !d.Identity.Equal(laptop.Public()) {
		t.Fatal("laptop missing")
	}
	// The server (or a new device) adds a device and signs with the new key.
	v3 := &DeviceList{UserID: "alice", Version: 3, Devices: []Device{device(1, phone), device(2, laptop), device(3, rogue)}}
	if err := v3.Sign(3, rogue); err != nil {
		t.Fatal(err)
	}
	if err := v3.VerifyUpdate(v2); !errors.Is(err, ErrUntrustedSigner) {
		t.Fatalf("self-added device: %v", err)
	}
	// Claims the phone signed, but the signature is the rogue's.
	v3.SignerID = 1
	if err := v3.VerifyUpdate(v2); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("forged signer id: %v", err)
	}
	// Rollback to v1 and a different list under the same version.
	if err := v1.VerifyUpdate(v2); !errors.Is(err, ErrRollback) {
		t.Fatalf("rollback: %v", err)
	}
	alt := &DeviceList{UserID: "alice", Version: 2, Devices: []Device{device(1, phone)}}
	_ = alt.Sign(1, phone)
	if err := alt.VerifyUpdate(v2); !errors.Is(err, ErrRollback) {
		t.Fatalf("equivocation: %v", err)
	}
	if err := v2.VerifyUpdate(v2); err != nil {
		t.Fatalf("re-announcement: %v", err)
	}
	// Tampering with any byte of the encoding is detected.
	raw, _ = v2.MarshalBinary()
	for i := range raw {
		bad := bytes.Clone(raw)
		bad[i] ^= 1
		l, err := ParseDeviceList(bad)
		if err != nil {
			continue
		}
		if err := l.VerifyUpdate(v1); err == nil {
			t.Fatalf("byte %d flipped: accepted", i)
		}
	}
}
