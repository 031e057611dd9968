// Package identity holds a device's long-term identity and the account
// structure built from identities: link signatures and signed device lists.
//
// A device identity (Private) is an Ed25519 key pair for signatures and an
// X25519 key pair for Diffie-Hellman, generated on the device. Its Public
// half carries an Ed25519 signature over "chatmesh-identity-dh-v1" ||
// X25519 key, so the two keys form one identity that cannot be recombined
// with someone else's key (ParsePublic and Verify check it).
//
// Link signatures admit a new device into an account; their byte format is
// the one the region checks on registration:
//
//	Ed25519_sign(existing device, "chatmesh-link-v1" || user_id || noise_static || identity_key)
//
// A DeviceList is the versioned set of an account's devices (id, identity,
// Noise static key), signed by one of its devices. Clients keep the last
// list they trust per user and accept an update only through VerifyUpdate:
// first contact requires a list signed by a device in it; later versions
// must be strictly newer and signed by a device of the trusted list; an
// identical re-announcement is accepted; a different list under the same
// version, a rollback, or a signer outside the trusted list is refused
// (ErrRollback, ErrUntrustedSigner, ErrBadSignature).
//
// Encodings (all versioned, fixed-size fields, big endian):
//
//	Public      version(1) || Ed25519(32) || X25519(32) || binding sig(64)    = 129 bytes
//	Private     version(1) || Ed25519 seed(32) || X25519 scalar(32)           = 65 bytes (secret)
//	DeviceList  version(1) || len(user)(1) || user || version(8) || n(2) ||
//	            n × (id(4) || Public(129) || noise static(32)) || signer id(4) || sig(64)
//
// The package does no I/O and keeps no state besides the values it returns.
// Private's methods are safe for concurrent use; DeviceList is a plain value
// (do not mutate one that another goroutine reads).
package identity
