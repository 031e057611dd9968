package pqxdh

import (
	"bytes"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/mlkem"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/flynn/noise"

	"github.com/chatmesh/chatmesh/crypto/identity"
	"github.com/chatmesh/chatmesh/crypto/internal/dh25519"
	"github.com/chatmesh/chatmesh/crypto/prekey"
	"github.com/chatmesh/chatmesh/crypto/ratchet"
)

// ProtocolName is the Noise protocol the handshake runs; it is checked
// against the cacophony test vectors.
const ProtocolName = "Noise_Xpsk1_25519_ChaChaPoly_SHA256"

const (
	label   = "chatmesh-pqxdh-v1"
	pskInfo = "chatmesh-pqxdh-v1 psk"
	skInfo  = "chatmesh-pqxdh-v1 root"

	// version is the first byte of an initial message: 0x50 ('P', prekey
	// message v1), distinct from ratchet messages (which start with 0x01),
	// so a receiver can tell the two apart without another tag.
	version      = 0x50
	flagOneTime  = 1 << 0
	headerSize   = 1 + 1 + 4 + 4 + 4 + mlkem.CiphertextSize768
	payloadSize  = identity.PublicSize
	noiseMsgSize = 32 + (32 + 16) + (payloadSize + 16) // e, enc(s), enc(payload)

	// HandshakeSize is the length of the handshake part of an initial
	// message (everything before the first ratchet message).
	HandshakeSize = headerSize + noiseMsgSize
)

// Errors.
var (
	ErrMalformed = errors.New("pqxdh: malformed initial message")
	ErrVersion   = errors.New("pqxdh: unsupported version")
	// ErrIdentityMismatch: the bundle's identity is not the one the caller
	// expects (a swapped bundle), or the sender's identity payload does not
	// match the static key the handshake proved.
	ErrIdentityMismatch = errors.New("pqxdh: identity mismatch")
	// ErrHandshake: the Noise message failed authentication (wrong keys,
	// tampering, or an injected message).
	ErrHandshake = errors.New("pqxdh: handshake failed authentication")
	// ErrReplay: this initial message was already accepted once.
	ErrReplay = errors.New("pqxdh: initial message replayed")
	// ErrUnknownPrekey: the referenced prekey is not (or no longer) held.
	ErrUnknownPrekey = errors.New("pqxdh: unknown or consumed prekey")
)

// Config tunes session setup. The zero value works.
type Config struct {
	Ratchet ratchet.Config // for the resulting session
	Rand    io.Reader      // ephemeral keys; nil means crypto/rand
	// Encapsulate replaces ML-KEM-768 encapsulation for known-answer tests
	// (crypto/vectors passes crypto/mlkem/mlkemtest.Encapsulate768 with
	// fixed randomness). nil, the only value for real use, means
	// ek.Encapsulate().
	Encapsulate func(ek *mlkem.EncapsulationKey768) (sharedKey, ciphertext []byte, err error)
}

func (c Config) encapsulate(ek *mlkem.EncapsulationKey768) (sharedKey, ciphertext []byte, err error) {
	if c.Encapsulate == nil {
		sharedKey, ciphertext = ek.Encapsulate()
		return sharedKey, ciphertext, nil
	}
	return c.Encapsulate(ek)
}

func (c Config) rand() io.Reader {
	if c.Rand == nil {
		return rand.Reader
	}
	return c.Rand
}

// newSuite returns the cipher suite of one handshake: Noise_X_25519_
// ChaChaPoly_SHA256 on crypto/internal/dh25519's DH function (the same
// bytes as noise.DH25519, half its scalar multiplications).
func newSuite() noise.CipherSuite {
	return noise.NewCipherSuite(dh25519.New(), noise.CipherChaChaPoly, noise.HashSHA256)
}

// handshakeConfig is the one place the Noise configuration is built; the
// vector test drives it with the cacophony keys.
func handshakeConfig(initiator bool, prologue, psk []byte, static noise.DHKey, peerStatic []byte, ephemeral io.Reader) noise.Config {
	return noise.Config{
		CipherSuite:           newSuite(),
		Random:                ephemeral,
		Pattern:               noise.HandshakeX,
		Initiator:             initiator,
		Prologue:              prologue,
		PresharedKey:          psk,
		PresharedKeyPlacement: 1,
		StaticKeypair:         static,
		PeerStatic:            peerStatic,
	}
}

// header is the cleartext part before the Noise message.
type header struct {
	spkID, kemID, otpID uint32
	hasOTP              bool
	kemCT               []byte
}

func (h header) append(b []byte) []byte {
	var flags byte
	if h.hasOTP {
		flags |= flagOneTime
	}
	b = append(b, version, flags)
	b = binary.BigEndian.AppendUint32(b, h.spkID)
	b = binary.BigEndian.AppendUint32(b, h.kemID)
	b = binary.BigEndian.AppendUint32(b, h.otpID)
	return append(b, h.kemCT...)
}

func prologue(recipient identity.Public, hdr []byte) ([]byte, error) {
	p := append([]byte(label), 0)
	p, err := recipient.AppendBinary(p)
	if err != nil {
		return nil, err
	}
	return append(p, hdr...), nil
}

// psk combines what the Noise X pattern cannot carry itself: the
// ephemeral–identity DH, the ephemeral–one-time-prekey DH (if any) and the
// ML-KEM shared secret.
func derivePSK(dhEI, dhEO, kemSS []byte) []byte {
	ikm := make([]byte, 0, 96)
	ikm = append(ikm, dhEI...)
	ikm = append(ikm, dhEO...)
	ikm = append(ikm, kemSS...)
	psk, err := hkdf.Key(sha256.New, ikm, nil, pskInfo, 32)
	if err != nil {
		panic("pqxdh: hkdf: " + err.Error())
	}
	return psk
}

func deriveRoot(cs1, cs2 *noise.CipherState, h []byte) [32]byte {
	k1, k2 := cs1.UnsafeKey(), cs2.UnsafeKey()
	out, err := hkdf.Key(sha256.New, append(k1[:], k2[:]...), h, skInfo, 32)
	if err != nil {
		panic("pqxdh: hkdf: " + err.Error())
	}
	return [32]byte(out)
}

// Outgoing is the initiator's result: the ratchet session and the handshake
// bytes to put in front of every message until the first reply arrives.
type Outgoing struct {
	Session   *ratchet.Session
	Handshake []byte // HandshakeSize bytes
}

// Seal is a convenience: it encrypts plaintext with the session and returns
// the full initial message (Handshake || ratchet message). Use it for every
// message sent before the peer's first reply, so that any one of them can
// start the session on the responder.
func (o *Outgoing) Seal(plaintext, ad []byte) ([]byte, error) {
	ct, err := o.Session.Encrypt(plaintext, ad)
	if err != nil {
		return nil, err
	}
	return append(append(make([]byte, 0, len(o.Handshake)+len(ct)), o.Handshake...), ct...), nil
}

// Initiate starts a session with the device whose identity, from a verified
// device list, is recipient, using bundle as served by the region. It
// rejects a bundle that fails verification (prekey.ErrBadSignature,
// prekey.ErrMissingKEM) or whose identity is not recipient
// (ErrIdentityMismatch).
func Initiate(self *identity.Private, recipient identity.Public, bundle *prekey.Bundle, cfg Config) (*Outgoing, error) {
	if err := bundle.Verify(); err != nil {
		return nil, fmt.Errorf("pqxdh: bundle: %w", err)
	}
	if !bundle.Identity.Equal(recipient) {
		return nil, fmt.Errorf("%w: bundle identity is not the device-list identity", ErrIdentityMismatch)
	}
	x := ecdh.X25519()
	rikDH, err := recipient.DHPublic()
	if err != nil {
		return nil, err
	}
	spk, err := x.NewPublicKey(bundle.SignedPrekey.Public[:])
	if err != nil {
		return nil, fmt.Errorf("pqxdh: signed prekey: %w", err)
	}
	ek, err := bundle.KEM.EncapsulationKey()
	if err != nil {
		return nil, err
	}
	var ephSeed [32]byte
	if _, err := io.ReadFull(cfg.rand(), ephSeed[:]); err != nil {
		return nil, fmt.Errorf("pqxdh: reading randomness: %w", err)
	}
	eph, err := x.NewPrivateKey(ephSeed[:])
	if err != nil {
		return nil, err
	}
	dhEI, err := eph.ECDH(rikDH)
	if err != nil {
		return nil, fmt.Errorf("%w: identity dh: %v", ErrHandshake, err)
	}
	var dhEO []byte
	h := header{spkID: bundle.SignedPrekey.ID, kemID: bundle.KEM.ID}
	if bundle.OneTime != nil {
		otp, err := x.NewPublicKey(bundle.OneTime.Public[:])
		if err != nil {
			return nil, fmt.Errorf("pqxdh: one-time prekey: %w", err)
		}
		if dhEO, err = eph.ECDH(otp); err != nil {
			return nil, fmt.Errorf("%w: one-time dh: %v", ErrHandshake, err)
		}
		h.hasOTP, h.otpID = true, bundle.OneTime.ID
	}
	kemSS, kemCT, err := cfg.encapsulate(ek)
	if err != nil || len(kemCT) != mlkem.CiphertextSize768 || len(kemSS) != mlkem.SharedKeySize {
		return nil, fmt.Errorf("pqxdh: ml-kem encapsulation: %v", err)
	}
	h.kemCT = kemCT
	hdr := h.append(make([]byte, 0, HandshakeSize))
	pro, err := prologue(recipient, hdr)
	if err != nil {
		return nil, err
	}
	selfPub := self.Public()
	static := noise.DHKey{Private: self.DH().Bytes(), Public: selfPub.DH[:]}
	hs, err := noise.NewHandshakeState(handshakeConfig(true, pro, derivePSK(dhEI, dhEO, kemSS), static, spk.Bytes(), bytes.NewReader(ephSeed[:])))
	if err != nil {
		return nil, fmt.Errorf("pqxdh: noise: %w", err)
	}
	payload, err := selfPub.MarshalBinary()
	if err != nil {
		return nil, err
	}
	msg, cs1, cs2, err := hs.WriteMessage(hdr, payload)
	if err != nil {
		return nil, fmt.Errorf("pqxdh: noise: %w", err)
	}
	if cs1 == nil || len(msg) != HandshakeSize {
		return nil, fmt.Errorf("pqxdh: internal: handshake did not complete in one message")
	}
	hh := hs.ChannelBinding()
	sess, err := ratchet.NewInitiator(deriveRoot(cs1, cs2, hh), hh, spk.Bytes(), cfg.Ratchet)
	if err != nil {
		return nil, err
	}
	clear(ephSeed[:])
	return &Outgoing{Session: sess, Handshake: msg}, nil
}

// Initial is a parsed initial message.
type Initial struct {
	SignedPrekeyID uint32
	KEMPrekeyID    uint32
	OneTimeID      uint32
	HasOneTime     bool
	Handshake      []byte // the first HandshakeSize bytes
	Ratchet        []byte // the ratchet message that follows
	kemCT          []byte
	noiseMsg       []byte
}

// Token identifies the handshake: SHA-256 of the handshake bytes. Messages
// sent before the first reply share it; the responder uses it to find the
// session an initial message belongs to (see ErrReplay).
func (in *Initial) Token() [32]byte { return sha256.Sum256(in.Handshake) }

// IsInitial reports whether msg is an initial message rather than a plain
// ratchet message, by its first byte and length (for routing; ParseInitial
// does the full check).
func IsInitial(msg []byte) bool { return len(msg) > HandshakeSize && msg[0] == version }

// ParseInitial decodes an initial message (lengths only; Accept authenticates).
func ParseInitial(msg []byte) (*Initial, error) {
	if len(msg) < HandshakeSize+ratchet.Overhead {
		return nil, fmt.Errorf("%w: %d bytes", ErrMalformed, len(msg))
	}
	if msg[0] != version {
		return nil, fmt.Errorf("%w: %d", ErrVersion, msg[0])
	}
	flags := msg[1]
	if flags&^flagOneTime != 0 {
		return nil, fmt.Errorf("%w: flags %#x", ErrMalformed, flags)
	}
	in := &Initial{
		SignedPrekeyID: binary.BigEndian.Uint32(msg[2:6]),
		KEMPrekeyID:    binary.BigEndian.Uint32(msg[6:10]),
		OneTimeID:      binary.BigEndian.Uint32(msg[10:14]),
		HasOneTime:     flags&flagOneTime != 0,
		Handshake:      msg[:HandshakeSize:HandshakeSize],
		Ratchet:        msg[HandshakeSize:],
		kemCT:          msg[14:headerSize],
		noiseMsg:       msg[headerSize:HandshakeSize],
	}
	if !in.HasOneTime && in.OneTimeID != 0 {
		return nil, fmt.Errorf("%w: one-time id without flag", ErrMalformed)
	}
	return in, nil
}

// Use describes an accepted initial message to KeyStore.Consume.
type Use struct {
	SignedPrekeyID uint32
	OneTimeID      uint32
	HasOneTime     bool
	Token          [32]byte
}

// KeyStore is the responder's private prekey storage. Implementations must
// make Consume atomic: of two concurrent Consume calls with the same Use,
// exactly one succeeds.
type KeyStore interface {
	SignedPrekey(id uint32) (*ecdh.PrivateKey, error)        // ErrUnknownPrekey if absent
	KEMPrekey(id uint32) (*mlkem.DecapsulationKey768, error) // ErrUnknownPrekey if absent
	OneTimePrekey(id uint32) (*ecdh.PrivateKey, error)       // ErrUnknownPrekey if absent or consumed
	// Consume records that an authenticated initial message was accepted:
	// it deletes the one-time prekey if Use.HasOneTime, otherwise it records
	// Use.Token for the signed prekey. It returns ErrReplay (or
	// ErrUnknownPrekey) if that was already done.
	Consume(u Use) error
}

// Accepted is the responder's result.
type Accepted struct {
	Session   *ratchet.Session
	Peer      identity.Public // sender identity, proven by the handshake
	Plaintext []byte          // the first message
	Token     [32]byte
}

// Accept authenticates an initial message addressed to self, starts the
// responder session and decrypts the first message. ad is the per-message
// associated data the sender passed to Seal. The caller must then check
// that Peer belongs to the sender's verified device list.
//
// Order: authenticate the handshake, decrypt the first ratchet message, then
// Consume. Nothing is consumed for a message that fails, so an injected
// message cannot burn a prekey; a replay fails at Consume with ErrReplay (or
// ErrUnknownPrekey once the one-time prekey is gone). On ErrReplay the
// message may still be a later message of an accepted session: look the
// session up by Initial.Token and Decrypt Initial.Ratchet with it.
func Accept(self *identity.Private, keys KeyStore, msg, ad []byte, cfg Config) (*Accepted, error) {
	in, err := ParseInitial(msg)
	if err != nil {
		return nil, err
	}
	spk, err := keys.SignedPrekey(in.SignedPrekeyID)
	if err != nil {
		return nil, fmt.Errorf("pqxdh: signed prekey %d: %w", in.SignedPrekeyID, err)
	}
	dk, err := keys.KEMPrekey(in.KEMPrekeyID)
	if err != nil {
		return nil, fmt.Errorf("pqxdh: kem prekey %d: %w", in.KEMPrekeyID, err)
	}
	x := ecdh.X25519()
	eph, err := x.NewPublicKey(in.noiseMsg[:32])
	if err != nil {
		return nil, fmt.Errorf("%w: ephemeral key", ErrMalformed)
	}
	dhEI, err := self.DH().ECDH(eph)
	if err != nil {
		return nil, fmt.Errorf("%w: identity dh", ErrHandshake)
	}
	var dhEO []byte
	if in.HasOneTime {
		otp, err := keys.OneTimePrekey(in.OneTimeID)
		if err != nil {
			return nil, fmt.Errorf("pqxdh: one-time prekey %d: %w", in.OneTimeID, err)
		}
		if dhEO, err = otp.ECDH(eph); err != nil {
			return nil, fmt.Errorf("%w: one-time dh", ErrHandshake)
		}
	}
	kemSS, err := dk.Decapsulate(in.kemCT)
	if err != nil {
		return nil, fmt.Errorf("%w: kem ciphertext", ErrMalformed)
	}
	pro, err := prologue(self.Public(), in.Handshake[:headerSize])
	if err != nil {
		return nil, err
	}
	static := noise.DHKey{Private: spk.Bytes(), Public: spk.PublicKey().Bytes()}
	hs, err := noise.NewHandshakeState(handshakeConfig(false, pro, derivePSK(dhEI, dhEO, kemSS), static, nil, nil))
	if err != nil {
		return nil, fmt.Errorf("pqxdh: noise: %w", err)
	}
	payload, cs1, cs2, err := hs.ReadMessage(nil, in.noiseMsg)
	if err != nil || cs1 == nil {
		return nil, ErrHandshake
	}
	peer, err := identity.ParsePublic(payload)
	if err != nil {
		return nil, fmt.Errorf("%w: sender identity: %w", ErrIdentityMismatch, err)
	}
	if !bytes.Equal(peer.DH[:], hs.PeerStatic()) {
		return nil, fmt.Errorf("%w: sender identity does not match handshake static key", ErrIdentityMismatch)
	}
	hh := hs.ChannelBinding()
	sess, err := ratchet.NewResponder(deriveRoot(cs1, cs2, hh), hh, spk, cfg.Ratchet)
	if err != nil {
		return nil, err
	}
	pt, err := sess.Decrypt(in.Ratchet, ad)
	if err != nil {
		return nil, fmt.Errorf("pqxdh: first message: %w", err)
	}
	tok := in.Token()
	if err := keys.Consume(Use{SignedPrekeyID: in.SignedPrekeyID, OneTimeID: in.OneTimeID, HasOneTime: in.HasOneTime, Token: tok}); err != nil {
		return nil, fmt.Errorf("pqxdh: %w", err)
	}
	return &Accepted{Session: sess, Peer: peer, Plaintext: pt, Token: tok}, nil
}
