package dh25519

import (
	"crypto/ecdh"
	"crypto/rand"
	"crypto/subtle"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/flynn/noise"
)

// KeyLen is the length of X25519 public and private keys.
const KeyLen = 32

// DH is Noise's "25519" DH function (RFC 7748 X25519, the same bytes
// on the wire as flynn/noise's DH25519) on crypto/ecdh keys, one value per
// handshake.
//
// Why not noise.DH25519: it computes every DH with x/crypto's
// curve25519.X25519, which parses the private key into an
// ecdh.PrivateKey first — and crypto/ecdh computes a private key's public
// key when it parses it, one scalar multiplication thrown away per DH —
// and generates a key pair with X25519(priv, basepoint), two more. An IK
// responder's handshake took ten scalar multiplications for four DHs and
// one key pair; here it takes five or six (the pair's public key, the four
// DHs, the static key's parse when the process-wide cache below misses).
// X25519 was a third of the edge's CPU in a reconnect storm and half the
// load generator's.
//
// A value remembers the ephemeral key it generated (the handshake state
// holds the same key; both are dropped with the handshake). The static
// key parsed last is kept process-wide: an edge has one, so every
// handshake reuses it; a process with many (a load generator) parses each
// when it misses, which costs what it did per DH before.
type DH struct {
	eph parsedKey
}

// parsedKey is a private key with the bytes it was parsed from (compared
// without copying them out of the ecdh key on every DH).
type parsedKey struct {
	raw []byte
	k   *ecdh.PrivateKey
}

// is reports whether priv is this key's bytes, in constant time.
func (p *parsedKey) is(priv []byte) bool {
	return p != nil && p.k != nil && subtle.ConstantTimeCompare(p.raw, priv) == 1
}

var _ noise.DHFunc = (*DH)(nil)

// lastStatic is the static private key parsed last (see DH).
var lastStatic atomic.Pointer[parsedKey]

// New returns the DH function of one handshake state.
func New() *DH { return &DH{} }

// GenerateKeypair reads a 32-byte private key from rng (crypto/rand if
// nil), exactly as noise.DH25519 does, so a deterministic rng gives the
// same key pair.
func (d *DH) GenerateKeypair(rng io.Reader) (noise.DHKey, error) {
	k, err := NewPrivate(rng)
	if err != nil {
		return noise.DHKey{}, err
	}
	d.eph = parsedKey{raw: k.Bytes(), k: k}
	return noise.DHKey{Private: k.Bytes(), Public: k.PublicKey().Bytes()}, nil
}

// DH is X25519(priv, pub); it fails on a public key of the wrong length
// and on a low-order one (an all-zero result), as curve25519.X25519 does.
func (d *DH) DH(priv, pub []byte) ([]byte, error) {
	k, err := d.private(priv)
	if err != nil {
		return nil, err
	}
	p, err := ecdh.X25519().NewPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return k.ECDH(p)
}

func (*DH) DHLen() int     { return KeyLen }
func (*DH) DHName() string { return "25519" }

// private returns priv parsed: this handshake's ephemeral key, the cached
// static key, or a fresh parse (then cached: in a handshake the only
// private keys are the ephemeral and the static one).
func (d *DH) private(priv []byte) (*ecdh.PrivateKey, error) {
	if d.eph.is(priv) {
		return d.eph.k, nil
	}
	if p := lastStatic.Load(); p.is(priv) {
		return p.k, nil
	}
	k, err := ecdh.X25519().NewPrivateKey(priv)
	if err != nil {
		return nil, err
	}
	lastStatic.Store(&parsedKey{raw: k.Bytes(), k: k})
	return k, nil
}

// NewPrivate reads a private key from rng (crypto/rand if nil): exactly
// KeyLen bytes, as noise.DH25519 does.
func NewPrivate(rng io.Reader) (*ecdh.PrivateKey, error) {
	if rng == nil {
		rng = rand.Reader
	}
	var b [KeyLen]byte
	if _, err := io.ReadFull(rng, b[:]); err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	k, err := ecdh.X25519().NewPrivateKey(b[:])
	clear(b[:])
	return k, err
}
