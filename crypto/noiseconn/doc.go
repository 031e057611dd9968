// Package noiseconn is chatmesh's client↔edge transport security: a Noise
// handshake followed by an encrypted, message-oriented session, carried over
// any MsgConn (one WebSocket binary message, or one length-prefixed record on
// a WebTransport stream, per Noise message).
//
// # Protocol
//
// The handshake is Noise_XX_25519_ChaChaPoly_BLAKE2s (ProtocolName) with the
// prologue "chatmesh/1" (Prologue):
//
//	-> e                                   32 bytes, empty payload
//	<- e, ee, s, es  + server payload      (ServerHello in chatmesh)
//	-> s, se         + client payload      (ClientHello in chatmesh)
//
// The 25519 DH function is crypto/internal/dh25519 (shared with
// crypto/pqxdh): RFC 7748 X25519 on crypto/ecdh keys parsed once per
// handshake, the same bytes on the wire as flynn/noise's DH25519 at half
// its scalar multiplications.
//
// Both sides then hold one CipherState per direction; every Send is exactly
// one Noise transport message (ciphertext + 16-byte tag, at most MaxMessage
// bytes, so at most MaxPlaintext bytes of plaintext). There is no rekeying;
// nonces run to 2^64-2, far beyond any session's life.
//
// The client's static key is its identity: the server learns it, proven,
// from message 3 (Conn.PeerStatic) and decides what it means. A client may
// pin the server's static key (ClientConfig.ServerStatic): the handshake is
// still XX, and the client aborts after message 2, before revealing its own
// static key, if the server proves a different key.
//
// A pinning client may instead opt into Noise_IK_25519_ChaChaPoly_BLAKE2s
// (ClientConfig.UseIK, ProtocolNameIK), one round trip:
//
//	<- s                                   (pre-message: the pinned key)
//	-> e, es, s, ss  + client payload      at least 96 bytes
//	<- e, ee, se     + server payload
//
// Server accepts both and tells them apart by the length of message 1
// (exactly 32 bytes: XX; 96 or more: IK; anything else fails). IK's client
// payload is encrypted to the server's static key, so it is not forward
// secret against a later compromise of that key; chatmesh's ClientHello
// holds only a device address.
//
// Both handshake payloads are encrypted, but the server payload (message 2)
// goes to a client that is not yet authenticated: anyone who connects can
// read it, so it must hold nothing secret. The client payload (message 3)
// is encrypted to the server and bound to the client's proven static key.
//
// # What it does not do
//
// It does not frame messages (the MsgConn does), does not decide who may
// connect, does not retry or reconnect, and does not rekey. It imports
// nothing of chatmesh: payloads are opaque bytes here.
//
// # Errors
//
// Every handshake failure wraps ErrHandshake (and the cause: a MsgConn
// error, context.Canceled, a flynn/noise error). After the handshake,
// ErrDecrypt (authentication failure) and ErrTooLarge (received message
// above MaxMessage) are sticky on the receive side: the receive nonce can no
// longer be trusted to match the peer's, so every later Recv fails the same
// way and the caller should close the Conn. An oversized Send fails with
// ErrTooLarge and changes nothing. ErrClosed follows Close.
//
// # Life cycle and concurrency
//
// Client and Server block until the handshake ends or ctx is done; they
// leave the MsgConn open on failure (the caller closes it, e.g. with a
// transport close code) and hand it to the Conn on success. Conn.Send is
// safe for concurrent callers (one mutex covers encrypt and write, so
// nonces reach the wire in order); Conn.Recv is for one reader at a time;
// Close is idempotent, closes the MsgConn and so unblocks both. Conn starts
// no goroutines.
//
// # Tests
//
// The package's Client and Server are checked byte for byte against the
// Cacophony vectors for Noise_XX_25519_ChaChaPoly_BLAKE2s and
// Noise_IK_25519_ChaChaPoly_BLAKE2s (testdata/cacophony.json), with
// companion tests that mutating the vectors makes the check fail;
// FuzzServerHandshake (both patterns) and FuzzRecv cover the decoders.
package noiseconn
