// Package crypto is the root of chatmesh's cryptography: everything that
// makes messages end-to-end encrypted, and nothing else. This file is the
// manual of the whole tree; each subpackage's doc.go covers its own API.
// The normative, byte-by-byte specification of everything below is E2E.md
// at the repository root, with test vectors in crypto/vectors.
//
// The tree imports only the Go standard library, golang.org/x/crypto and
// github.com/flynn/noise — nothing else of this module (not core, not
// core/pb). Every wire form below is this tree's own compact, versioned
// binary encoding with length checks, and every decoder has a fuzz target.
//
//	crypto/identity   device identity keys, link signatures, signed device lists
//	crypto/prekey     signed prekey, one-time prekeys, signed ML-KEM-768 prekey, bundles, uploads
//	crypto/pqxdh      asynchronous hybrid post-quantum session setup (Noise Xpsk1 + ML-KEM-768)
//	crypto/ratchet    Signal Double Ratchet sessions
//	crypto/senderkey  Signal Sender Keys for groups
//	crypto/safety     safety numbers (60 digits) and their scannable form
//	crypto/vectors    the end-to-end test vectors (E2E.md §11) and their tests
//	crypto/noiseconn  client↔edge transport (separate owner; not covered here)
//	crypto/internal/wire  the bounds-checked byte reader of the decoders
//	crypto/internal/dh25519  Noise's 25519 DH function (X25519 at half noise.DH25519's cost), for pqxdh and noiseconn
//
// Who may import what: the server side (edge, region) may import
// crypto/identity (to check link signatures and device lists) and
// crypto/prekey (to validate uploads and serve bundles); both hold no
// session state. Only the client imports pqxdh, ratchet and senderkey.
//
// # Keys
//
// Each device makes its own keys; private keys never leave it.
//
//	IK   identity: Ed25519 (signatures) + X25519 (Diffie-Hellman), bound by an
//	     Ed25519 signature over "chatmesh-identity-dh-v1" || X25519 key.
//	     Two schemes rather than one (XEdDSA) because the stdlib and x/crypto
//	     offer both directly and the binding signature makes them one identity.
//	SPK  signed prekey: X25519, Ed25519-signed over
//	     "chatmesh-signed-prekey-v1" || id || key; rotated by the client
//	     (weeks), also the responder's first Double Ratchet key.
//	KPK  KEM prekey: ML-KEM-768 (crypto/mlkem) encapsulation key, Ed25519-signed
//	     over "chatmesh-kem-prekey-v1" || id || key. Required in every bundle.
//	OPK  one-time prekeys: X25519, unsigned (as in Signal), each served at most once.
//	EK   the initiator's per-session ephemeral X25519 key.
//
// The account is the set of its devices, published as a DeviceList:
// versioned, signed by a device. A client verifies the list
// (DeviceList.VerifyUpdate) against the one it trusts before encrypting to
// any device: on first contact the list (of any version) must be signed by
// a device in it (trust on first use, confirmed by safety numbers); every
// later version must be newer and signed by a device of the trusted list. A new device
// joins by a link signature of an existing device, exactly the format the
// region checks: Ed25519 over "chatmesh-link-v1" || user_id || noise_static
// || identity_key (identity.SignLink, identity.VerifyLink).
//
// # Session setup (crypto/pqxdh)
//
// The protocol is Noise_Xpsk1_25519_ChaChaPoly_SHA256, run with flynn/noise
// (pattern noise.HandshakeX, PSK at position 1), one message, initiator to
// responder:
//
//	X psk1:
//	  <- s
//	  ...
//	  -> e, es, s, ss, psk
//
// mapped onto the keys as follows (Alice initiates to Bob's device):
//
//	responder static s (pre-message)  Bob's SPK, from the verified bundle
//	initiator static s                Alice's IK (X25519 half)
//	e                                 EK, fresh
//	es = DH(EK, SPK)                  X3DH's DH3
//	ss = DH(IK_A, SPK)                X3DH's DH1
//	psk = HKDF-SHA256(DH(EK, IK_B) || DH(EK, OPK) || ML-KEM-768 shared secret,
//	                  salt none, info "chatmesh-pqxdh-v1 psk")
//	      (X3DH's DH2, DH4 if an OPK was served, and the KEM secret)
//	prologue = "chatmesh-pqxdh-v1" || 0x00 || Bob's encoded identity ||
//	           the cleartext header (version, flags, SPK id, KPK id, OPK id,
//	           KEM ciphertext)
//	payload = Alice's encoded identity (Ed25519 || X25519 || binding signature)
//
// So every X3DH/PQXDH term is in the key schedule: DH1 and DH3 as Noise
// tokens, DH2, DH4 and the KEM secret through the PSK, which Noise mixes in
// before the payload is encrypted. flynn/noise has no hook for a KEM, so the
// initiator picks EK itself (fed to flynn/noise as its randomness) and
// computes the PSK before the handshake; the responder reads EK from the
// first 32 bytes of the Noise message. The Noise configuration is built in
// one function (handshakeConfig), which the test drives with the cacophony
// vectors for this exact protocol name.
//
// What the message proves. To Alice, before she sends: the SPK and KPK are
// signed by the Ed25519 key that is bound to Bob's X25519 identity, and that
// identity equals the one in Bob's verified device list (a swapped or
// resigned bundle gives ErrIdentityMismatch or prekey.ErrBadSignature; a
// bundle without KPK gives prekey.ErrMissingKEM). Only a holder of IK_B, SPK
// (and OPK) private keys and the KPK decapsulation key can derive the keys.
// To Bob, on Accept: the sender holds the private key of the X25519 identity
// in the payload (ss) — the payload must equal the handshake's static key —
// and the message was made for his identity and these prekeys (prologue);
// the first ratchet message inside decrypts. Bob's client then checks the
// sender's identity against the sender's device list. The KEM secret makes
// the session keys safe against a future quantum attacker who records
// traffic now; authentication is classical (Ed25519/X25519), as in Signal's
// PQXDH. Known limits, as in X3DH: an attacker holding Bob's SPK private key
// can impersonate others to Bob (key-compromise impersonation), and the
// first messages of a session without OPK are only as forward-secret as the
// SPK and KPK lifetimes: rotate them.
//
// After the handshake: root key SK = HKDF-SHA256(k1 || k2, salt h, info
// "chatmesh-pqxdh-v1 root") where k1, k2 are the split cipher keys and h the
// handshake hash; the Double Ratchet starts with SK, associated data h
// (covering both identities and the whole transcript), and SPK as Bob's first
// ratchet key. The Noise cipher states are discarded. There is no Noise
// second message: Bob's first ratchet reply is the key confirmation.
//
// Initial message on the wire (HandshakeSize = 1327 bytes, then the ratchet
// message): version(1; 0x50, where ratchet messages start with 0x01, so
// the two are told apart by their first byte) || flags(1) || SPK id(4) ||
// KPK id(4) || OPK id(4) || KEM ciphertext(1088) || Noise message(225: e 32,
// enc(s) 48, enc(payload) 145) || ratchet message. Until Alice has received
// a reply (ratchet.Session.HasReceived), every message she sends carries the
// same handshake (pqxdh.Outgoing.Seal), so any one of them can start the
// session.
//
// Replays. Accept authenticates the handshake and decrypts the first message
// before it consumes anything (an injected or modified message consumes
// nothing and cannot burn a prekey), then calls KeyStore.Consume: with an
// OPK, the OPK is deleted, so a replay fails (ErrReplay; concurrent replays:
// exactly one Accept wins). Without an OPK (the region ran out), the
// handshake token (SHA-256 of the handshake bytes) is remembered for the
// SPK's lifetime and a replay fails with ErrReplay; after the SPK is retired
// the replay fails for lack of the key. A replayed handshake never creates a
// second session. ErrReplay is also what a later pre-reply message of an
// accepted session gets; the client finds the session by Initial.Token and
// decrypts Initial.Ratchet with it, where a true replay then fails with
// ratchet.ErrDuplicate: harmless.
//
// # Double Ratchet (crypto/ratchet)
//
// Per the Signal specification: KDF_RK = HKDF-SHA256(salt root key, input
// DH output, info "chatmesh-ratchet-rk-v1") → new root key, chain key;
// KDF_CK = HMAC-SHA256(chain key, 0x01) for the message key, (…, 0x02) for
// the next chain key; ENCRYPT = ChaCha20-Poly1305 with key and nonce from
// HKDF-SHA256(message key, info "chatmesh-ratchet-msg-v1") and associated
// data = session AD || header || per-message AD. The header (version, ratchet
// key, PN, N; 41 bytes) is not encrypted (header encryption is not
// implemented: it would hide message counts and ratchet keys from the
// server, which already sees conversation metadata). Message keys are
// deleted right after use; skipped keys are kept for out-of-order delivery
// up to MaxSkip per chain step (1000) and a total cap (2000, oldest evicted).
// Decrypt works on a copy of the state and commits only after the AEAD check,
// so replayed, tampered and injected messages are rejected without changing
// anything. Sessions marshal to bytes for the client's store.
//
// # Groups (crypto/senderkey)
//
// Signal Sender Keys: per (group, sender device) a chain key (KDF_CK as
// above) and an Ed25519 signing key. The sender sends a Distribution (key
// id, iteration, chain key, signing public key) to every member device over
// the pairwise ratchet sessions, then encrypts each group message once
// (ChaCha20-Poly1305) and signs it; receivers verify the signature before
// anything else (members share the chain key, so only the signature
// authenticates the sender), handle out-of-order within a bound and refuse
// replays. Rotation is a new Sender: the client makes one whenever a member
// or device leaves and distributes it to the remaining devices; the departed
// device's receiver state cannot read the new key.
//
// # Safety numbers (crypto/safety)
//
// As Signal's NumericFingerprintGenerator: per party, SHA-512 iterated 5200
// times from version (2 bytes, 0) || identity key || user id (each round hashing the
// previous output || identity key); the first 30 bytes give 30 digits (six
// 5-byte chunks mod 100000); the two parties' halves are sorted and joined
// into 60 digits, shown in 12 groups of 5, identical on both sides. The
// identity key is the encoded identity.Public (both the Ed25519 and X25519
// halves). The scannable form is version || own fingerprint(32) || peer
// fingerprint(32); VerifyScanned checks it crosswise. The digits match
// libsignal's published test vector.
//
// # How the client uses it
//
// Sending a 1:1 message: fetch and verify the recipient's device list (and
// the sender's own), then for every device of both (except the sending
// device) use the stored ratchet session, or start one from a fetched
// bundle with pqxdh.Initiate; encrypt once per device with per-message
// associated data naming the conversation and the recipient device; put the
// per-device ciphertexts in the envelope. While a session has not received
// (ratchet.Session.HasReceived), send with Outgoing.Seal. Receiving:
// pqxdh.IsInitial(ciphertext) selects pqxdh.Accept (on ErrReplay, route by
// Initial.Token) or Session.Decrypt. Persist sessions (MarshalBinary) after
// every successful Encrypt/Decrypt and before acknowledging the message.
// Groups: one senderkey.Sender per (group, own device); send its
// Distribution over the pairwise sessions to every member device that lacks
// it; rotate on every leave. An identity that differs from the trusted one
// (device list update refused, or pqxdh.ErrIdentityMismatch) is shown to the
// user with the new safety number, and sending to it waits for acceptance.
//
// # What this tree does not do
//
// No I/O, no storage, no clock, no logging, no goroutines. It does not
// decide which devices to encrypt to (the client does, from verified device
// lists), does not persist keys (types marshal; the client stores them),
// does not warn users of identity changes (it reports mismatches; the client
// blocks sending until the user accepts), and does not fetch bundles.
//
// # Concurrency
//
// Sessions (ratchet.Session), senders and receivers are not safe for
// concurrent use: the client serialises access per session. Identities,
// public types and pqxdh.MemoryKeys are safe for concurrent use.
package crypto
