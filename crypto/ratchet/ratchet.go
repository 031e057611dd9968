package ratchet

import (
	"crypto/cipher"
	"crypto/ecdh"
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
	// DefaultMaxSkip is the most message keys one message may make the
	// receiver skip in one chain (the spec's MAX_SKIP).
	DefaultMaxSkip = 1000
	// DefaultMaxSkippedTotal caps the stored skipped keys over all chains;
	// the oldest are evicted first.
	DefaultMaxSkippedTotal = 2000

	// HeaderSize is the length of a message header:
	// version(1) || ratchet public key(32) || PN(4) || N(4).
	HeaderSize = 1 + 32 + 4 + 4
	// Overhead is the number of bytes a message adds to its plaintext.
	Overhead = HeaderSize + chacha20poly1305.Overhead

	// MaxAssociatedData bounds the session associated data.
	MaxAssociatedData = 1024
	// hardMaxSkipped bounds what Unmarshal accepts.
	hardMaxSkipped = 1 << 16

	messageVersion = 1
	stateVersion   = 1
)

const (
	rkInfo  = "chatmesh-ratchet-rk-v1"
	msgInfo = "chatmesh-ratchet-msg-v1"
)

// Errors. Every Decrypt failure leaves the session unchanged.
var (
	ErrMalformed = errors.New("ratchet: malformed message")
	ErrVersion   = errors.New("ratchet: unsupported version")
	// ErrDecrypt: authentication failed (tampered, injected, or for
	// another session).
	ErrDecrypt = errors.New("ratchet: message failed authentication")
	// ErrDuplicate: the message key was already used and deleted (a replay
	// or a re-delivery of a message already decrypted).
	ErrDuplicate = errors.New("ratchet: message already decrypted or its key expired")
	// ErrTooManySkipped: the header asks to skip more than MaxSkip keys.
	ErrTooManySkipped = errors.New("ratchet: too many skipped messages")
	// ErrNotReady: a responder cannot send before it has received.
	ErrNotReady     = errors.New("ratchet: no sending chain yet")
	ErrBadState     = errors.New("ratchet: malformed session state")
	ErrBadParameter = errors.New("ratchet: bad parameter")
)

// Config tunes a session. The zero value uses the defaults above and
// crypto/rand.
type Config struct {
	MaxSkip         int       // 0 means DefaultMaxSkip
	MaxSkippedTotal int       // 0 means DefaultMaxSkippedTotal
	Rand            io.Reader // source of ratchet key pairs; nil means crypto/rand
}

func (c Config) maxSkip() uint32 {
	if c.MaxSkip <= 0 {
		return DefaultMaxSkip
	}
	return uint32(c.MaxSkip)
}

func (c Config) maxTotal() int {
	if c.MaxSkippedTotal <= 0 {
		return DefaultMaxSkippedTotal
	}
	return c.MaxSkippedTotal
}

func (c Config) rand() io.Reader {
	if c.Rand == nil {
		return rand.Reader
	}
	return c.Rand
}

type chainKey = [32]byte

type skipKey struct {
	dh [32]byte
	n  uint32
}

// core is the part of the state a Decrypt may change before it knows the
// message is authentic; it is copied, advanced and committed on success.
type core struct {
	dhs      *ecdh.PrivateKey
	dhr      [32]byte
	hasDHr   bool
	rk       [32]byte
	cks, ckr chainKey
	hasCKs   bool
	hasCKr   bool
	ns, nr   uint32
	pn       uint32
}

// Session is one side of a Double Ratchet session. It is not safe for
// concurrent use: the owner serialises Encrypt, Decrypt and MarshalBinary.
type Session struct {
	cfg     Config
	ad      []byte // session associated data (from the handshake)
	st      core
	skipped map[skipKey][32]byte
	order   []skipKey // insertion order of skipped, for eviction
}

func newSession(cfg Config, ad []byte) (*Session, error) {
	if len(ad) > MaxAssociatedData {
		return nil, fmt.Errorf("%w: associated data %d bytes", ErrBadParameter, len(ad))
	}
	return &Session{cfg: cfg, ad: append([]byte(nil), ad...), skipped: map[skipKey][32]byte{}}, nil
}

func genKey(r io.Reader) (*ecdh.PrivateKey, error) {
	var b [32]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return nil, fmt.Errorf("ratchet: reading randomness: %w", err)
	}
	return ecdh.X25519().NewPrivateKey(b[:])
}

// NewInitiator starts the session of the party that sends first (Alice):
// sk is the shared secret from the handshake, ad the session associated data
// both sides agree on, peerRatchetKey the responder's initial ratchet public
// key (its signed prekey).
func NewInitiator(sk [32]byte, ad []byte, peerRatchetKey []byte, cfg Config) (*Session, error) {
	s, err := newSession(cfg, ad)
	if err != nil {
		return nil, err
	}
	peer, err := ecdh.X25519().NewPublicKey(peerRatchetKey)
	if err != nil {
		return nil, fmt.Errorf("%w: peer ratchet key: %v", ErrBadParameter, err)
	}
	if s.st.dhs, err = genKey(cfg.rand()); err != nil {
		return nil, err
	}
	dh, err := s.st.dhs.ECDH(peer)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadParameter, err)
	}
	copy(s.st.dhr[:], peerRatchetKey)
	s.st.hasDHr = true
	s.st.rk, s.st.cks = kdfRK(sk, dh)
	s.st.hasCKs = true
	return s, nil
}

// NewResponder starts the session of the party that receives first (Bob):
// own is its initial ratchet key pair (the signed prekey the initiator used).
// The responder can Encrypt only after its first successful Decrypt.
func NewResponder(sk [32]byte, ad []byte, own *ecdh.PrivateKey, cfg Config) (*Session, error) {
	s, err := newSession(cfg, ad)
	if err != nil {
		return nil, err
	}
	if own == nil || own.Curve() != ecdh.X25519() {
		return nil, fmt.Errorf("%w: responder ratchet key must be X25519", ErrBadParameter)
	}
	s.st.dhs = own
	s.st.rk = sk
	return s, nil
}

// kdfRK is KDF_RK: HKDF-SHA256 with the root key as salt and the DH output
// as input key material; 64 bytes split into a new root key and chain key.
func kdfRK(rk [32]byte, dh []byte) (newRK, ck [32]byte) {
	out, err := hkdf.Key(sha256.New, dh, rk[:], rkInfo, 64)
	if err != nil {
		panic("ratchet: hkdf: " + err.Error()) // cannot happen for 64 bytes
	}
	copy(newRK[:], out[:32])
	copy(ck[:], out[32:])
	return newRK, ck
}

// kdfCK is KDF_CK: HMAC-SHA256 keyed by the chain key, constant 0x01 for the
// message key and 0x02 for the next chain key.
func kdfCK(ck chainKey) (next chainKey, mk [32]byte) {
	m := hmac.New(sha256.New, ck[:])
	m.Write([]byte{1})
	m.Sum(mk[:0])
	m.Reset()
	m.Write([]byte{2})
	m.Sum(next[:0])
	return next, mk
}

// messageAEAD derives the ChaCha20-Poly1305 key and nonce from a message key
// (each message key encrypts exactly one message, so a derived nonce is safe).
func messageAEAD(mk [32]byte) (cipher.AEAD, []byte) {
	out, err := hkdf.Key(sha256.New, mk[:], make([]byte, 32), msgInfo, chacha20poly1305.KeySize+chacha20poly1305.NonceSize)
	if err != nil {
		panic("ratchet: hkdf: " + err.Error())
	}
	aead, err := chacha20poly1305.New(out[:chacha20poly1305.KeySize])
	if err != nil {
		panic("ratchet: aead: " + err.Error())
	}
	return aead, out[chacha20poly1305.KeySize:]
}

func (s *Session) assocData(header, ad []byte) []byte {
	out := make([]byte, 0, len(s.ad)+len(header)+len(ad))
	out = append(out, s.ad...)
	out = append(out, header...)
	return append(out, ad...)
}

// Header is the cleartext header of a ratchet message.
type Header struct {
	DH [32]byte // sender's current ratchet public key
	PN uint32   // length of the sender's previous sending chain
	N  uint32   // message number in the current sending chain
}

// ParseHeader decodes the header of a message (for diagnostics and routing;
// Decrypt does this itself).
func ParseHeader(msg []byte) (Header, error) {
	var h Header
	if len(msg) < HeaderSize+chacha20poly1305.Overhead {
		return h, fmt.Errorf("%w: %d bytes", ErrMalformed, len(msg))
	}
	if msg[0] != messageVersion {
		return h, fmt.Errorf("%w: message version %d", ErrVersion, msg[0])
	}
	copy(h.DH[:], msg[1:33])
	h.PN = binary.BigEndian.Uint32(msg[33:37])
	h.N = binary.BigEndian.Uint32(msg[37:41])
	return h, nil
}

// Encrypt encrypts plaintext; ad is per-message associated data the receiver
// must pass to Decrypt unchanged (for example the conversation id). The
// message key is deleted before Encrypt returns.
func (s *Session) Encrypt(plaintext, ad []byte) ([]byte, error) {
	if !s.st.hasCKs {
		return nil, ErrNotReady
	}
	if s.st.ns == ^uint32(0) {
		return nil, fmt.Errorf("%w: sending chain exhausted", ErrBadParameter)
	}
	var mk [32]byte
	s.st.cks, mk = kdfCK(s.st.cks)
	out := make([]byte, HeaderSize, HeaderSize+len(plaintext)+chacha20poly1305.Overhead)
	out[0] = messageVersion
	copy(out[1:33], s.st.dhs.PublicKey().Bytes())
	binary.BigEndian.PutUint32(out[33:37], s.st.pn)
	binary.BigEndian.PutUint32(out[37:41], s.st.ns)
	s.st.ns++
	aead, nonce := messageAEAD(mk)
	clear(mk[:])
	return aead.Seal(out, nonce, plaintext, s.assocData(out[:HeaderSize], ad)), nil
}

type pendingSkip struct {
	k  skipKey
	mk [32]byte
}

// Decrypt authenticates and decrypts msg. On any error the session is
// exactly as before the call (work happens on a copy and is committed only
// after the AEAD check passes), so a replayed, tampered or injected message
// cannot break the session.
func (s *Session) Decrypt(msg, ad []byte) ([]byte, error) {
	h, err := ParseHeader(msg)
	if err != nil {
		return nil, err
	}
	header, body := msg[:HeaderSize], msg[HeaderSize:]
	assoc := s.assocData(header, ad)

	// A skipped key: decrypt, then delete it.
	sk := skipKey{dh: h.DH, n: h.N}
	if mk, ok := s.skipped[sk]; ok {
		aead, nonce := messageAEAD(mk)
		pt, err := aead.Open(nil, nonce, body, assoc)
		if err != nil {
			return nil, ErrDecrypt
		}
		s.deleteSkipped(sk)
		return pt, nil
	}

	st := s.st // copy; dhs is replaced, never mutated
	var pending []pendingSkip
	maxSkip := s.cfg.maxSkip()
	if !st.hasDHr || h.DH != st.dhr {
		if st.hasCKr {
			if pending, err = skip(&st, h.PN, maxSkip, pending); err != nil {
				return nil, err
			}
		}
		if err := s.dhRatchet(&st, h.DH); err != nil {
			return nil, err
		}
	} else if h.N < st.nr {
		return nil, ErrDuplicate
	}
	if pending, err = skip(&st, h.N, maxSkip, pending); err != nil {
		return nil, err
	}
	var mk [32]byte
	st.ckr, mk = kdfCK(st.ckr)
	st.nr++
	aead, nonce := messageAEAD(mk)
	clear(mk[:])
	pt, err := aead.Open(nil, nonce, body, assoc)
	if err != nil {
		return nil, ErrDecrypt
	}
	// Commit.
	s.st = st
	for _, p := range pending {
		s.addSkipped(p.k, p.mk)
	}
	return pt, nil
}

// skip derives and collects the receiving chain's keys up to (excluding) until.
func skip(st *core, until, maxSkip uint32, pending []pendingSkip) ([]pendingSkip, error) {
	if until <= st.nr {
		return pending, nil
	}
	if until-st.nr > maxSkip {
		return pending, fmt.Errorf("%w: %d > %d", ErrTooManySkipped, until-st.nr, maxSkip)
	}
	if !st.hasCKr {
		return pending, nil
	}
	for st.nr < until {
		var mk [32]byte
		st.ckr, mk = kdfCK(st.ckr)
		pending = append(pending, pendingSkip{k: skipKey{dh: st.dhr, n: st.nr}, mk: mk})
		st.nr++
	}
	return pending, nil
}

// dhRatchet performs the DH ratchet step on st for the peer's new key.
func (s *Session) dhRatchet(st *core, peerKey [32]byte) error {
	peer, err := ecdh.X25519().NewPublicKey(peerKey[:])
	if err != nil {
		return fmt.Errorf("%w: ratchet key", ErrMalformed)
	}
	st.pn = st.ns
	st.ns, st.nr = 0, 0
	st.dhr, st.hasDHr = peerKey, true
	dh, err := st.dhs.ECDH(peer)
	if err != nil {
		return ErrDecrypt // low-order point
	}
	st.rk, st.ckr = kdfRK(st.rk, dh)
	st.hasCKr = true
	if st.dhs, err = genKey(s.cfg.rand()); err != nil {
		return err
	}
	if dh, err = st.dhs.ECDH(peer); err != nil {
		return ErrDecrypt
	}
	st.rk, st.cks = kdfRK(st.rk, dh)
	st.hasCKs = true
	return nil
}

func (s *Session) addSkipped(k skipKey, mk [32]byte) {
	if _, ok := s.skipped[k]; !ok {
		s.order = append(s.order, k)
	}
	s.skipped[k] = mk
	for len(s.skipped) > s.cfg.maxTotal() {
		old := s.order[0]
		s.order = s.order[1:]
		delete(s.skipped, old)
	}
	if cap(s.order) > 4*s.cfg.maxTotal() { // keep the backing array bounded
		s.order = append([]skipKey(nil), s.order...)
	}
}

func (s *Session) deleteSkipped(k skipKey) {
	delete(s.skipped, k)
	for i, o := range s.order {
		if o == k {
			s.order = append(s.order[:i], s.order[i+1:]...)
			break
		}
	}
}

// HasReceived reports whether the session has decrypted at least one
// message from the peer. An initiator keeps sending initial messages
// (pqxdh.Outgoing.Seal) until it has.
func (s *Session) HasReceived() bool { return s.st.hasCKr }

// SkippedKeys reports how many skipped message keys the session holds.
func (s *Session) SkippedKeys() int { return len(s.skipped) }

// CanSend reports whether Encrypt will work (false for a responder before
// its first Decrypt, or once the sending chain is exhausted).
func (s *Session) CanSend() bool { return s.st.hasCKs && s.st.ns != ^uint32(0) }

// AssociatedData returns the session associated data.
func (s *Session) AssociatedData() []byte { return append([]byte(nil), s.ad...) }
