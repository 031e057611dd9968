package prekey

import (
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/mlkem"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/chatmesh/chatmesh/crypto/internal/wire"
	"io"

	"github.com/chatmesh/chatmesh/crypto/identity"
)

// Sizes of the encoded items.
const (
	SignedPrekeySize  = 4 + 32 + ed25519.SignatureSize
	KEMPrekeySize     = 4 + mlkem.EncapsulationKeySize768 + ed25519.SignatureSize
	OneTimePrekeySize = 4 + 32

	// MaxOneTimePerUpload bounds the one-time prekeys in one Upload.
	MaxOneTimePerUpload = 200

	encodingVersion = 1
)

// Signature labels (domain separation).
const (
	signedPrekeyLabel = "chatmesh-signed-prekey-v1"
	kemPrekeyLabel    = "chatmesh-kem-prekey-v1"
)

// Errors.
var (
	ErrMalformed    = errors.New("prekey: malformed encoding")
	ErrVersion      = errors.New("prekey: unsupported encoding version")
	ErrBadSignature = errors.New("prekey: bad signature")
	ErrMissingKEM   = errors.New("prekey: bundle has no ML-KEM prekey")
	ErrTooMany      = errors.New("prekey: too many one-time prekeys")
)

// SignedPrekey is a medium-term X25519 prekey signed by the device's Ed25519
// identity key over "chatmesh-signed-prekey-v1" || id(4, big endian) || key.
type SignedPrekey struct {
	ID        uint32
	Public    [32]byte
	Signature [ed25519.SignatureSize]byte
}

// KEMPrekey is an ML-KEM-768 encapsulation key signed by the device's
// identity over "chatmesh-kem-prekey-v1" || id(4) || key.
type KEMPrekey struct {
	ID        uint32
	Public    []byte // mlkem.EncapsulationKeySize768 bytes
	Signature [ed25519.SignatureSize]byte
}

// OneTimePrekey is an unsigned X25519 key, handed out at most once by the
// region. (It is unsigned as in Signal: a server that substitutes one can at
// worst deny the session the one-time DH, never impersonate the device.)
type OneTimePrekey struct {
	ID     uint32
	Public [32]byte
}

func signedMessage(label string, id uint32, key []byte) []byte {
	m := make([]byte, 0, len(label)+4+len(key))
	m = append(m, label...)
	m = binary.BigEndian.AppendUint32(m, id)
	return append(m, key...)
}

// Verify checks the signature by owner and that the key is a valid X25519 point encoding.
func (s SignedPrekey) Verify(owner identity.Public) error {
	if !owner.VerifySignature(signedMessage(signedPrekeyLabel, s.ID, s.Public[:]), s.Signature[:]) {
		return fmt.Errorf("%w: signed prekey %d", ErrBadSignature, s.ID)
	}
	return nil
}

// Verify checks the signature by owner and that the key parses as ML-KEM-768.
func (k KEMPrekey) Verify(owner identity.Public) error {
	if _, err := mlkem.NewEncapsulationKey768(k.Public); err != nil {
		return fmt.Errorf("%w: kem prekey %d: %v", ErrMalformed, k.ID, err)
	}
	if !owner.VerifySignature(signedMessage(kemPrekeyLabel, k.ID, k.Public), k.Signature[:]) {
		return fmt.Errorf("%w: kem prekey %d", ErrBadSignature, k.ID)
	}
	return nil
}

// EncapsulationKey parses the ML-KEM key.
func (k KEMPrekey) EncapsulationKey() (*mlkem.EncapsulationKey768, error) {
	ek, err := mlkem.NewEncapsulationKey768(k.Public)
	if err != nil {
		return nil, fmt.Errorf("%w: kem prekey %d: %v", ErrMalformed, k.ID, err)
	}
	return ek, nil
}

// SignedPrekeyPair is the device-side signed prekey with its private key.
type SignedPrekeyPair struct {
	SignedPrekey
	Private *ecdh.PrivateKey
}

// KEMPrekeyPair is the device-side ML-KEM prekey with its decapsulation key.
type KEMPrekeyPair struct {
	KEMPrekey
	Private *mlkem.DecapsulationKey768
}

// OneTimePrekeyPair is the device-side one-time prekey with its private key.
type OneTimePrekeyPair struct {
	OneTimePrekey
	Private *ecdh.PrivateKey
}

func x25519Key(rnd io.Reader) (*ecdh.PrivateKey, error) {
	if rnd == nil {
		rnd = rand.Reader
	}
	var s [32]byte
	if _, err := io.ReadFull(rnd, s[:]); err != nil {
		return nil, fmt.Errorf("prekey: reading randomness: %w", err)
	}
	return ecdh.X25519().NewPrivateKey(s[:])
}

// NewSignedPrekey makes a signed prekey with the given id. rnd nil means crypto/rand.
func NewSignedPrekey(owner *identity.Private, id uint32, rnd io.Reader) (*SignedPrekeyPair, error) {
	priv, err := x25519Key(rnd)
	if err != nil {
		return nil, err
	}
	p := &SignedPrekeyPair{Private: priv}
	p.ID = id
	copy(p.Public[:], priv.PublicKey().Bytes())
	copy(p.Signature[:], owner.Sign(signedMessage(signedPrekeyLabel, id, p.Public[:])))
	return p, nil
}

// NewKEMPrekey makes a signed ML-KEM-768 prekey (randomness from crypto/rand).
func NewKEMPrekey(owner *identity.Private, id uint32) (*KEMPrekeyPair, error) {
	dk, err := mlkem.GenerateKey768()
	if err != nil {
		return nil, fmt.Errorf("prekey: ml-kem key: %w", err)
	}
	return kemPair(owner, id, dk), nil
}

// NewKEMPrekeyFromSeed makes the signed ML-KEM-768 prekey whose
// decapsulation key is derived from the 64-byte FIPS 203 seed (d || z),
// the form KEMPrekeyPair.MarshalBinary stores. NewKEMPrekey is this with a
// random seed; known-answer tests (crypto/vectors) use a fixed one.
func NewKEMPrekeyFromSeed(owner *identity.Private, id uint32, seed []byte) (*KEMPrekeyPair, error) {
	dk, err := mlkem.NewDecapsulationKey768(seed)
	if err != nil {
		return nil, fmt.Errorf("%w: ml-kem seed: %v", ErrMalformed, err)
	}
	return kemPair(owner, id, dk), nil
}

func kemPair(owner *identity.Private, id uint32, dk *mlkem.DecapsulationKey768) *KEMPrekeyPair {
	p := &KEMPrekeyPair{Private: dk}
	p.ID = id
	p.Public = dk.EncapsulationKey().Bytes()
	copy(p.Signature[:], owner.Sign(signedMessage(kemPrekeyLabel, id, p.Public)))
	return p
}

// NewOneTimePrekeys makes n one-time prekeys with ids firstID, firstID+1, ...
func NewOneTimePrekeys(firstID uint32, n int, rnd io.Reader) ([]OneTimePrekeyPair, error) {
	out := make([]OneTimePrekeyPair, 0, n)
	for i := range n {
		priv, err := x25519Key(rnd)
		if err != nil {
			return nil, err
		}
		p := OneTimePrekeyPair{Private: priv}
		p.ID = firstID + uint32(i)
		copy(p.Public[:], priv.PublicKey().Bytes())
		out = append(out, p)
	}
	return out, nil
}

// ---- encodings ----

// AppendBinary appends the SignedPrekeySize-byte encoding.
func (s SignedPrekey) AppendBinary(b []byte) ([]byte, error) {
	b = binary.BigEndian.AppendUint32(b, s.ID)
	b = append(b, s.Public[:]...)
	return append(b, s.Signature[:]...), nil
}

// AppendBinary appends the KEMPrekeySize-byte encoding.
func (k KEMPrekey) AppendBinary(b []byte) ([]byte, error) {
	if len(k.Public) != mlkem.EncapsulationKeySize768 {
		return b, fmt.Errorf("%w: kem key is %d bytes", ErrMalformed, len(k.Public))
	}
	b = binary.BigEndian.AppendUint32(b, k.ID)
	b = append(b, k.Public...)
	return append(b, k.Signature[:]...), nil
}

// AppendBinary appends the OneTimePrekeySize-byte encoding.
func (o OneTimePrekey) AppendBinary(b []byte) ([]byte, error) {
	b = binary.BigEndian.AppendUint32(b, o.ID)
	return append(b, o.Public[:]...), nil
}

func (r *reader) signedPrekey() (s SignedPrekey) {
	s.ID = r.U32()
	copy(s.Public[:], r.Take(32))
	copy(s.Signature[:], r.Take(ed25519.SignatureSize))
	return s
}

func (r *reader) kemPrekey() (k KEMPrekey) {
	k.ID = r.U32()
	if pub := r.Take(mlkem.EncapsulationKeySize768); pub != nil {
		k.Public = append([]byte(nil), pub...)
	}
	copy(k.Signature[:], r.Take(ed25519.SignatureSize))
	return k
}

func (r *reader) oneTime() (o OneTimePrekey) {
	o.ID = r.U32()
	copy(o.Public[:], r.Take(32))
	return o
}

// MarshalBinary encodes the pair (public part then private key) for the
// device's own store. The result is secret.
func (p *SignedPrekeyPair) MarshalBinary() ([]byte, error) {
	b, _ := p.SignedPrekey.AppendBinary([]byte{encodingVersion})
	return append(b, p.Private.Bytes()...), nil
}

// ParseSignedPrekeyPair decodes SignedPrekeyPair.MarshalBinary output.
func ParseSignedPrekeyPair(data []byte) (*SignedPrekeyPair, error) {
	r := newReader(data)
	if err := r.version(); err != nil {
		return nil, err
	}
	p := &SignedPrekeyPair{SignedPrekey: r.signedPrekey()}
	priv := r.Take(32)
	if err := r.end(); err != nil {
		return nil, err
	}
	var err error
	if p.Private, err = ecdh.X25519().NewPrivateKey(priv); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if pub := p.Private.PublicKey().Bytes(); string(pub) != string(p.Public[:]) {
		return nil, fmt.Errorf("%w: private key does not match public key", ErrMalformed)
	}
	return p, nil
}

// MarshalBinary encodes the pair (public part then the 64-byte ML-KEM seed).
// The result is secret.
func (p *KEMPrekeyPair) MarshalBinary() ([]byte, error) {
	b, err := p.KEMPrekey.AppendBinary([]byte{encodingVersion})
	if err != nil {
		return nil, err
	}
	return append(b, p.Private.Bytes()...), nil
}

// ParseKEMPrekeyPair decodes KEMPrekeyPair.MarshalBinary output.
func ParseKEMPrekeyPair(data []byte) (*KEMPrekeyPair, error) {
	r := newReader(data)
	if err := r.version(); err != nil {
		return nil, err
	}
	p := &KEMPrekeyPair{KEMPrekey: r.kemPrekey()}
	seed := r.Take(mlkem.SeedSize)
	if err := r.end(); err != nil {
		return nil, err
	}
	var err error
	if p.Private, err = mlkem.NewDecapsulationKey768(seed); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if string(p.Private.EncapsulationKey().Bytes()) != string(p.Public) {
		return nil, fmt.Errorf("%w: decapsulation key does not match public key", ErrMalformed)
	}
	return p, nil
}

// MarshalBinary encodes the pair. The result is secret.
func (p *OneTimePrekeyPair) MarshalBinary() ([]byte, error) {
	b, _ := p.OneTimePrekey.AppendBinary([]byte{encodingVersion})
	return append(b, p.Private.Bytes()...), nil
}

// ParseOneTimePrekeyPair decodes OneTimePrekeyPair.MarshalBinary output.
func ParseOneTimePrekeyPair(data []byte) (*OneTimePrekeyPair, error) {
	r := newReader(data)
	if err := r.version(); err != nil {
		return nil, err
	}
	p := &OneTimePrekeyPair{OneTimePrekey: r.oneTime()}
	priv := r.Take(32)
	if err := r.end(); err != nil {
		return nil, err
	}
	var err error
	if p.Private, err = ecdh.X25519().NewPrivateKey(priv); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if string(p.Private.PublicKey().Bytes()) != string(p.Public[:]) {
		return nil, fmt.Errorf("%w: private key does not match public key", ErrMalformed)
	}
	return p, nil
}

// reader is the shared bounds-checked cursor (crypto/internal/wire).
type reader struct{ wire.Reader }

func newReader(b []byte) *reader { return &reader{wire.Reader{B: b, Malformed: ErrMalformed}} }

func (r *reader) version() error {
	v := r.Byte()
	if r.Err != nil {
		return r.Err
	}
	if v != encodingVersion {
		return fmt.Errorf("%w: %d", ErrVersion, v)
	}
	return nil
}

func (r *reader) end() error {
	if r.Err != nil {
		return r.Err
	}
	if len(r.B) != 0 {
		return fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(r.B))
	}
	return nil
}
