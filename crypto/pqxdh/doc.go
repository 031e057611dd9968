// Package pqxdh sets up an end-to-end session asynchronously from a prekey
// bundle, hybrid post-quantum in the spirit of Signal's PQXDH, built on the
// Noise protocol Noise_Xpsk1_25519_ChaChaPoly_SHA256 (flynn/noise). The
// exact pattern, key mapping and the guarantees of the message are written
// in the crypto package's manual (crypto/doc.go); this file covers the API.
//
// Initiator:
//
//	out, err := pqxdh.Initiate(self, recipientFromDeviceList, bundle, pqxdh.Config{})
//	msg, err := out.Seal(plaintext, ad)     // every message until the first reply
//	// after the first reply: out.Session.Encrypt / Decrypt (crypto/ratchet)
//
// Initiate verifies the bundle (signatures, KEM prekey present) and that its
// identity equals the expected one, then returns the ratchet session and the
// handshake bytes.
//
// Responder:
//
//	acc, err := pqxdh.Accept(self, keys, msg, ad, pqxdh.Config{})
//	// acc.Session, acc.Peer (check it against the sender's device list),
//	// acc.Plaintext, acc.Token (index the session by it)
//	// errors.Is(err, pqxdh.ErrReplay): a later pre-reply message of a
//	// session already accepted, or a replay: ParseInitial(msg), find the
//	// session by Token(), Decrypt(in.Ratchet, ad) — a replay fails there.
//
// keys is a KeyStore: the device's private prekeys plus the atomic Consume
// that makes a one-time prekey (or, without one, the handshake token) usable
// once. MemoryKeys is an in-memory implementation safe for concurrent use.
// Accept authenticates first and consumes last, so rejected input consumes
// nothing.
//
// Errors: ErrIdentityMismatch (swapped bundle, or sender identity payload
// not matching the proven key), ErrHandshake (authentication failed),
// ErrReplay, ErrUnknownPrekey, ErrMalformed, ErrVersion, and wrapped
// prekey.ErrBadSignature / prekey.ErrMissingKEM from bundle verification.
//
// Known-answer tests: Config.Rand supplies the ephemeral key,
// Config.Ratchet.Rand the ratchet keys and Config.Encapsulate (nil in real
// use) the ML-KEM encapsulation, so crypto/vectors can fix every random
// input. E2E.md §6 specifies the handshake byte by byte.
//
// Concurrency: Initiate and Accept are safe to call concurrently; the
// returned sessions are not (see crypto/ratchet). No goroutines, no I/O.
package pqxdh
