package identity

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
)

// Sizes of the encoded forms.
const (
	// PublicSize is the length of an encoded Public: version(1) ||
	// Ed25519 key(32) || X25519 key(32) || binding signature(64).
	PublicSize = 1 + ed25519.PublicKeySize + 32 + ed25519.SignatureSize
	// PrivateSize is the length of an encoded Private: version(1) ||
	// Ed25519 seed(32) || X25519 scalar(32).
	PrivateSize = 1 + ed25519.SeedSize + 32

	encodingVersion = 1
)

// Domain-separation labels. Every signature this package makes or checks
// starts with one of them, so a signature for one purpose is never valid for
// another.
const (
	bindLabel = "chatmesh-identity-dh-v1"
	linkLabel = "chatmesh-link-v1"
)

// Errors.
var (
	ErrMalformed    = errors.New("identity: malformed encoding")
	ErrBadSignature = errors.New("identity: bad signature")
	ErrVersion      = errors.New("identity: unsupported encoding version")
)

// Public is a device's public identity: an Ed25519 key for signatures, an
// X25519 key for Diffie-Hellman, and the Ed25519 signature that binds the
// X25519 key to the Ed25519 key. Two Publics are the same identity iff
// Equal reports true.
type Public struct {
	Sign    ed25519.PublicKey
	DH      [32]byte
	Binding [ed25519.SignatureSize]byte
}

// Private is a device's long-term identity key pair. It never leaves the
// device. The zero value is not usable; use Generate or ParsePrivate.
type Private struct {
	sign ed25519.PrivateKey
	dh   *ecdh.PrivateKey
	pub  Public
}

// Generate makes a new device identity. rnd nil means crypto/rand.
func Generate(rnd io.Reader) (*Private, error) {
	if rnd == nil {
		rnd = rand.Reader
	}
	var seed [ed25519.SeedSize]byte
	if _, err := io.ReadFull(rnd, seed[:]); err != nil {
		return nil, fmt.Errorf("identity: reading randomness: %w", err)
	}
	var scalar [32]byte
	if _, err := io.ReadFull(rnd, scalar[:]); err != nil {
		return nil, fmt.Errorf("identity: reading randomness: %w", err)
	}
	return fromSecrets(seed[:], scalar[:])
}

func fromSecrets(seed, scalar []byte) (*Private, error) {
	dh, err := ecdh.X25519().NewPrivateKey(scalar)
	if err != nil {
		return nil, fmt.Errorf("identity: x25519 key: %w", err)
	}
	p := &Private{sign: ed25519.NewKeyFromSeed(seed), dh: dh}
	p.pub.Sign = p.sign.Public().(ed25519.PublicKey)
	copy(p.pub.DH[:], dh.PublicKey().Bytes())
	copy(p.pub.Binding[:], ed25519.Sign(p.sign, bindMessage(p.pub.DH[:])))
	return p, nil
}

func bindMessage(dh []byte) []byte {
	return append([]byte(bindLabel), dh...)
}

// Public returns the public identity.
func (p *Private) Public() Public { return p.pub.clone() }

// DH returns the X25519 private key (for handshakes in crypto/pqxdh).
func (p *Private) DH() *ecdh.PrivateKey { return p.dh }

// Sign signs msg with the Ed25519 identity key. Callers must prefix msg with
// their own domain-separation label.
func (p *Private) Sign(msg []byte) []byte { return ed25519.Sign(p.sign, msg) }

// MarshalBinary encodes the private identity (PrivateSize bytes) for the
// device's own key store. The result is secret.
func (p *Private) MarshalBinary() ([]byte, error) {
	out := make([]byte, 0, PrivateSize)
	out = append(out, encodingVersion)
	out = append(out, p.sign.Seed()...)
	out = append(out, p.dh.Bytes()...)
	return out, nil
}

// ParsePrivate decodes what Private.MarshalBinary produced.
func ParsePrivate(b []byte) (*Private, error) {
	if len(b) != PrivateSize {
		return nil, fmt.Errorf("%w: private identity is %d bytes, want %d", ErrMalformed, len(b), PrivateSize)
	}
	if b[0] != encodingVersion {
		return nil, fmt.Errorf("%w: %d", ErrVersion, b[0])
	}
	return fromSecrets(b[1:1+ed25519.SeedSize], b[1+ed25519.SeedSize:])
}

func (p Public) clone() Public {
	p.Sign = bytes.Clone(p.Sign)
	return p
}

// Verify checks the binding signature: the X25519 key was certified by the
// Ed25519 key.
func (p Public) Verify() error {
	if len(p.Sign) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: ed25519 key is %d bytes", ErrMalformed, len(p.Sign))
	}
	if !ed25519.Verify(p.Sign, bindMessage(p.DH[:]), p.Binding[:]) {
		return fmt.Errorf("%w: x25519 key not bound to ed25519 key", ErrBadSignature)
	}
	return nil
}

// VerifySignature checks an Ed25519 signature by this identity over msg.
func (p Public) VerifySignature(msg, sig []byte) bool {
	return len(p.Sign) == ed25519.PublicKeySize && ed25519.Verify(p.Sign, msg, sig)
}

// Equal reports whether p and q are the same identity (both keys equal).
func (p Public) Equal(q Public) bool {
	return subtle.ConstantTimeCompare(p.Sign, q.Sign) == 1 &&
		subtle.ConstantTimeCompare(p.DH[:], q.DH[:]) == 1
}

// DHPublic returns the X25519 public key as a crypto/ecdh key.
func (p Public) DHPublic() (*ecdh.PublicKey, error) {
	k, err := ecdh.X25519().NewPublicKey(p.DH[:])
	if err != nil {
		return nil, fmt.Errorf("%w: x25519 key: %v", ErrMalformed, err)
	}
	return k, nil
}

// AppendBinary appends the PublicSize-byte encoding of p.
func (p Public) AppendBinary(b []byte) ([]byte, error) {
	if len(p.Sign) != ed25519.PublicKeySize {
		return b, fmt.Errorf("%w: ed25519 key is %d bytes", ErrMalformed, len(p.Sign))
	}
	b = append(b, encodingVersion)
	b = append(b, p.Sign...)
	b = append(b, p.DH[:]...)
	return append(b, p.Binding[:]...), nil
}

// MarshalBinary returns the PublicSize-byte encoding of p.
func (p Public) MarshalBinary() ([]byte, error) {
	return p.AppendBinary(make([]byte, 0, PublicSize))
}

// ParsePublic decodes exactly PublicSize bytes and verifies the binding
// signature, so a Public obtained from ParsePublic is always consistent.
func ParsePublic(b []byte) (Public, error) {
	var p Public
	if len(b) != PublicSize {
		return p, fmt.Errorf("%w: public identity is %d bytes, want %d", ErrMalformed, len(b), PublicSize)
	}
	if b[0] != encodingVersion {
		return p, fmt.Errorf("%w: %d", ErrVersion, b[0])
	}
	b = b[1:]
	p.Sign = bytes.Clone(b[:ed25519.PublicKeySize])
	b = b[ed25519.PublicKeySize:]
	copy(p.DH[:], b[:32])
	copy(p.Binding[:], b[32:])
	if err := p.Verify(); err != nil {
		return Public{}, err
	}
	return p, nil
}

// LinkMessage is the exact byte string a link signature covers, the format
// the region checks on RegisterRequest:
// "chatmesh-link-v1" || user_id || noise_static || identity_key
// (plain concatenation, no length prefixes: noise_static and identity_key are
// fixed at 32 bytes each, so the split is unambiguous).
func LinkMessage(userID string, noiseStatic, identityKey []byte) []byte {
	m := make([]byte, 0, len(linkLabel)+len(userID)+len(noiseStatic)+len(identityKey))
	m = append(m, linkLabel...)
	m = append(m, userID...)
	m = append(m, noiseStatic...)
	return append(m, identityKey...)
}

// SignLink makes the link signature by which an existing device (p) admits a
// new device with Noise static key noiseStatic and Ed25519 identity key
// identityKey into userID's account.
func (p *Private) SignLink(userID string, noiseStatic, identityKey []byte) []byte {
	return p.Sign(LinkMessage(userID, noiseStatic, identityKey))
}

// VerifyLink checks a link signature made by signer (an Ed25519 public key
// of an existing device).
func VerifyLink(signer ed25519.PublicKey, userID string, noiseStatic, identityKey, sig []byte) error {
	if len(signer) != ed25519.PublicKeySize || len(noiseStatic) != 32 || len(identityKey) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: link key sizes", ErrMalformed)
	}
	if !ed25519.Verify(signer, LinkMessage(userID, noiseStatic, identityKey), sig) {
		return fmt.Errorf("%w: link", ErrBadSignature)
	}
	return nil
}
