package senderkey

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"golang.org/x/crypto/chacha20poly1305"
)

// Defaults for Config's zero values.
const (
	// DefaultMaxSkip is how far ahead of the receiver's chain a message may be.
	DefaultMaxSkip = 2000
	// DefaultMaxSkipped caps stored keys of skipped (not yet arrived) messages.
	DefaultMaxSkipped = 2000

	headerSize = 1 + 4 + 4
	// Overhead is what a message adds to its plaintext.
	Overhead = headerSize + chacha20poly1305.Overhead + ed25519.SignatureSize
	// DistributionSize is the length of an encoded Distribution.
	DistributionSize = 1 + 4 + 4 + 32 + ed25519.PublicKeySize

	version  = 1
	sigLabel = "chatmesh-senderkey-v1"
	msgInfo  = "chatmesh-senderkey-msg-v1"
)

// Errors. A failed Decrypt never changes the receiver.
var (
	ErrMalformed      = errors.New("senderkey: malformed")
	ErrVersion        = errors.New("senderkey: unsupported version")
	ErrBadSignature   = errors.New("senderkey: bad signature")
	ErrDecrypt        = errors.New("senderkey: message failed authentication")
	ErrUnknownKey     = errors.New("senderkey: message is for another sender key (rotated?)")
	ErrDuplicate      = errors.New("senderkey: message already decrypted or its key expired")
	ErrTooFarAhead    = errors.New("senderkey: message too far ahead of the chain")
	ErrChainExhausted = errors.New("senderkey: chain exhausted, rotate")
)

// Config tunes a Receiver. The zero value uses the defaults.
type Config struct {
	MaxSkip    int
	MaxSkipped int
}

func (c Config) maxSkip() uint32 {
	if c.MaxSkip <= 0 {
		return DefaultMaxSkip
	}
	return uint32(c.MaxSkip)
}

func (c Config) maxSkipped() int {
	if c.MaxSkipped <= 0 {
		return DefaultMaxSkipped
	}
	return c.MaxSkipped
}

func kdfCK(ck [32]byte) (next, mk [32]byte) {
	m := hmac.New(sha256.New, ck[:])
	m.Write([]byte{1})
	m.Sum(mk[:0])
	m.Reset()
	m.Write([]byte{2})
	m.Sum(next[:0])
	return next, mk
}

func seal(mk [32]byte, dst, plaintext, ad []byte) []byte {
	key, nonce := derive(mk)
	aead, _ := chacha20poly1305.New(key)
	return aead.Seal(dst, nonce, plaintext, ad)
}

func open(mk [32]byte, ciphertext, ad []byte) ([]byte, error) {
	key, nonce := derive(mk)
	aead, _ := chacha20poly1305.New(key)
	return aead.Open(nil, nonce, ciphertext, ad)
}

func derive(mk [32]byte) (key, nonce []byte) {
	out, err := hkdf.Key(sha256.New, mk[:], make([]byte, 32), msgInfo, chacha20poly1305.KeySize+chacha20poly1305.NonceSize)
	if err != nil {
		panic("senderkey: hkdf: " + err.Error())
	}
	return out[:chacha20poly1305.KeySize], out[chacha20poly1305.KeySize:]
}

// assoc is the AEAD associated data: caller ad (group id, sender address) || header.
func assoc(ad, header []byte) []byte {
	out := make([]byte, 0, len(ad)+len(header))
	return append(append(out, ad...), header...)
}

// signed is what the signature covers: label || len(ad)(4) || ad || message without signature.
func signed(ad, body []byte) []byte {
	out := make([]byte, 0, len(sigLabel)+4+len(ad)+len(body))
	out = append(out, sigLabel...)
	out = binary.BigEndian.AppendUint32(out, uint32(len(ad)))
	out = append(out, ad...)
	return append(out, body...)
}

// Distribution is what a sender sends to every member device over the
// pairwise (ratchet) sessions: its key id, the chain key at Iteration and
// its public signing key. It is secret (it lets the holder read the group
// messages from Iteration on).
type Distribution struct {
	KeyID      uint32
	Iteration  uint32
	ChainKey   [32]byte
	SigningKey ed25519.PublicKey
}

// MarshalBinary encodes: version(1) || key id(4) || iteration(4) || chain key(32) || signing key(32).
func (d *Distribution) MarshalBinary() ([]byte, error) {
	if len(d.SigningKey) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: signing key", ErrMalformed)
	}
	b := make([]byte, 0, DistributionSize)
	b = append(b, version)
	b = binary.BigEndian.AppendUint32(b, d.KeyID)
	b = binary.BigEndian.AppendUint32(b, d.Iteration)
	b = append(b, d.ChainKey[:]...)
	return append(b, d.SigningKey...), nil
}

// ParseDistribution decodes a Distribution.
func ParseDistribution(b []byte) (*Distribution, error) {
	if len(b) != DistributionSize {
		return nil, fmt.Errorf("%w: distribution is %d bytes, want %d", ErrMalformed, len(b), DistributionSize)
	}
	if b[0] != version {
		return nil, fmt.Errorf("%w: %d", ErrVersion, b[0])
	}
	d := &Distribution{
		KeyID:      binary.BigEndian.Uint32(b[1:5]),
		Iteration:  binary.BigEndian.Uint32(b[5:9]),
		SigningKey: append(ed25519.PublicKey(nil), b[41:]...),
	}
	copy(d.ChainKey[:], b[9:41])
	return d, nil
}

// Sender is one device's sending state for one group. Not safe for
// concurrent use. Rotation = make a new Sender and distribute it.
type Sender struct {
	keyID     uint32
	iteration uint32
	chain     [32]byte
	sign      ed25519.PrivateKey
}

// NewSender makes a fresh sender key (random key id, chain key and signing
// key). rnd nil means crypto/rand.
func NewSender(rnd io.Reader) (*Sender, error) {
	if rnd == nil {
		rnd = rand.Reader
	}
	var buf [4 + 32 + ed25519.SeedSize]byte
	if _, err := io.ReadFull(rnd, buf[:]); err != nil {
		return nil, fmt.Errorf("senderkey: reading randomness: %w", err)
	}
	s := &Sender{keyID: binary.BigEndian.Uint32(buf[:4]), sign: ed25519.NewKeyFromSeed(buf[36:])}
	copy(s.chain[:], buf[4:36])
	return s, nil
}

// KeyID returns the sender key's id.
func (s *Sender) KeyID() uint32 { return s.keyID }

// Distribution returns the distribution message for the current position
// of the chain: a member that receives it can read messages from now on,
// not earlier ones.
func (s *Sender) Distribution() *Distribution {
	return &Distribution{KeyID: s.keyID, Iteration: s.iteration, ChainKey: s.chain,
		SigningKey: s.sign.Public().(ed25519.PublicKey)}
}

// Encrypt encrypts plaintext once for the whole group and signs it. ad binds
// the message to its context (group id, sender address); receivers pass the
// same ad.
func (s *Sender) Encrypt(plaintext, ad []byte) ([]byte, error) {
	if s.iteration == ^uint32(0) {
		return nil, ErrChainExhausted
	}
	next, mk := kdfCK(s.chain)
	out := make([]byte, headerSize, headerSize+len(plaintext)+chacha20poly1305.Overhead+ed25519.SignatureSize)
	out[0] = version
	binary.BigEndian.PutUint32(out[1:5], s.keyID)
	binary.BigEndian.PutUint32(out[5:9], s.iteration)
	out = seal(mk, out, plaintext, assoc(ad, out[:headerSize]))
	clear(mk[:])
	s.chain = next
	s.iteration++
	return append(out, ed25519.Sign(s.sign, signed(ad, out))...), nil
}

// MarshalBinary encodes the sender (secret): version || key id || iteration || chain || signing seed.
func (s *Sender) MarshalBinary() ([]byte, error) {
	b := []byte{version}
	b = binary.BigEndian.AppendUint32(b, s.keyID)
	b = binary.BigEndian.AppendUint32(b, s.iteration)
	b = append(b, s.chain[:]...)
	return append(b, s.sign.Seed()...), nil
}

// ParseSender decodes Sender.MarshalBinary output.
func ParseSender(b []byte) (*Sender, error) {
	if len(b) != 1+4+4+32+ed25519.SeedSize {
		return nil, fmt.Errorf("%w: sender state is %d bytes", ErrMalformed, len(b))
	}
	if b[0] != version {
		return nil, fmt.Errorf("%w: %d", ErrVersion, b[0])
	}
	s := &Sender{keyID: binary.BigEndian.Uint32(b[1:5]), iteration: binary.BigEndian.Uint32(b[5:9]),
		sign: ed25519.NewKeyFromSeed(b[41:])}
	copy(s.chain[:], b[9:41])
	return s, nil
}

// ParseHeader returns the key id and iteration of a group message.
func ParseHeader(msg []byte) (keyID, iteration uint32, err error) {
	if len(msg) < Overhead {
		return 0, 0, fmt.Errorf("%w: message is %d bytes", ErrMalformed, len(msg))
	}
	if msg[0] != version {
		return 0, 0, fmt.Errorf("%w: %d", ErrVersion, msg[0])
	}
	return binary.BigEndian.Uint32(msg[1:5]), binary.BigEndian.Uint32(msg[5:9]), nil
}

// Receiver is one member device's state for one (group, sender device,
// sender key). Not safe for concurrent use.
type Receiver struct {
	cfg       Config
	keyID     uint32
	iteration uint32 // next expected iteration
	chain     [32]byte
	signPub   ed25519.PublicKey
	skipped   map[uint32][32]byte
	order     []uint32
}

// NewReceiver makes a receiver from a distribution message.
func NewReceiver(d *Distribution, cfg Config) (*Receiver, error) {
	if len(d.SigningKey) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: signing key", ErrMalformed)
	}
	return &Receiver{cfg: cfg, keyID: d.KeyID, iteration: d.Iteration, chain: d.ChainKey,
		signPub: append(ed25519.PublicKey(nil), d.SigningKey...), skipped: map[uint32][32]byte{}}, nil
}

// KeyID returns the sender key id this receiver decrypts.
func (r *Receiver) KeyID() uint32 { return r.keyID }

// Decrypt verifies the signature, then decrypts. Messages may arrive out of
// order within MaxSkip; each message key is deleted after use, so a replay
// fails with ErrDuplicate. On error the receiver is unchanged.
func (r *Receiver) Decrypt(msg, ad []byte) ([]byte, error) {
	keyID, it, err := ParseHeader(msg)
	if err != nil {
		return nil, err
	}
	if keyID != r.keyID {
		return nil, fmt.Errorf("%w: key %d, have %d", ErrUnknownKey, keyID, r.keyID)
	}
	body, sig := msg[:len(msg)-ed25519.SignatureSize], msg[len(msg)-ed25519.SignatureSize:]
	if !ed25519.Verify(r.signPub, signed(ad, body), sig) {
		return nil, ErrBadSignature
	}
	a := assoc(ad, body[:headerSize])
	ct := body[headerSize:]
	if it < r.iteration {
		mk, ok := r.skipped[it]
		if !ok {
			return nil, ErrDuplicate
		}
		pt, err := open(mk, ct, a)
		if err != nil {
			return nil, ErrDecrypt
		}
		r.deleteSkipped(it)
		return pt, nil
	}
	if it-r.iteration > r.cfg.maxSkip() {
		return nil, fmt.Errorf("%w: %d ahead", ErrTooFarAhead, it-r.iteration)
	}
	chain, n := r.chain, r.iteration
	var pending [][32]byte
	var mk [32]byte
	for ; n < it; n++ {
		chain, mk = kdfCK(chain)
		pending = append(pending, mk)
	}
	chain, mk = kdfCK(chain)
	pt, err := open(mk, ct, a)
	clear(mk[:])
	if err != nil {
		return nil, ErrDecrypt
	}
	for i, k := range pending {
		r.addSkipped(r.iteration+uint32(i), k)
	}
	r.chain, r.iteration = chain, it+1
	return pt, nil
}

func (r *Receiver) addSkipped(it uint32, mk [32]byte) {
	r.skipped[it] = mk
	r.order = append(r.order, it)
	for len(r.skipped) > r.cfg.maxSkipped() {
		delete(r.skipped, r.order[0])
		r.order = r.order[1:]
	}
}

func (r *Receiver) deleteSkipped(it uint32) {
	delete(r.skipped, it)
	for i, o := range r.order {
		if o == it {
			r.order = append(r.order[:i], r.order[i+1:]...)
			break
		}
	}
}

// MarshalBinary encodes the receiver (secret):
// version || key id || iteration || chain || signing key || count(4) || count × (iteration(4) || key(32)).
func (r *Receiver) MarshalBinary() ([]byte, error) {
	b := []byte{version}
	b = binary.BigEndian.AppendUint32(b, r.keyID)
	b = binary.BigEndian.AppendUint32(b, r.iteration)
	b = append(b, r.chain[:]...)
	b = append(b, r.signPub...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(r.order)))
	for _, it := range r.order {
		mk := r.skipped[it]
		b = binary.BigEndian.AppendUint32(b, it)
		b = append(b, mk[:]...)
	}
	return b, nil
}

// ParseReceiver decodes Receiver.MarshalBinary output.
func ParseReceiver(b []byte, cfg Config) (*Receiver, error) {
	const fixed = 1 + 4 + 4 + 32 + 32 + 4
	if len(b) < fixed {
		return nil, fmt.Errorf("%w: receiver state truncated", ErrMalformed)
	}
	if b[0] != version {
		return nil, fmt.Errorf("%w: %d", ErrVersion, b[0])
	}
	r := &Receiver{cfg: cfg, keyID: binary.BigEndian.Uint32(b[1:5]), iteration: binary.BigEndian.Uint32(b[5:9]),
		signPub: append(ed25519.PublicKey(nil), b[41:73]...), skipped: map[uint32][32]byte{}}
	copy(r.chain[:], b[9:41])
	n := binary.BigEndian.Uint32(b[73:77])
	rest := b[fixed:]
	if n > 1<<16 || uint64(len(rest)) != uint64(n)*36 {
		return nil, fmt.Errorf("%w: skipped keys", ErrMalformed)
	}
	for i := uint32(0); i < n; i++ {
		e := rest[i*36:]
		it := binary.BigEndian.Uint32(e[:4])
		if _, dup := r.skipped[it]; dup || it >= r.iteration {
			return nil, fmt.Errorf("%w: skipped key %d", ErrMalformed, it)
		}
		r.addSkipped(it, [32]byte(e[4:36]))
	}
	return r, nil
}
