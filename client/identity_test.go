package client

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/chatmesh/chatmesh/crypto/identity"
)

func TestIdentityPersistsWithPrivateMode(t *testing.T) {
	dir := t.TempDir()
	a, err := loadOrCreateIdentity(dir, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, identityFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
	a.User, a.Device = "alice", 1
	if err := saveIdentity(dir, a); err != nil {
		t.Fatal(err)
	}
	b, err := loadOrCreateIdentity(dir, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if string(b.NoisePrivate) != string(a.NoisePrivate) || b.Key() != a.Key() || !b.Registered() {
		t.Fatalf("reloaded identity differs")
	}
}

func TestLinkRoundTrip(t *testing.T) {
	old, _ := newIdentity(rand.Reader)
	old.User, old.Device = "alice", 1
	nw, _ := newIdentity(rand.Reader)

	reqTok := EncodeLinkRequest(LinkRequest{NoiseStatic: nw.NoisePublic, IdentityKey: nw.IdentityPublic()})
	req, err := DecodeLinkRequest(reqTok)
	if err != nil {
		t.Fatal(err)
	}
	l, err := signLink(old, req)
	if err != nil {
		t.Fatal(err)
	}
	l2, err := DecodeLink(EncodeLink(l))
	if err != nil {
		t.Fatal(err)
	}
	if !VerifyLink(old.IdentityPublic(), l2) {
		t.Fatal("valid link does not verify")
	}
	// Tampering with any signed field breaks it.
	bad := l2
	bad.User = "mallory"
	if VerifyLink(old.IdentityPublic(), bad) {
		t.Fatal("link verifies for another user")
	}
	other, _ := newIdentity(rand.Reader)
	bad = l2
	bad.NoiseStatic = other.NoisePublic
	if VerifyLink(old.IdentityPublic(), bad) {
		t.Fatal("link verifies for another noise key")
	}
	if _, err := DecodeLink(reqTok); !errors.Is(err, ErrBadToken) {
		t.Fatalf("request token accepted as link: %v", err)
	}
	unreg, _ := newIdentity(rand.Reader)
	if _, err := signLink(unreg, req); !errors.Is(err, ErrNotRegistered) {
		t.Fatalf("unregistered signer: %v", err)
	}
}

// The Ed25519 key sent at registration is the signing half of the
// end-to-end identity; a state dir from before end-to-end encryption keeps
// its registered key and gains an X25519 half.
func TestIdentityUnifiedWithE2EEIdentity(t *testing.T) {
	dir := t.TempDir()
	a, err := loadOrCreateIdentity(dir, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.IdentityPublic(), a.E2EE().Public().Sign) {
		t.Fatal("registration key differs from the end-to-end identity's Ed25519 key")
	}
	req, err := DecodeLinkRequest((&Client{id: a}).LinkRequest())
	if err != nil {
		t.Fatal(err)
	}
	pub, err := identity.ParsePublic(req.E2EEIdentity)
	if err != nil || !pub.Equal(a.E2EE().Public()) || !bytes.Equal(req.IdentityKey, pub.Sign) {
		t.Fatalf("link request identity: %v", err)
	}

	old := t.TempDir()
	legacy := *a
	legacy.E2EEIdentity = nil
	if err := saveIdentity(old, &legacy); err != nil {
		t.Fatal(err)
	}
	b, err := loadOrCreateIdentity(old, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b.IdentityPublic(), a.IdentityPublic()) || !bytes.Equal(b.E2EE().Public().Sign, a.IdentityPublic()) {
		t.Fatal("migration changed the registered Ed25519 key")
	}
	if err := b.E2EE().Public().Verify(); err != nil {
		t.Fatal(err)
	}
	c, err := loadOrCreateIdentity(old, rand.Reader)
	if err != nil || !c.E2EE().Public().Equal(b.E2EE().Public()) {
		t.Fatalf("migrated identity not persisted: %v", err)
	}
}
