// Package ratchet implements the Signal Double Ratchet for one pairwise
// session: a DH ratchet over X25519, symmetric sending and receiving chains,
// and per-message keys that are deleted after use.
//
// KDFs and AEAD (see crypto/doc.go for the full schedule): KDF_RK is
// HKDF-SHA256 salted with the root key; KDF_CK is HMAC-SHA256 with constants
// 0x01 (message key) and 0x02 (next chain key); messages are
// ChaCha20-Poly1305 with key and nonce derived from the message key and
// associated data = session AD || header || per-message AD.
//
// Message: header(41) = version(1) || ratchet public key(32) || PN(4) || N(4),
// then ciphertext || tag(16). The header is authenticated, not encrypted.
//
// Life cycle: a session starts from the pqxdh handshake (NewInitiator for
// the sender of the first message, NewResponder for its receiver, which can
// send only after its first successful Decrypt), then Encrypt/Decrypt for
// the life of the conversation; MarshalBinary/Unmarshal persist it between
// runs (the bytes are secret).
//
// Guarantees: messages decrypt in any order, lost messages do not block
// later ones, and a re-delivered ciphertext decrypts once then fails with
// ErrDuplicate. Skipped keys are bounded per step (Config.MaxSkip, default
// 1000; more → ErrTooManySkipped) and in total (Config.MaxSkippedTotal,
// default 2000; the oldest are evicted). Every failing Decrypt leaves the
// session exactly as it was: the work is done on a copy and committed after
// authentication. Forward secrecy: used keys are gone. Post-compromise
// security: after a state leak, the next DH ratchet step of the leaked party
// uses a fresh key, and messages after it are unreadable with the leaked
// state (tests show both).
//
// Not implemented: header encryption. A Session is not safe for concurrent
// use; its owner serialises calls. No goroutines, no I/O.
package ratchet
