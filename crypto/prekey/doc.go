// Package prekey defines the public prekeys a device uploads and the region
// hands out, their signatures, and their wire encodings. It holds no session
// state, so the server imports it to validate uploads (Upload.Verify) and to
// serve bundles; clients use it to generate prekeys and check bundles.
//
// A device publishes: one signed prekey (X25519, signed over
// "chatmesh-signed-prekey-v1" || id || key), one signed ML-KEM-768 prekey
// (signed over "chatmesh-kem-prekey-v1" || id || key), and batches of
// unsigned one-time X25519 prekeys. A Bundle is identity + signed prekey +
// KEM prekey + at most one one-time prekey. Bundle.Verify checks the
// identity binding and both signatures and rejects a bundle without the KEM
// prekey (ErrMissingKEM): a server cannot downgrade a session to classical
// crypto. Whether the bundle's identity is the expected device is checked by
// crypto/pqxdh against the verified device list.
//
// Encodings (versioned; sizes fixed, so decoders check exact lengths):
//
//	SignedPrekey   id(4) || key(32) || sig(64)
//	KEMPrekey      id(4) || ML-KEM-768 encapsulation key(1184) || sig(64)
//	OneTimePrekey  id(4) || key(32)
//	Bundle         version(1) || flags(1: bit0 KEM, bit1 one-time) || identity(129) ||
//	               SignedPrekey || [KEMPrekey] || [OneTimePrekey]
//	Upload         version(1) || flags(1: bit0 signed, bit1 KEM) || [SignedPrekey] ||
//	               [KEMPrekey] || n(2) || n × OneTimePrekey       (n ≤ MaxOneTimePerUpload)
//	*Pair          version(1) || public part || private key (device-local, secret)
//
// NewKEMPrekeyFromSeed derives the ML-KEM prekey from its 64-byte seed
// (the form the *Pair encoding stores); the test vectors use it with a
// fixed seed. E2E.md §4 is the specification of these encodings.
//
// Not here: which one-time prekey to hand out, consuming it at most once,
// and low-supply notifications are the region's job; replenishing is the
// client's. All functions are safe for concurrent use; values are plain data.
package prekey
