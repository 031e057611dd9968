package safety

import (
	"encoding/hex"
	"errors"
	"regexp"
	"testing"
)

var (
	alice = Party{UserID: "alice", IdentityKey: []byte("alice identity key bytes........")}
	bob   = Party{UserID: "bob", IdentityKey: []byte("bob identity key bytes..........")}
)

func TestSameForBothParties(t *testing.T) {
	a, b := Compute(alice, bob), Compute(bob, alice)
	if a.Digits() != b.Digits() || a.String() != b.String() {
		t.Fatalf("alice sees %s, bob sees %s", a, b)
	}
	if !regexp.MustCompile(`^(\d{5} ){11}\d{5}$`).MatchString(a.String()) {
		t.Fatalf("format: %q", a.String())
	}
	if err := a.VerifyScanned(b.Scannable()); err != nil {
		t.Fatalf("alice scans bob: %v", err)
	}
	if err := b.VerifyScanned(a.Scannable()); err != nil {
		t.Fatalf("bob scans alice: %v", err)
	}
}

func TestChangedIdentityChangesNumber(t *testing.T) {
	base := Compute(alice, bob)
	mallory := Party{UserID: "bob", IdentityKey: []byte("mallory's key posing as bob....!")}
	mitm := Compute(alice, mallory)
	if mitm.Digits() == base.Digits() {
		t.Fatal("substituted key gives the same number")
	}
	// Bob's half of the digits (sorted position aside) must differ.
	if mitm.Digits()[:30] == base.Digits()[:30] && mitm.Digits()[30:] == base.Digits()[30:] {
		t.Fatal("no half changed")
	}
	// Bob scans Alice's screen while Mallory sits in the middle: mismatch.
	bobView := Compute(bob, alice)
	if err := bobView.VerifyScanned(mitm.Scannable()); !errors.Is(err, ErrMismatch) {
		t.Fatalf("mitm scan: %v", err)
	}
	// Same key, different user id: different fingerprint too.
	if Compute(alice, Party{UserID: "bob2", IdentityKey: bob.IdentityKey}).Digits() == base.Digits() {
		t.Fatal("user id not covered")
	}
	if err := base.VerifyScanned([]byte("short")); !errors.Is(err, ErrMalformed) {
		t.Fatalf("malformed: %v", err)
	}
	if err := base.VerifyScanned(base.Scannable()); !errors.Is(err, ErrMismatch) {
		t.Fatal("own code accepted as the peer's")
	}
}

func BenchmarkCompute(b *testing.B) {
	for i := 0; i < b.N; i++ {
		Compute(alice, bob)
	}
}

// TestSignalVector checks the digits against libsignal's published test
// vector (NumericFingerprintGeneratorTest: 5200 iterations, Curve25519
// identity keys with the 0x05 type prefix, phone-number identifiers).
func TestSignalVector(t *testing.T) {
	aliceKey, _ := hex.DecodeString("0506863bc66d02b40d27b8d49ca7c09e9239236f9d7d25d6fcca5ce13c7064d868")
	bobKey, _ := hex.DecodeString("05f781b6fb32fed9ba1cf2de978d4d5da28dc34046ae814402b5c0dbd96fda907b")
	a := Compute(Party{UserID: "+14152222222", IdentityKey: aliceKey}, Party{UserID: "+14153333333", IdentityKey: bobKey})
	b := Compute(Party{UserID: "+14153333333", IdentityKey: bobKey}, Party{UserID: "+14152222222", IdentityKey: aliceKey})
	const want = "300354477692869396892869876765458257569162576843440918079131"
	if a.Digits() != want || b.Digits() != want {
		t.Fatalf("got %s / %s, want %s", a.Digits(), b.Digits(), want)
	}
}
