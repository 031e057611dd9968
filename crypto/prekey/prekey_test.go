package prekey

import (
	"bytes"
	"errors"
	"testing"

	"github.com/chatmesh/chatmesh/crypto/identity"
)

type keys struct {
	id   *identity.Private
	spk  *SignedPrekeyPair
	kem  *KEMPrekeyPair
	otps []OneTimePrekeyPair
}

func newKeys(t testing.TB) *keys {
	t.Helper()
	id, err := identity.Generate(nil)
	if err != nil {
		t.Fatal(err)
	}
	k := &keys{id: id}
	if k.spk, err = NewSignedPrekey(id, 7, nil); err != nil {
		t.Fatal(err)
	}
	if k.kem, err = NewKEMPrekey(id, 8); err != nil {
		t.Fatal(err)
	}
	if k.otps, err = NewOneTimePrekeys(100, 3, nil); err != nil {
		t.Fatal(err)
	}
	return k
}

func (k *keys) bundle() *Bundle {
	kem := k.kem.KEMPrekey
	o := k.otps[0].OneTimePrekey
	return &Bundle{Identity: k.id.Public(), SignedPrekey: k.spk.SignedPrekey, KEM: &kem, OneTime: &o}
}

func TestBundleRoundTripAndVerify(t *testing.T) {
	k := newKeys(t)
	for _, withOTP := range []bool{true, false} {
		b := k.bundle()
		if !withOTP {
			b.OneTime = nil
		}
		raw, err := b.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseBundle(raw)
		if err != nil {
			t.Fatal(err)
		}
		if err := got.Verify(); err != nil {
			t.Fatal(err)
		}
		again, _ := got.MarshalBinary()
		if !bytes.Equal(raw, again) {
			t.Fatal("re-encoding differs")
		}
		if (got.OneTime != nil) != withOTP {
			t.Fatal("one-time presence lost")
		}
		for n := range len(raw) {
			if _, err := ParseBundle(raw[:n]); err == nil {
				t.Fatalf("truncated bundle (%d bytes) parsed", n)
			}
		}
	}
}

func TestBundleVerifyRejects(t *testing.T) {
	k, other := newKeys(t), newKeys(t)
	b := k.bundle()
	b.KEM = nil
	if err := b.Verify(); !errors.Is(err, ErrMissingKEM) {
		t.Fatalf("missing kem: %v", err)
	}
	b = k.bundle()
	b.SignedPrekey.Public[3] ^= 1
	if err := b.Verify(); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("modified signed prekey: %v", err)
	}
	b = k.bundle()
	b.SignedPrekey.ID++
	if err := b.Verify(); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("modified signed prekey id: %v", err)
	}
	b = k.bundle()
	b.KEM.Public = bytes.Clone(b.KEM.Public)
	// Flip a bit of the seed ρ (the key's last 32 bytes): any seed is a
	// valid encoding, so only the signature can catch it. (A flipped bit in
	// the polynomial part may make a coefficient ≥ q, which fails as a
	// malformed encoding instead — a flaky expectation.)
	b.KEM.Public[len(b.KEM.Public)-1] ^= 1
	if err := b.Verify(); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("modified kem prekey: %v", err)
	}
	b = k.bundle()
	b.Identity = other.id.Public() // prekeys signed by k, identity of other
	if err := b.Verify(); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("swapped identity: %v", err)
	}
	// A signed-prekey signature is not valid as a KEM-prekey signature
	// (domain separation), even with the same id and key bytes position.
	b = k.bundle()
	b.SignedPrekey.Signature = b.KEM.Signature
	if err := b.Verify(); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("cross-purpose signature: %v", err)
	}
}

func TestUploadAndPairs(t *testing.T) {
	k := newKeys(t)
	u := &Upload{SignedPrekey: &k.spk.SignedPrekey, KEM: &k.kem.KEMPrekey}
	for _, o := range k.otps {
		u.OneTime = append(u.OneTime, o.OneTimePrekey)
	}
	raw, err := u.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseUpload(raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := got.Verify(k.id.Public()); err != nil {
		t.Fatal(err)
	}
	if err := got.Verify(newKeys(t).id.Public()); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("upload verified against another identity: %v", err)
	}
	got.OneTime = append(got.OneTime, got.OneTime[0])
	if err := got.Verify(k.id.Public()); !errors.Is(err, ErrMalformed) {
		t.Fatalf("duplicate one-time id: %v", err)
	}
	spkRaw, _ := k.spk.MarshalBinary()
	if s, err := ParseSignedPrekeyPair(spkRaw); err != nil || !s.Private.Equal(k.spk.Private) {
		t.Fatalf("signed prekey pair: %v", err)
	}
	kemRaw, _ := k.kem.MarshalBinary()
	if p, err := ParseKEMPrekeyPair(kemRaw); err != nil || !bytes.Equal(p.Private.Bytes(), k.kem.Private.Bytes()) {
		t.Fatalf("kem pair: %v", err)
	}
	otpRaw, _ := k.otps[1].MarshalBinary()
	if p, err := ParseOneTimePrekeyPair(otpRaw); err != nil || p.ID != k.otps[1].ID {
		t.Fatalf("one-time pair: %v", err)
	}
}
